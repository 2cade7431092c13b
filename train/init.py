"""Student initialisation (`model.init`): from scratch, from a saved model (`mobile_sam.pt`, `<student>.pt`), or
from timm's ImageNet weights of the student's backbone (TinyViT, RepViT, EfficientViT)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mobilesam.checkpoint import CheckpointError, load_state_dict, open_checkpoint
from mobilesam.variants import ALIASES

log = logging.getLogger(__name__)

# timm names -> MobileSAM names (applied in order). timm puts each downsample at the start of the next stage,
# MobileSAM at the end of the previous one, and calls the conv of a ConvNorm `conv` where TinyViT said `c`.
_TIMM_RULES = [
    (r"^patch_embed\.conv1\.", "patch_embed.seq.0."),
    (r"^patch_embed\.conv2\.", "patch_embed.seq.2."),
    (r"^stages\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample."),
    (r"^stages\.", "layers."),
    (r"^head\.norm\.", "norm_head."),
    (r"^head\.fc\.", "head."),
    (r"\.conv\.(weight|bias)$", r".c.\1"),
]


def timm_to_mobilesam(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames a timm `tiny_vit_5m_224` state dict to MobileSAM's image-encoder key names.

    Buffers timm derives (`attention_bias_idxs`) are dropped. Keys are returned without the `image_encoder.`
    prefix.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attention_bias_idxs"):
            continue
        for pattern, repl in _TIMM_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def timm_to_backbone(state_dict: dict[str, Tensor], backbone_keys: set[str]) -> dict[str, Tensor]:
    """Renames a timm classifier's state dict to its `features_only` backbone's keys (`backbone.` prefixed).

    timm's feature wrapper flattens the first level of the model's sequential modules: `stages.2.x` becomes
    `stages_2.x`, `stem.in_conv.x` becomes `stem_in_conv.x`. Keys the backbone has not (the classifier head) are
    dropped.
    """
    out = {}
    for key in backbone_keys:
        first, _, rest = key.partition(".")
        for name in (key, f"{first.replace('_', '.', 1)}.{rest}"):
            if name in state_dict:
                out[f"backbone.{key}"] = state_dict[name]
                break
    return out


def _load_timm_file(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read timm weights {path}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def _timm_weights(spec: str) -> dict[str, Tensor]:
    """`timm:PATH` reads a saved timm state dict; `timm:NAME` asks timm for its pretrained weights (network)."""
    ref = spec.removeprefix("timm:")
    if Path(ref).is_file():
        return _load_timm_file(Path(ref))
    import timm

    log.info("downloading %s through timm (needs network access)", ref)
    return timm.create_model(ref, pretrained=True).state_dict()


def _holds(init: str) -> str:
    """What a saved model that does not fit the student holds, and the `model/student=` that takes it ("" if the
    file says nothing)."""
    try:
        variant = open_checkpoint(init).variant
    except (CheckpointError, OSError, ValueError):
        return ""
    student = {v: k for k, v in ALIASES.items()}.get(variant, variant)
    return f"; it holds {student} weights: set model/student={student}"


def init_student(sam: nn.Module, init: str | None) -> list[str]:
    """Initialises `sam.image_encoder` in place.

    Args:
        sam: the Sam model whose image encoder is the student.
        init: None (keep the random initialisation); a path to a `mobile_sam.pt` or `<student>.pt` (its image
            encoder is loaded); or `timm:PATH` / `timm:<tag>` (e.g. `timm:tiny_vit_5m_224.dist_in22k_ft_in1k`,
            `timm:repvit_m1_1.dist_450e_in1k`) for the ImageNet weights of the student's backbone in timm's layout.

    Returns:
        The encoder keys left at their initialisation (the classifier head when its class count differs).
    """
    if not init:
        return []
    encoder = sam.image_encoder
    own = encoder.state_dict()
    timm_student = any(k.startswith("backbone.") for k in own)
    if str(init).startswith("timm:") and timm_student:
        backbone = {k.removeprefix("backbone.") for k in own if k.startswith("backbone.")}
        weights = _timm_weights(str(init))
        source = timm_to_backbone(weights, backbone)
        if len(source) < len(backbone):
            absent = sorted(backbone - {k.removeprefix("backbone.") for k in source})
            raise CheckpointError(
                f"{init} is not this student's backbone: it lacks {len(absent)} of its {len(backbone)} weights "
                f"({absent[:5]}); give the timm weights of the student's own model (variants.STUDENTS[...].timm_name)"
            )
        kind = "timm backbone"
    elif str(init).startswith("timm:"):
        source = timm_to_mobilesam(_timm_weights(str(init)))
        kind = "timm TinyViT"
    else:
        full = load_state_dict(init)
        source = {k.removeprefix("image_encoder."): v for k, v in full.items() if k.startswith("image_encoder.")}
        kind = "MobileSAM"
    unknown = [k for k in source if k not in own]
    if unknown:
        raise CheckpointError(f"{init} ({kind}) has keys the student does not: {unknown[:8]}{_holds(init)}")
    skipped = [k for k, v in source.items() if v.shape != own[k].shape]
    for k in skipped:  # e.g. a 21841-class ImageNet-22k head against the 1000-class slot
        source.pop(k)
    missing = [k for k in own if k not in source]
    structural = [k for k in missing if not k.startswith(("head.", "norm_head.", "neck."))]  # the neck is SAM's
    if structural:
        raise CheckpointError(f"{init} ({kind}) lacks student weights: {structural[:8]}{_holds(init)}")
    encoder.load_state_dict(source, strict=False)
    log.info("student initialised from %s (%s); left as initialised: %s", init, kind, missing + skipped or "none")
    return missing + skipped
