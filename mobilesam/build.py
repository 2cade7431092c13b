"""Model builders: every variant assembled from the sizes in `variants.py`; `build_sam` opens checkpoints through
`checkpoint.open_checkpoint`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from .checkpoint import Checkpoint, load_into, open_checkpoint
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer
from .variants import (
    DEFAULT_IMG_SIZE,
    PATCH_SIZE,
    PROMPT_EMBED_DIM,
    TINY_VIT_SIZES,
    VARIANTS,
    VIT_SIZES,
    check_img_size,
    check_variant,
)


def _tiny_vit(img_size: int) -> TinyViT:
    return TinyViT(
        img_size=img_size,
        **TINY_VIT_SIZES,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        out_chans=PROMPT_EMBED_DIM,
    )


def _vit(variant: str, img_size: int) -> ImageEncoderViT:
    embed_dim, depth, num_heads, global_attn = VIT_SIZES[variant]
    return ImageEncoderViT(
        img_size=img_size,
        patch_size=PATCH_SIZE,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.0,
        out_chans=PROMPT_EMBED_DIM,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=global_attn,
    )


def _assemble(image_encoder: TinyViT | ImageEncoderViT, img_size: int) -> Sam:
    grid = img_size // PATCH_SIZE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


def build_sam(variant: str = "vit_t", checkpoint: str | os.PathLike | None = None, img_size: int | None = None) -> Sam:
    """Builds a SAM model in eval mode, optionally loading a checkpoint strictly.

    Args:
        variant: "vit_t" (MobileSAM), "vit_b", "vit_l" or "vit_h"; "auto" reads it from the checkpoint.
        checkpoint: any checkpoint `open_checkpoint` reads (`mobile_sam.pt`, `sam_vit_h_4b8939.pth`, a training
            `.ckpt`), loaded strictly with `weights_only=True`.
        img_size: input side in pixels, a multiple of 64. None takes what the checkpoint states (its sidecar, a
            ViT's positional embedding) or else 1024. A value that contradicts the file is refused.

    Returns:
        The model, on CPU, in eval mode.
    """
    if checkpoint is None:
        return build_random("vit_t" if variant == "auto" else variant, img_size)
    return build_from(open_checkpoint(checkpoint, img_size, None if variant == "auto" else check_variant(variant)))


def build_random(variant: str = "vit_t", img_size: int | None = None) -> Sam:
    """A model with fresh random weights (tests, demos), in eval mode on CPU."""
    check_variant(variant)
    size = check_img_size(img_size or DEFAULT_IMG_SIZE)
    encoder = _tiny_vit(size) if variant == "vit_t" else _vit(variant, size)
    return _assemble(encoder, size).eval()


def build_from(ckpt: Checkpoint) -> Sam:
    """The model of an opened checkpoint (`open_checkpoint`), loaded strictly, in eval mode on CPU."""
    model = build_random(ckpt.variant, ckpt.img_size)
    load_into(model, ckpt.state_dict, source=str(ckpt.path))
    return model


sam_model_registry: dict[str, Callable[..., Sam]] = {name: functools.partial(build_sam, name) for name in VARIANTS}
sam_model_registry["default"] = sam_model_registry["vit_h"]
