"""Old import path of `mobilesam.deploy.onnx_graphs`: the same module."""

import sys

from ..deploy import onnx_graphs

sys.modules[__name__] = onnx_graphs
