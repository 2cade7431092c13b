"""Old import path of `mobilesam.deploy.onnx_export`: the same module."""

import sys

from ..deploy import onnx_export

sys.modules[__name__] = onnx_export
