"""MobileSAM and SAM inference: models that load the official checkpoints, `SamPredictor` and the `SAM` facade."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it. They are imported on first use (PEP 562), so that the parts that
# do not need PyTorch (`mobilesam.onnx`'s runtime predictor, `mobilesam.io`, `mobilesam.prompts`) import without it.
_EXPORTS = {
    "SAM": "facade",
    "Results": "facade",
    "ResizeLongestSide": "transforms",
    "Sam": "modeling",
    "SamAutomaticMaskGenerator": "everything",
    "SamPredictor": "predictor",
    "build_sam": "build",
    "sam_model_registry": "build",
    "load_image": "io",
}

__all__ = [
    "SAM",
    "ResizeLongestSide",
    "Results",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "load_image",
    "sam_model_registry",
    "__version__",
]

if TYPE_CHECKING:
    from .build import build_sam, sam_model_registry
    from .everything import SamAutomaticMaskGenerator
    from .facade import SAM, Results
    from .io import load_image
    from .modeling import Sam
    from .predictor import SamPredictor
    from .transforms import ResizeLongestSide


def lazy_attributes(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A PEP 562 module `__getattr__` that imports `exports[name]` (a submodule of `package`) on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__


__getattr__ = lazy_attributes(__name__, _EXPORTS)
