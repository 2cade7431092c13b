"""The model variants and students and their sizes: the one table that the builders and the checkpoint reader agree
on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Student:
    """An image encoder that can replace SAM's ViT: its family, timm's name of its backbone, and its sizes.

    Attributes:
        name: the project's name (`model/student=NAME`, `build_sam(NAME)`, the sidecar's `student`).
        family: "tiny_vit" (the project's TinyViT, last stage at stride 1, MobileSAM's neck) or "timm" (a timm
            backbone with `features_only`, its stride-16 and stride-32 features fused by `FpnNeck`).
        timm_name: timm's model name (the backbone, and the ImageNet weights `model.init=timm:...` maps).
        tiny_vit: TinyViT sizes (embed_dims, depths, num_heads) for the tiny_vit family, else ().
        multiple: img_size must be a multiple of this (the backbone's deepest stride, or 64 for TinyViT).
    """

    name: str
    family: str
    timm_name: str
    tiny_vit: tuple[tuple[int, ...], ...] = ()
    multiple: int = 32


# The student zoo. tiny_vit_5m is vit_t, MobileSAM's student, saved as the official mobile_sam.pt.
STUDENTS = {
    s.name: s
    for s in (
        Student("tiny_vit_5m", "tiny_vit", "tiny_vit_5m_224", ((64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10)), 64),
        Student("tiny_vit_11m", "tiny_vit", "tiny_vit_11m_224", ((64, 128, 256, 448), (2, 2, 6, 2), (2, 4, 8, 14)), 64),
        Student(
            "tiny_vit_21m", "tiny_vit", "tiny_vit_21m_224", ((96, 192, 384, 576), (2, 2, 6, 2), (3, 6, 12, 18)), 64
        ),
        Student("repvit_m0_9", "timm", "repvit_m0_9"),
        Student("repvit_m1_1", "timm", "repvit_m1_1"),
        Student("repvit_m2_3", "timm", "repvit_m2_3"),
        Student("efficientvit_b0", "timm", "efficientvit_b0"),
        Student("efficientvit_b1", "timm", "efficientvit_b1"),
        Student("efficientvit_b2", "timm", "efficientvit_b2"),
    )
}
ALIASES = {"tiny_vit_5m": "vit_t"}  # one model, two names: the student's and MobileSAM's
# Every name `build_sam` takes, canonical names only (tiny_vit_5m is built and saved as vit_t)
MODELS = VARIANTS + tuple(n for n in STUDENTS if n not in ALIASES)
# TinyViT students told apart by their last stage's width (image_encoder.norm_head.weight)
_TINY_VIT_BY_WIDTH = {s.tiny_vit[0][-1]: ALIASES.get(s.name, s.name) for s in STUDENTS.values() if s.tiny_vit}
TIMM_STUDENT = "a timm student"  # what `infer_variant` says of weights under image_encoder.backbone.*


def student_of(name: str) -> Student | None:
    """The student entry of a model name (vit_t -> tiny_vit_5m), None for the SAM ViTs."""
    for student_name, canonical in ALIASES.items():
        if name == canonical:
            return STUDENTS[student_name]
    return STUDENTS.get(name)


def size_multiple(name: str) -> int:
    """The number every img_size of this model must be a multiple of."""
    student = student_of(name)
    return student.multiple if student is not None else 64


class VariantError(ValueError):
    """A state dict that is none of the variants, or an img_size no variant can be built at."""


def infer_variant(state_dict: Mapping[str, Tensor]) -> str:
    """Names the variant a state dict was saved from, by its encoder keys."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        width = state_dict.get("image_encoder.norm_head.weight")
        return _TINY_VIT_BY_WIDTH.get(int(width.shape[0]) if width is not None else 320, "vit_t")
    if any(k.startswith("image_encoder.backbone.") for k in state_dict):
        return TIMM_STUDENT
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
    return int(pos.shape[1]) * PATCH_SIZE if variant in VIT_SIZES and pos is not None else None


def check_img_size(img_size: object, where: str = "img_size", multiple: int = 64) -> int:
    """`img_size` as an int when it is a positive multiple of `multiple`, else a `VariantError` naming `where`."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % multiple:
        examples = ", ".join(str(n) for n in (1024, 512, 256) + ((288, 320) if multiple == 32 else ()))
        raise VariantError(f"{where}={img_size!r} must be a positive multiple of {multiple} (e.g. {examples})")
    return img_size


def check_variant(variant: object, where: str = "variant") -> str:
    """The canonical name of a variant or student (tiny_vit_5m -> vit_t), else a `VariantError` naming `where` and
    every known name."""
    if variant not in MODELS and variant not in ALIASES:
        raise VariantError(
            f"{where}={variant!r} is not a model this project knows; choose a SAM variant ({', '.join(VARIANTS)}) "
            f"or a student ({', '.join(STUDENTS)})"
        )
    return ALIASES.get(str(variant), str(variant))


def check_student_size(name: str, img_size: object, where: str = "img_size") -> int:
    """`img_size` for a model, refused unless the model's strides divide it and its neck meets the S/16 grid.

    A timm student's FPN adds its stride-16 features (ceil(S/16) cells, the convolutions pad) to its stride-32
    features upsampled twice (2 x ceil(S/32) cells); both must be SAM's S/16 embedding grid.
    """
    multiple = size_multiple(name)
    if isinstance(img_size, int) and not isinstance(img_size, bool) and img_size > 0 and img_size % PATCH_SIZE == 0:
        student = student_of(name)
        grid, coarse = img_size // PATCH_SIZE, 2 * -(-img_size // 32)
        if student is not None and student.family == "timm" and coarse != grid:
            lo = img_size // multiple * multiple
            raise VariantError(
                f"{where}={img_size}: the {name} neck would give a {coarse}x{coarse} embedding (its stride-32 "
                f"features upsampled twice) but SAM's grid at this size is {grid}x{grid}; use a multiple of "
                f"{multiple} ({lo or multiple} or {lo + multiple})"
            )
    return check_img_size(img_size, where, multiple)
