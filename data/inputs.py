"""The precompute's inputs: what a source config names (SA-1B tars, image folders, labelled sets), sorted by key,
and the stable held-out split. Readers live in `sources` (images) and `labels` (annotations); this module joins them."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

from .labels import read_labels
from .sources import IMAGE_EXTS, Blob, InputRef, list_folder, list_sa1b

SOURCE_KINDS = ("sa1b", "folder", "coco", "masks")


def list_labelled(
    kind: str, images: str | os.PathLike, annotations: str | os.PathLike | None, **options: Any
) -> tuple[list[InputRef], list[dict[str, str]]]:
    """Labelled images (`data.labels`: a COCO instances JSON, or a folder of mask PNGs) as precompute inputs.

    Each input's annotation is its SA-1B-style json (`{"annotations": [...]}`, COCO RLE at the image's size) made
    in memory, so the shards carry the masks as SA-1B shards do. Images without any usable mask are skipped (there
    is nothing to learn from them) and listed with the reader's own skip records.

    Args:
        kind: "coco" (`annotations` is the JSON) or "masks" (`annotations` is the mask folder).
        options: passed to the reader (`layout`, `ignore_values` for masks; `include_crowd` for coco).
    """
    if annotations is None:
        raise ValueError(f"source.kind={kind} needs source.annotations (a COCO JSON or a folder of mask PNGs)")
    found = read_labels(kind, images, **{"annotations" if kind == "coco" else "masks": annotations}, **options)
    refs, skipped = [], list(found.skipped)
    for item in found.images:
        if not item.raw_annotations:
            skipped.append({"source": str(item.path), "reason": "no masks: nothing to learn from"})
            continue
        doc = json.dumps({"annotations": item.raw_annotations}).encode()
        refs.append(InputRef(item.key, Blob(str(item.path)), Blob(f"{annotations}#{item.key}", data=doc)))
    return refs, skipped


def holdout_part(key: str, fraction: float) -> str:
    """ "val" for a stable share `fraction` of the keys, else "train".

    The split hashes the key alone (crc32), so adding or removing images never moves the others between parts.
    """
    return "val" if zlib.crc32(key.encode()) / 2**32 < fraction else "train"


def ref_identity(ref: InputRef) -> str:
    """What a resumed or reused precompute must see unchanged for this input: the image's location and, for
    annotations made in memory (coco, masks), a digest of their content (an edited label changes the plan)."""
    ident = ref.image.describe()
    if ref.annotation is not None and ref.annotation.data is not None:
        ident += "#" + hashlib.sha256(ref.annotation.data).hexdigest()[:16]
    return ident


def list_inputs(source: Mapping[str, Any]) -> tuple[list[InputRef], list[dict[str, str]]]:
    """The inputs a source config names, sorted by key (configs/source/*.yaml).

    Args:
        source: {"kind": one of SOURCE_KINDS, "root": ..., and per kind: "extensions" (folder), "annotations"
            (coco: an instances JSON; masks: a folder of mask PNGs) and "options" (`data.labels` reader options:
            layout, ignore_values, include_crowd); optionally "holdout" (a share in [0, 1)) and "part" ("train" or
            "val") to keep one side of the stable split `holdout_part`}.

    Returns:
        (inputs, skip records {"source", "reason"}).
    """
    kind = source.get("kind")
    if kind == "sa1b":
        refs, skipped = list_sa1b(source["root"])
    elif kind == "folder":
        refs, skipped = list_folder(source["root"], tuple(source.get("extensions") or IMAGE_EXTS))
    elif kind in ("coco", "masks"):
        refs, skipped = list_labelled(kind, source["root"], source.get("annotations"), **(source.get("options") or {}))
    else:
        raise ValueError(f"source.kind={kind!r}; use one of {SOURCE_KINDS} (source=sa1b, folder, coco or masks)")
    part = source.get("part")
    if part is not None:
        if part not in ("train", "val"):
            raise ValueError(f"source.part={part!r}; use 'train' or 'val' (or null for every input)")
        fraction = float(source.get("holdout") or 0.0)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"source.holdout={fraction}; give the held-out share in [0, 1), e.g. 0.1")
        refs = [r for r in refs if holdout_part(r.key, fraction) == part]
    return refs, skipped
