"""The front door for checkpoints: `open_checkpoint` reads any checkpoint file safely (`weights_only=True`) and says
what it holds (variant, img_size, where each came from); strict key checks, the JSON sidecar, atomic saving."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .files import atomic_write, require_file, write_json
from .variants import (
    DEFAULT_IMG_SIZE,
    STUDENTS,
    TIMM_STUDENT,
    VARIANTS,
    VariantError,
    check_student_size,
    check_variant,
    infer_variant,
    size_from_weights,
)

# Prefixes that wrappers add to every key (DDP, torch.compile); the weights under them are the model's own.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# In a training checkpoint, the LightningModule holds the whole SAM model as the attribute `sam`
LIGHTNING_PREFIX = "sam."
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """`x/foo_mobile_sam.pt` -> `x/foo_mobile_sam.json`, `x/repvit_m1_1.pt` -> `x/repvit_m1_1.json`."""
    return Path(checkpoint).with_suffix(".json")


def weights_name(variant: str) -> str:
    """The file name a trained model is saved under: `mobile_sam.pt` for vit_t (the official format, which
    Ultralytics recognises by that suffix), `<student>.pt` for any other student, `sam_<b|l|h>.pt` for SAM's ViTs."""
    name = check_variant(variant)
    if name == "vit_t":
        return "mobile_sam.pt"
    return f"sam_{name[-1]}.pt" if name in VARIANTS else f"{name}.pt"


def student_meta(variant: str) -> dict[str, str]:
    """The sidecar fields that name the model: `variant`, and `student` for every student (vit_t: tiny_vit_5m)."""
    name = check_variant(variant)
    student = next((s for s in STUDENTS if check_variant(s) == name), None)
    return {"variant": name} | ({"student": student} if student else {})


def read_sidecar(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON sidecar beside a checkpoint, or None when there is none."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the sidecar {path}: {e}. Fix or delete it.") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"the sidecar {path} must hold a JSON object, found {type(meta).__name__}")
    try:  # the fields that decide how the weights are built: checked where they are read
        names = {k: check_variant(meta[k], k) for k in ("student", "variant") if meta.get(k) is not None}
        if len(set(names.values())) > 1:
            raise VariantError(f"student={meta['student']!r} and variant={meta['variant']!r} name different models")
        if meta.get("img_size") is not None:
            check_student_size(next(iter(names.values()), "vit_t"), meta["img_size"], "img_size")
    except VariantError as e:
        raise CheckpointError(f"the sidecar {path} is invalid: {e}. Fix the field, or delete the sidecar") from e
    return meta


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Writes a flat state dict of contiguous CPU tensors atomically, and `meta` as the JSON sidecar."""
    flat = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda f: torch.save(flat, f))
    if meta is not None:
        write_json(sidecar_path(path), meta)
    return Path(path)


def load_file(path: str | os.PathLike) -> Any:
    """Reads any checkpoint file with `torch.load(weights_only=True)` (plain containers and tensors only).

    A file that holds other objects is refused: unpickling it could run code.
    """
    path = require_file(
        path,
        "checkpoint",
        "Get the official MobileSAM weights (weights/mobile_sam.pt at https://github.com/ChaoningZhang/MobileSAM) or "
        "SAM's (sam_vit_h_4b8939.pth ...), or train one with `python train.py`",
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor file and unpickling it could run code "
            f"({str(e).splitlines()[0]}). Re-save it as a state dict of tensors."
        ) from e
    except Exception as e:  # zip errors, truncated files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def is_lightning_checkpoint(obj: Any) -> bool:
    """True for the dict that Lightning's `Trainer.save_checkpoint` writes."""
    return isinstance(obj, dict) and "state_dict" in obj and "pytorch-lightning_version" in obj


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The weights of any checkpoint under the official keys (`open_checkpoint(path).state_dict`)."""
    return open_checkpoint(path).state_dict


def flat_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """A loaded file's flat state dict (a `{"model": ...}` wrapper is opened), wrapper prefixes removed."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not hold a flat state dict of tensors (found {type(obj).__name__})")
    return {strip_prefixes(k): v for k, v in obj.items()}


