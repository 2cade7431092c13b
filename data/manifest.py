"""The shard directory's bookkeeping: `dataset.json` (the manifest), the run plan, and per-shard commit records.

A shard `shard-r{rank}-{chunk}.tar` is final once its record `shard-r{rank}-{chunk}.json` exists: the tar is
renamed into place first, the record written (atomically) second, so a run killed between the two redoes that
chunk. The manifest is assembled from the records when every chunk of every rank is committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mobilesam.files import write_json
from mobilesam.variants import ALIASES

from .codec import EMBED_DIM, ENCODINGS, PATCH, SCALE_KEY, as_bytes
from .low_res import manifest_entry

MANIFEST = "dataset.json"
PLAN = "_plan.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A shard directory whose manifest is missing, malformed, or contradicts the request."""


def sample_crc32(sample: Mapping[str, Any]) -> int:
    """crc32 of a sample's member bytes in member-name order (what its record keeps, so verify can name it)."""
    crc = 0
    for ext in sorted(k for k in sample if not k.startswith("__")):
        crc = zlib.crc32(as_bytes(sample[ext]), crc)
    return crc


def shard_name(rank: int, chunk: int) -> str:
    return f"shard-r{rank:03d}-{chunk:06d}.tar"


def record_path(out_dir: Path, rank: int, chunk: int) -> Path:
    return out_dir / shard_name(rank, chunk).replace(".tar", ".json")


def inputs_digest(keys_and_sources: list[tuple[str, str]]) -> str:
    """sha256 over the ordered (key, source) list: a resumed run must see the same inputs."""
    h = hashlib.sha256()
    for k, s in keys_and_sources:
        h.update(f"{k}\t{s}\n".encode())
    return h.hexdigest()


def check_plan(out_dir: Path, plan: dict[str, Any]) -> None:
    """Writes the run plan, or checks that an earlier run in `out_dir` had the same one (resume)."""
    path = out_dir / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in plan.items() if old.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in diff.items())
            raise ManifestError(
                f"out_dir={out_dir} holds a run with other settings ({lines}). Resume with the same settings, "
                "or write to a fresh out_dir."
            )
        return
    _check_against_disk(out_dir, plan)
    write_json(path, plan)


def _check_against_disk(out_dir: Path, plan: dict[str, Any]) -> None:
    """Without a run plan, the settings of shards already in `out_dir` come from its dataset.json; a folder of
    committed shards with neither cannot say what it holds. A new plan that contradicts them is refused."""
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        on_disk = json.loads(manifest.read_text())
        said = {
            "img_size": (on_disk.get("img_size"), plan["img_size"]),
            "encoding": (on_disk.get("embedding", {}).get("encoding"), plan["encoding"]),
            "jpeg_quality": (on_disk.get("jpeg_quality"), plan["jpeg_quality"]),
            "teacher": (
                {k: on_disk.get("teacher", {}).get(k) for k in ("variant", "checkpoint_sha256", "precision")},
                {k: plan["teacher"].get(k) for k in ("variant", "checkpoint_sha256", "precision")},
            ),
        }
        diff = {k: ab for k, ab in said.items() if ab[0] != ab[1]}
        if diff:
            lines = "; ".join(f"{k}: {a!r} in {manifest.name}, {b!r} now" for k, (a, b) in diff.items())
            raise ManifestError(
                f"out_dir={out_dir} already holds finished shards with other settings ({lines}), and its {PLAN} is "
                "gone. Write to a fresh out_dir, or rerun with the shards' own settings."
            )
    elif any(out_dir.glob("shard-*.json")):
        raise ManifestError(
            f"out_dir={out_dir} holds committed shards but neither {PLAN} nor {MANIFEST}, so their settings are "
            "unknown: restore the plan file or write to a fresh out_dir"
        )


def chunk_ranges(n_inputs: int, rank: int, world: int, shard_size: int) -> list[list[int]]:
    """Input indices of each chunk of `rank`: inputs rank, rank+world, ... in runs of `shard_size`."""
    mine = list(range(rank, n_inputs, world))
    return [mine[i : i + shard_size] for i in range(0, len(mine), shard_size)]


