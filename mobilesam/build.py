"""Model builders: the sizes of every variant live here, and only here."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from torch import Tensor

from .checkpoint import CheckpointError, load_into, load_state_dict, read_sidecar
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16
DEFAULT_IMG_SIZE = 1024

# SAM ViT encoders: (embed_dim, depth, num_heads, global attention blocks)
VIT_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def _tiny_vit(img_size: int) -> TinyViT:
    return TinyViT(
        img_size=img_size,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
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


def infer_variant(state_dict: dict[str, Tensor]) -> str:
    """Names the variant a state dict was saved from, by its encoder keys."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None:
        blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
        for name, (dim, depth, _, _) in VIT_SIZES.items():
            if pos.shape[-1] == dim and len(blocks) == depth:
                return name
    raise CheckpointError("cannot tell the variant from the state dict: it holds neither a TinyViT nor a SAM ViT")


def build_sam(variant: str = "vit_t", checkpoint: str | os.PathLike | None = None, img_size: int | None = None) -> Sam:
    """Builds a SAM model in eval mode, optionally loading a checkpoint strictly.

    Args:
        variant: "vit_t" (MobileSAM), "vit_b", "vit_l" or "vit_h"; "auto" reads it from the checkpoint.
        checkpoint: a state-dict file (`mobile_sam.pt`, `sam_vit_h_4b8939.pth`), loaded with `weights_only=True`.
        img_size: input side in pixels, a multiple of 64. None takes the checkpoint's sidecar (`mobile_sam.json`)
            or else 1024. A value that contradicts the sidecar is refused.

    Returns:
        The model, on CPU, in eval mode.
    """
    meta = read_sidecar(checkpoint) if checkpoint is not None else None
    state = load_state_dict(checkpoint) if checkpoint is not None else None
    if variant == "auto":
        variant = meta.get("variant") if meta and meta.get("variant") else None
        variant = variant or (infer_variant(state) if state is not None else "vit_t")
    if variant not in sam_model_registry:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if meta is not None:
        if meta.get("variant") not in (None, variant):
            raise CheckpointError(f"{checkpoint} was saved as {meta['variant']!r} but {variant!r} was asked for")
        meta_size = meta.get("img_size")
        if meta_size is not None and img_size is not None and int(meta_size) != img_size:
            raise CheckpointError(
                f"{checkpoint} was trained at img_size={meta_size} (its sidecar says so) but img_size={img_size} "
                "was asked for; leave img_size unset to use the file's size"
            )
        img_size = img_size or (int(meta_size) if meta_size is not None else None)
    img_size = img_size or DEFAULT_IMG_SIZE
    if img_size % 64 or img_size <= 0:
        raise ValueError(f"img_size={img_size} must be a positive multiple of 64 (e.g. 1024, 512, 256)")

    encoder = _tiny_vit(img_size) if variant == "vit_t" else _vit(variant, img_size)
    model = _assemble(encoder, img_size)
    if state is not None:
        load_into(model, state, source=str(checkpoint))
    return model.eval()


VARIANTS = ("vit_t", "vit_b", "vit_l", "vit_h")

sam_model_registry: dict[str, Callable[..., Sam]] = {name: functools.partial(build_sam, name) for name in VARIANTS}
sam_model_registry["default"] = sam_model_registry["vit_h"]
