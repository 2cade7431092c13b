"""Inputs of the precompute: SA-1B tars, extracted SA-1B folders, image-folder trees and labelled images (COCO
JSON, mask PNGs), listed and read lazily.

Nothing is unpacked to disk: a tar is listed once (headers only) and each member is read by offset, so any
process (a DataLoader worker, another rank) can read any input. Unreadable inputs become skip records.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilesam.io import ImageReadError
from mobilesam.io import decode_image as decode_image_bytes

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Blob:
    """Bytes of one file: a member of a tar (`container` set, read at `offset`), a plain file (`path`), or bytes
    made in memory (`data` set; `path` then only names where they came from, e.g. `instances.json#12.jpg`)."""

    path: str
    container: str = ""
    offset: int = 0
    size: int = -1
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if not self.container:
            return Path(self.path).read_bytes()
        with open(self.container, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise InputError(f"truncated tar member: {len(data)} of {self.size} bytes")
        return data

    def describe(self) -> str:
        return f"{self.container}:{self.path}" if self.container else self.path


@dataclass(frozen=True)
class InputRef:
    """One input image: its shard key, the image bytes and, when the source has one, its annotation json."""

    key: str
    image: Blob
    annotation: Blob | None = None


class InputError(ValueError):
    """An input that cannot be used: corrupt image, truncated tar member, bad JSON."""


def make_key(relative: str) -> str:
    """A relative path without extension -> a shard key: no dots (webdataset splits the extension at the first
    dot) and no slashes; other characters outside [A-Za-z0-9_-] become '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", relative)


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Image file bytes -> HxWx3 uint8 RGB (`mobilesam.io.decode_image`: its conversion rule, EXIF orientation
    applied); an unreadable image is an InputError (a skip record)."""
    try:
        return decode_image_bytes(data, source)
    except ImageReadError as e:
        raise InputError(f"corrupt image: {e}") from e


def list_tar(path: Path) -> tuple[list[Blob], list[dict[str, str]]]:
    """Regular members of a tar with their data offsets, and skip records for a truncated or unreadable tail."""
    blobs, skipped = [], []
    file_size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isreg():
                    continue
                if m.offset_data + m.size > file_size:
                    skipped.append({"source": f"{path}:{m.name}", "reason": "truncated tar member"})
                    continue
                blobs.append(Blob(m.name, str(path), m.offset_data, m.size))
    except (tarfile.TarError, OSError, EOFError) as e:
        skipped.append({"source": str(path), "reason": f"unreadable tar after {len(blobs)} members: {e}"})
    return blobs, skipped


def _pair(
    images: dict[str, Blob], jsons: dict[str, Blob], need_json: bool, skipped: list[dict[str, str]]
) -> list[InputRef]:
    refs = []
    for stem, blob in images.items():
        ann = jsons.get(stem)
        if need_json and ann is None:
            skipped.append({"source": blob.describe(), "reason": "no annotation json beside the image"})
            continue
        refs.append(InputRef(make_key(stem), blob, ann))
    return refs


def list_sa1b(root: str | os.PathLike) -> tuple[list[InputRef], list[dict[str, str]]]:
    """SA-1B inputs under `root`: `sa_*.tar` files (read in place) and extracted `sa_*.jpg` + `sa_*.json` pairs.

    `root` may be one tar, a folder of tars, or a folder of extracted files (searched recursively). Each image
    needs its json (an image without one is skipped). Keys are the file stems (`sa_223750`).

    Returns:
        (inputs sorted by key, skip records {"source", "reason"}).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"source.root={root} does not exist: point it at the downloaded SA-1B tars")
    tars = [root] if root.is_file() else sorted(root.rglob("*.tar"))
    refs: list[InputRef] = []
    skipped: list[dict[str, str]] = []
    for tar in tars:
        blobs, bad = list_tar(tar)
        skipped += bad
        images = {Path(b.path).stem: b for b in blobs if b.path.lower().endswith((".jpg", ".jpeg"))}
        jsons = {Path(b.path).stem: b for b in blobs if b.path.lower().endswith(".json")}
        refs += _pair(images, jsons, True, skipped)
    if root.is_dir():
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".tar")]
        images = {p.stem: Blob(str(p)) for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
        jsons = {p.stem: Blob(str(p)) for p in files if p.suffix.lower() == ".json"}
        refs += _pair(images, jsons, True, skipped)
    return _dedupe(refs, skipped), skipped


def list_folder(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTS) -> tuple[list[InputRef], list]:
    """Every image under `root` (recursive), keyed by its relative path without extension.

    An optional `NAME.json` beside `NAME.ext` holding SA-1B-style annotations (COCO RLE `segmentation`, optional
    `bbox` and `point_coords`) is carried into the shards; missing boxes and points are derived from the masks.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source.root={root} is not a folder of images")
    refs, skipped = [], []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in extensions:
            continue
        rel = p.relative_to(root).with_suffix("").as_posix()
        ann = p.with_suffix(".json")
        refs.append(InputRef(make_key(rel), Blob(str(p)), Blob(str(ann)) if ann.is_file() else None))
    if not refs:
        raise FileNotFoundError(f"no images ({', '.join(extensions)}) under source.root={root}")
    return _dedupe(refs, skipped), skipped


def _dedupe(refs: list[InputRef], skipped: list[dict[str, str]]) -> list[InputRef]:
    """Sorted by key; a second input with the same key is skipped (keys name samples and must be unique)."""
    seen: dict[str, InputRef] = {}
    for r in sorted(refs, key=lambda r: (r.key, r.image.describe())):
        if r.key in seen:
            first = seen[r.key].image.describe()
            skipped.append({"source": r.image.describe(), "reason": f"duplicate key {r.key} (also {first})"})
            continue
        seen[r.key] = r
    return list(seen.values())
