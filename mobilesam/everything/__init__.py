"""Segment everything: `SamAutomaticMaskGenerator` (point grids and crops -> deduplicated masks) and its records."""

from .generator import MaskSet, SamAutomaticMaskGenerator, check_options

__all__ = ["MaskSet", "SamAutomaticMaskGenerator", "check_options"]
