"""Model builders: every variant assembled from the sizes in `variants.py`; `build_sam` opens checkpoints through
`checkpoint.open_checkpoint`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from .checkpoint import Checkpoint, load_into, open_checkpoint
from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer
from .modeling.students import TimmStudent
from .variants import (
    ALIASES,
    DEFAULT_IMG_SIZE,
    MODELS,
    PATCH_SIZE,
    PROMPT_EMBED_DIM,
    STUDENTS,
    TINY_VIT_SIZES,
    VIT_SIZES,
    Student,
    check_student_size,
    check_variant,
    student_of,
)


def _tiny_vit(img_size: int, student: Student = STUDENTS["tiny_vit_5m"]) -> TinyViT:
    embed_dims, depths, num_heads = student.tiny_vit
    return TinyViT(
        img_size=img_size,
        embed_dims=embed_dims,
        depths=depths,
        num_heads=num_heads,
        window_sizes=TINY_VIT_SIZES["window_sizes"],
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


def _encoder(name: str, img_size: int) -> TinyViT | ImageEncoderViT | TimmStudent:
    """The image encoder of a canonical model name at `img_size`."""
    if name in VIT_SIZES:
        return _vit(name, img_size)
    student = student_of(name)
    assert student is not None, name  # check_variant let only known names through
    return _tiny_vit(img_size, student) if student.family == "tiny_vit" else TimmStudent(student.timm_name, img_size)


def _assemble(image_encoder: TinyViT | ImageEncoderViT | TimmStudent, img_size: int) -> Sam:
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
        variant: "vit_t" (MobileSAM), "vit_b", "vit_l", "vit_h", a student of `variants.STUDENTS`
            ("tiny_vit_5m" is "vit_t", "repvit_m1_1", ...); "auto" reads it from the checkpoint (and its sidecar).
        checkpoint: any checkpoint `open_checkpoint` reads (`mobile_sam.pt`, `sam_vit_h_4b8939.pth`, a training
            `.ckpt`), loaded strictly with `weights_only=True`.
        img_size: input side in pixels, a multiple of 64 (32 for the timm students). None takes what the checkpoint
            states (its sidecar, a ViT's positional embedding) or else 1024. A value that contradicts it is refused.

    Returns:
        The model, on CPU, in eval mode.
    """
    if checkpoint is None:
        return build_random("vit_t" if variant == "auto" else variant, img_size)
    return build_from(open_checkpoint(checkpoint, img_size, None if variant == "auto" else check_variant(variant)))


def build_random(variant: str = "vit_t", img_size: int | None = None) -> Sam:
    """A model with fresh random weights (tests, demos), in eval mode on CPU."""
    name = check_variant(variant)
    size = check_student_size(name, img_size or DEFAULT_IMG_SIZE)
    return _assemble(_encoder(name, size), size).eval()


def build_from(ckpt: Checkpoint) -> Sam:
    """The model of an opened checkpoint (`open_checkpoint`), loaded strictly, in eval mode on CPU."""
    model = build_random(ckpt.variant, ckpt.img_size)
    load_into(model, ckpt.state_dict, source=f"{ckpt.path} ({ckpt.variant}, {ckpt.variant_from})")
    return model


sam_model_registry: dict[str, Callable[..., Sam]] = {name: functools.partial(build_sam, name) for name in MODELS}
sam_model_registry["default"] = sam_model_registry["vit_h"]
sam_model_registry.update({alias: sam_model_registry[name] for alias, name in ALIASES.items()})
