"""The model variants and their sizes: the one table that the builders and the checkpoint reader agree on."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

VARIANTS = ("vit_t", "vit_b", "vit_l", "vit_h")
PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16
DEFAULT_IMG_SIZE = 1024  # the official checkpoints' input side

# SAM ViT encoders: (embed_dim, depth, num_heads, global attention blocks)
VIT_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

# MobileSAM's TinyViT-5M
TINY_VIT_SIZES = {
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (2, 4, 5, 10),
    "window_sizes": (7, 7, 14, 7),
}


class VariantError(ValueError):
    """A state dict that is none of the variants, or an img_size no variant can be built at."""


def infer_variant(state_dict: Mapping[str, Tensor]) -> str:
    """Names the variant a state dict was saved from, by its encoder keys."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None:
        blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
        for name, (dim, depth, _, _) in VIT_SIZES.items():
            if pos.shape[-1] == dim and len(blocks) == depth:
                return name
    raise VariantError("cannot tell the variant from the state dict: it holds neither a TinyViT nor a SAM ViT")


def size_from_weights(state_dict: Mapping[str, Tensor], variant: str) -> int | None:
    """A SAM ViT's input side from its positional embedding (1 x g x g x C); None for TinyViT (any size)."""
    pos = state_dict.get("image_encoder.pos_embed")
    return int(pos.shape[1]) * PATCH_SIZE if variant != "vit_t" and pos is not None else None


def check_img_size(img_size: object, where: str = "img_size") -> int:
    """`img_size` as an int when it is a positive multiple of 64, else a `VariantError` naming `where`."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % 64:
        raise VariantError(f"{where}={img_size!r} must be a positive multiple of 64 (e.g. 1024, 512, 256)")
    return img_size


def check_variant(variant: object, where: str = "variant") -> str:
    """`variant` when it is one of `VARIANTS`, else a `VariantError` naming `where` and the choices."""
    if variant not in VARIANTS:
        raise VariantError(f"{where}={variant!r} is not a variant; choose one of {', '.join(VARIANTS)}")
    return str(variant)
