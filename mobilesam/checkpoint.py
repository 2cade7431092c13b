"""Checkpoint files: safe loading (`weights_only=True`), strict key checks, atomic writes, the JSON sidecar."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# Prefixes that wrappers add to every key (DDP, torch.compile); the weights under them are the model's own.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """`x/foo_mobile_sam.pt` -> `x/foo_mobile_sam.json`."""
    return Path(checkpoint).with_suffix(".json")


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
    return meta


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Calls `write(file_object)` on a temp file beside `path`, then renames it over `path`.

    A run killed part-way leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode any new file gets under the user's umask
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Writes a flat state dict of contiguous CPU tensors atomically, and `meta` as the JSON sidecar."""
    flat = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda f: torch.save(flat, f))
    if meta is not None:
        atomic_write(sidecar_path(path), lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return Path(path)


def load_file(path: str | os.PathLike) -> Any:
    """Reads any checkpoint file with `torch.load(weights_only=True)` (plain containers and tensors only).

    A file that holds other objects is refused: unpickling it could run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist. Get the official MobileSAM weights (weights/mobile_sam.pt at "
            "https://github.com/ChaoningZhang/MobileSAM) or SAM's (sam_vit_h_4b8939.pth ...), or train one with "
            "`python train.py`"
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
    """Reads a flat state dict with `torch.load(weights_only=True)`; never runs code from the file.

    Wrapper prefixes (`module.`, `_orig_mod.`) are removed. A Lightning checkpoint is refused with a hint.
    """
    obj = load_file(path)
    if is_lightning_checkpoint(obj):
        raise CheckpointError(
            f"{path} is a Lightning training checkpoint; convert it with `mobilesam export {path} --out DIR`"
        )
    return flat_state_dict(obj, str(path))


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
        lines.append("Check the variant (vit_t, vit_b, vit_l, vit_h) and the img_size the file was made for.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
