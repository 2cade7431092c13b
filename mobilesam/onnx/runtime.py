"""Old import path of `mobilesam.deploy.onnx_runtime`: the same module."""

import sys

from ..deploy import onnx_runtime

sys.modules[__name__] = onnx_runtime
