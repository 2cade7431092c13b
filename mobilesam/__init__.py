"""MobileSAM and SAM inference: models that load the official checkpoints, `SamPredictor` and the `SAM` facade."""

from .automatic_mask_generator import SamAutomaticMaskGenerator
from .build import build_sam, sam_model_registry
from .io import load_image
from .model import SAM, Results
from .modeling import Sam
from .predictor import SamPredictor
from .transforms import ResizeLongestSide

__version__ = "0.1.0"

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