def strip_prefixes(key: str) -> str:
    """Removes DDP / torch.compile wrapper prefixes from a state-dict key."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _preview(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > n else shown


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Strict `load_state_dict` with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit the model ({len(own)} keys expected, {len(state_dict)} found)."]
        if missing:
            lines.append(f"Missing keys: {_preview(missing)}")
        if unexpected:
            lines.append(f"Unexpected keys: {_preview(unexpected)}")
        if shapes:
            lines.append(f"Shape mismatches: {_preview(shapes, 4)}")
        lines.append(
            "Check the variant (vit_t, vit_b, vit_l, vit_h) or the student (its sidecar's `student`) and the img_size "
            "the file was made for."
        )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


@dataclass
class Checkpoint:
    """What a checkpoint file holds, under the official keys, and where each fact about it came from.

    Attributes:
        path: the file read.
        kind: "state_dict" (a flat state dict, e.g. `mobile_sam.pt`, `sam_vit_h_4b8939.pth`), "wrapped" (a
            `{"model": state_dict}` dict) or "lightning" (a training `.ckpt`).
        state_dict: flat state dict with the official keys (wrapper and LightningModule prefixes removed).
        variant: "vit_t", "vit_b", "vit_l", "vit_h" or a student's name ("repvit_m1_1", ...).
        variant_from: where the variant came from ("its weights", "its sidecar").
        img_size: input side in pixels the weights are for.
        img_size_from: where img_size came from ("its sidecar", "its positional embedding", ...).
        meta: what the file says about itself (its sidecar, or a training checkpoint's hyper-parameters).
    """

    path: Path
    kind: str
    state_dict: dict[str, Tensor]
    variant: str
    variant_from: str
    img_size: int
    img_size_from: str
    meta: dict[str, Any] = field(default_factory=dict)


def _walk(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(path, key, value) of every entry of nested dicts; subtrees about the teacher are skipped."""
    if not isinstance(tree, Mapping):
        return
    for key, value in tree.items():
        if "teacher" in str(key).lower():
            continue
        yield path, str(key), value
        yield from _walk(value, (*path, str(key)))


def find_setting(hparams: Any, key: str) -> Any:
    """The value of `key` in a training checkpoint's hyper-parameters, wherever the config nests it.

    Entries under a `model` or `student` node win over the rest, then the shallowest; anything under a key that
    names the teacher is ignored (the teacher has its own variant and sizes). None when absent.
    """
    found = [(p, v) for p, k, v in _walk(hparams) if k == key and v is not None and not isinstance(v, Mapping)]
    if not found:
        return None
    found.sort(key=lambda pv: (not any(n in ("model", "student") for n in pv[0]), len(pv[0])))
    return found[0][1]


def _lightning_state_dict(ckpt: dict[str, Any], path: Path) -> dict[str, Tensor]:
    state = {strip_prefixes(k).replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()}
    if any(k.startswith(SAM_PARTS) for k in state):  # a module that is itself the SAM model
        return {k: v for k, v in state.items() if k.startswith(SAM_PARTS)}
    sam = {strip_prefixes(k[len(LIGHTNING_PREFIX) :]): v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    if not sam:
        prefixes = sorted({k.split(".")[0] for k in state})
        raise CheckpointError(
            f"{path} is a Lightning checkpoint but none of its {len(state)} weights is under '{LIGHTNING_PREFIX}' "
            f"(its top-level names: {prefixes[:10]}); the training module must keep the SAM model as `self.sam`"
        )
    return sam


def open_checkpoint(
    path: str | os.PathLike, img_size: int | None = None, variant: str | None = None, role: str = "checkpoint"
) -> Checkpoint:
    """Opens any checkpoint: `mobile_sam.pt` with or without sidecar, a SAM `.pth`, a Lightning `.ckpt`, or a
    `{"model": ...}` wrapper, with `torch.load(weights_only=True)` (a file that could run code is refused).

    The variant comes from the weights; img_size from every statement of it (the sidecar or the training
    hyper-parameters, a ViT's positional embedding, the caller), which must agree; a flat state dict that states no
    size is an official one (1024).

    Args:
        path: the checkpoint file.
        img_size: the size the caller wants or knows, when the file does not say; a contradiction is refused.
        variant: the variant the caller expects (None or "auto": whatever the weights are); a mismatch is refused.
        role: names the option in error messages ("checkpoint", "teacher.checkpoint", "model.init").

    Returns:
        The weights under the official keys, with their variant, img_size and metadata.
    """
    path = Path(path)
    obj = load_file(path)
    sizes: dict[str, int] = {}  # where each statement of the size came from, to refuse contradictions
    if is_lightning_checkpoint(obj):
        kind, state = "lightning", _lightning_state_dict(obj, path)
        hparams = obj.get("hyper_parameters") or {}
        meta = {"hyper_parameters": hparams, "epoch": obj.get("epoch"), "global_step": obj.get("global_step")}
        if (size := find_setting(hparams, "img_size")) is not None:
            sizes["the checkpoint's hyper_parameters"] = int(size)
        variant_said = find_setting(hparams, "student") or find_setting(hparams, "variant")
        said_where = "its hyper_parameters"
    else:
        kind = "wrapped" if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else "state_dict"
        state = flat_state_dict(obj, str(path))
        meta = read_sidecar(path) or {}
        if meta.get("img_size") is not None:
            sizes["its sidecar"] = int(meta["img_size"])
        variant_said, said_where = meta.get("student") or meta.get("variant"), "its sidecar"
    found, found_where = _identify(state, variant_said, said_where, path, role)
    if variant not in (None, "auto") and check_variant(variant) != found:
        raise CheckpointError(
            f"{role}={path} holds {found} weights ({found_where}) but {variant} was asked for; ask for {found} "
            "(or variant='auto')"
        )
    if (size := size_from_weights(state, found)) is not None:
        sizes["its positional embedding"] = size
    if img_size is not None:
        sizes["the img_size asked for"] = check_student_size(found, int(img_size))
    if len(set(sizes.values())) > 1:
        said = ", ".join(f"{v} ({k})" for k, v in sizes.items())
        raise CheckpointError(
            f"{path}: conflicting img_size: {said}. Leave img_size unset to use the file's size, or give the size "
            "the weights were trained at"
        )
    if sizes:
        size_from, size = next(iter(sizes.items()))
    elif kind == "lightning":
        raise CheckpointError(
            f"{path}: no img_size in the checkpoint's hyper_parameters (looked for an 'img_size' key in nested "
            "dicts such as hyper_parameters['cfg']['model']); pass the img_size (--img-size N)"
        )
    else:
        size_from, size = "the official default (no sidecar)", DEFAULT_IMG_SIZE  # DESIGN.md: no sidecar = 1024
    return Checkpoint(path, kind, state, found, found_where, size, size_from, meta)


def _identify(state: dict[str, Tensor], said: Any, said_where: str, path: Path, role: str) -> tuple[str, str]:
    """(the model a state dict is, where that came from): the weights name TinyViTs and SAM ViTs; a timm student's
    weights need the name its sidecar (or hyper-parameters) gives, and a name the weights contradict is refused."""
    try:
        found = infer_variant(state)
        named = check_variant(said, "student") if said is not None else None
    except VariantError as e:
        raise CheckpointError(f"{role}={path}: {e}") from e
    if found == TIMM_STUDENT:
        timm_students = [s for s, v in STUDENTS.items() if v.family == "timm"]
        if named not in timm_students:
            raise CheckpointError(
                f"{role}={path} holds a timm student's weights (image_encoder.backbone.*) but "
                f"{said_where + ' names ' + str(named) if said else 'no sidecar names the student'}: its sidecar "
                f'{sidecar_path(path).name} must say "student": one of {", ".join(timm_students)}'
            )
        return named, said_where
    if named is not None and named != found:
        raise CheckpointError(f"{path}: {said_where} says {said!r} but its weights are {found!r}")
    return found, "its weights"
