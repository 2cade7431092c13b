"""Image encoders from timm backbones: `TimmStudent`, a `features_only` backbone and the `FpnNeck` that meets SAM's
256 x (S/16) x (S/16) embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import LayerNorm2d

STRIDES = (16, 32)  # the two feature maps the neck fuses


class FpnNeck(nn.Module):
    """EdgeSAM's neck for backbones that end at stride 32: a 1x1 lateral on each of the stride-16 and stride-32
    features, the coarse one upsampled 2x (nearest) and added, then SAM's neck tail (LayerNorm2d, 3x3 conv,
    LayerNorm2d). Bx`c16`x(S/16)x(S/16), Bx`c32`x(S/32)x(S/32) -> Bx`out_chans`x(S/16)x(S/16)."""

    def __init__(self, c16: int, c32: int, out_chans: int = 256) -> None:
        super().__init__()
        self.lateral16 = nn.Conv2d(c16, out_chans, kernel_size=1, bias=False)
        self.lateral32 = nn.Conv2d(c32, out_chans, kernel_size=1, bias=False)
        self.norm1 = LayerNorm2d(out_chans)
        self.conv = nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_chans)

    def forward(self, f16: Tensor, f32: Tensor) -> Tensor:
        x = self.lateral16(f16) + F.interpolate(self.lateral32(f32), scale_factor=2.0, mode="nearest")
        return self.norm2(self.conv(self.norm1(x)))


class TimmStudent(nn.Module):
    """A timm backbone (`features_only`, random weights) with `FpnNeck`: Bx3xSxS -> Bx256x(S/16)x(S/16).

    Args:
        timm_name: timm's model name, e.g. "repvit_m1_1", "efficientvit_b1".
        img_size: input side in pixels; the caller checks that the strides divide it.
        out_chans: embedding channels (SAM: 256).
    """

    def __init__(self, timm_name: str, img_size: int = 1024, out_chans: int = 256) -> None:
        super().__init__()
        import timm

        self.img_size = img_size
        # The last two feature maps; a backbone whose last two are not at strides 16 and 32 is refused.
        self.backbone = timm.create_model(timm_name, features_only=True, pretrained=False, out_indices=(-2, -1))
        reductions = tuple(self.backbone.feature_info.reduction())
        if reductions != STRIDES:
            raise ValueError(
                f"timm's {timm_name} ends with features at strides {reductions}; FpnNeck needs its last two at "
                f"{STRIDES}: choose a backbone that ends at stride 32"
            )
        c16, c32 = self.backbone.feature_info.channels()
        self.neck = FpnNeck(c16, c32, out_chans)

    def forward(self, x: Tensor) -> Tensor:
        """x: Bx3xSxS normalised image, S = img_size -> Bx256x(S/16)x(S/16) embedding."""
        f16, f32 = self.backbone(x)
        return self.neck(f16, f32)