def assemble_manifest(out_dir: Path, plan: dict[str, Any], skipped_at_listing: list[dict[str, str]]) -> bool:
    """Writes dataset.json when every chunk of every rank is committed; returns whether it did."""
    shards, skipped, low_res = [], list(skipped_at_listing), 0
    for rank in range(plan["world_size"]):
        for chunk, _ in enumerate(chunk_ranges(plan["inputs"], rank, plan["world_size"], plan["shard_size"])):
            rec = record_path(out_dir, rank, chunk)
            if not rec.is_file() or not (out_dir / shard_name(rank, chunk)).is_file():
                return False
            r = json.loads(rec.read_text())
            shards.append({"name": r["shard"], "count": r["count"], "rank": rank} | {"sha256": r.get("sha256")})
            skipped += r["skipped"]
            low_res += r.get("low_res_masks", 0)
    grid = plan["img_size"] // PATCH
    manifest = {
        "format_version": FORMAT_VERSION,
        "img_size": plan["img_size"],
        "embedding": {
            "encoding": plan["encoding"],
            "shape": [EMBED_DIM, grid, grid],
            "members": ["emb.npy"] + ([SCALE_KEY] if plan["encoding"] == "int8" else []),
        },
        "teacher": plan["teacher"],
        "jpeg_quality": plan["jpeg_quality"],
        "source": plan["source"],
        "inputs": plan["inputs"],
        "sample_count": sum(s["count"] for s in shards),
        "skipped_count": len(skipped),
        "shards": shards,
        "skipped": skipped,
    }
    if low_res:  # samples that carry every annotation's mask on the S/4 grid (data/low_res.py)
        manifest["low_res_masks"] = manifest_entry(plan["img_size"]) | {"samples": low_res}
    write_json(out_dir / MANIFEST, manifest)
    return True


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks `root/dataset.json`.

    Raises:
        ManifestError: no manifest (the precompute has not finished), another format version, or missing fields.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        partial = sorted(Path(root).glob("shard-*.json")) if Path(root).is_dir() else []
        hint = (
            f" ({len(partial)} shards are committed: the precompute has not finished; rerun it to resume)"
            if partial
            else " (run scripts/precompute_embeddings.py out_dir=... first)"
        )
        raise ManifestError(f"no {MANIFEST} in {root}{hint}")
    try:
        m = json.loads(path.read_text())
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    if m.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path} has format_version {m.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    for k in ("img_size", "embedding", "sample_count", "shards", "teacher"):
        if k not in m:
            raise ManifestError(f"{path} lacks {k!r}")
    enc = m["embedding"].get("encoding")
    if enc not in ENCODINGS:
        raise ManifestError(f"{path} declares embedding encoding {enc!r}; known: {ENCODINGS}")
    grid = int(m["img_size"]) // PATCH
    if list(m["embedding"].get("shape", [])) != [EMBED_DIM, grid, grid]:
        shape = m["embedding"].get("shape")
        raise ManifestError(f"{path}: embedding shape {shape} does not fit img_size {m['img_size']}")
    return m


def check_teacher(manifest: dict[str, Any], teacher: dict[str, Any], root: str | os.PathLike = "the shards") -> None:
    """Refuses shards whose embeddings another teacher made than the run's `teacher` config says.

    The variant must match; so must the checkpoint (its sha256 against the manifest's; a random teacher is
    "random"). A student learns whatever teacher made the shards, so a mismatch would train silently against the
    wrong model (and its exported decoder would come from another one).
    """
    from .teacher import checkpoint_sha256

    made = manifest.get("teacher") or {}
    ckpt = teacher.get("checkpoint")
    said = {
        "variant": ALIASES.get(teacher.get("variant"), teacher.get("variant")),  # as `describe_teacher` records it
        "checkpoint_sha256": checkpoint_sha256(ckpt)
        if ckpt and Path(ckpt).is_file()
        else "random"
        if not ckpt
        else None,
    }
    diff = [f"{k} {made.get(k)!r} in the shards, {v!r} in the config" for k, v in said.items() if v != made.get(k)]
    if diff:
        raise ManifestError(
            f"{root}/{MANIFEST} was made by another teacher than this run's ({'; '.join(diff)}; the shards' teacher: "
            f"{made.get('checkpoint')}). Set teacher={made.get('variant')} teacher.checkpoint=<that file>, or "
            "precompute shards with this run's teacher (scripts/precompute_embeddings.py)"
        )
