"""Adds the low-resolution masks member to existing shards: per shard atomic, resumable, verified."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from mobilesam.files import sha256_file

from .annotations import low_res_masks
from .codec import ShardFormatError, as_bytes
from .low_res import LOW_RES_KEY, decode_low_res, encode_low_res, manifest_entry
from .manifest import MANIFEST, read_manifest, sample_crc32, write_json
from .stream import raw_samples


def _needs(raw: dict[str, Any]) -> bool:
    return LOW_RES_KEY not in raw


def _annotations(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    meta = json.loads(as_bytes(raw["json"]))
    return meta.get("annotations", []), tuple(meta["size"])


def add_to_shard(path: str, img_size: int, force: bool = False) -> dict[str, Any]:
    """Rewrites one shard with `KEY.masks.npy.zlib` beside every sample that has annotations.

    The new tar is written to a temp file beside the shard, read back and checked (every added member decodes to
    the masks computed from the RLE; every other member byte-identical), fsynced, then renamed over the shard:
    a run killed at any moment leaves the old shard or the new one. A shard whose annotated samples all carry the
    member already is left alone (resume), unless `force`.

    Returns:
        {"shard", "samples", "with_masks" (samples carrying the member now), "added", "skipped_shard" (bool)}.
    """
    samples = list(raw_samples(path))
    annotated = {}
    for raw in samples:
        anns, size = _annotations(raw)
        if anns:
            annotated[raw["__key__"]] = (anns, size)
    name = Path(path).name
    record = Path(path).with_suffix(".json")  # the precompute's commit record, when there is one
    rec = json.loads(record.read_text()) if record.is_file() else None
    _check_recorded(name, samples, (rec or {}).get("crc32") or {})
    todo = [r for r in samples if r["__key__"] in annotated and (force or _needs(r))]
    if not todo:
        sha = _sync_record(path, record, rec, len(annotated))
        return {"shard": name, "samples": len(samples), "with_masks": len(annotated), "added": 0,
                "skipped_shard": True, "sha256": sha}  # fmt: skip
    expected: dict[str, dict[str, bytes]] = {}
    for raw in samples:
        key = raw["__key__"]
        members = {ext: as_bytes(v) for ext, v in raw.items() if not ext.startswith("__")}
        if key in annotated and (force or LOW_RES_KEY not in members):
            anns, size = annotated[key]
            members[LOW_RES_KEY] = encode_low_res(anns, size, img_size)
        expected[key] = members

    tmp = Path(path).with_name(f".{name}.lowres.tmp")
    try:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False)
            for key, members in expected.items():
                writer.write({"__key__": key} | members)
            writer.close()  # closes the tar stream, not our file
            f.flush()
            os.fsync(f.fileno())
        _check(str(tmp), expected, annotated, img_size)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sha = _sync_record(path, record, rec, len(annotated))  # a kill before this: the rerun's skip path does it
    return {
        "shard": name,
        "samples": len(samples),
        "with_masks": len(annotated),
        "added": len(todo),
        "skipped_shard": False,
        "sha256": sha,
    }


def _check_recorded(name: str, samples: list[dict[str, Any]], crcs: dict[str, int]) -> None:
    """Refuses a shard whose samples changed since the precompute recorded them (the member aside)."""
    for raw in samples:
        old = crcs.get(raw["__key__"])
        plain = {k: v for k, v in raw.items() if k != LOW_RES_KEY}
        if old is not None and int(old) not in (sample_crc32(raw), sample_crc32(plain)):
            raise ShardFormatError(
                f"{name}: sample {raw['__key__']} changed since it was written (crc32 of its members); "
                "run scripts/verify_shards.py and rebuild that shard before adding masks"
            )


def _sync_record(path: str, record: Path, rec: dict[str, Any] | None, with_masks: int) -> str:
    """The shard's sha256; its commit record (when there is one) updated to the shard as it is now."""
    sha = sha256_file(path)
    if rec is not None:
        crcs = {r["__key__"]: sample_crc32(r) for r in raw_samples(path)}
        if rec.get("sha256") != sha or rec.get("crc32") != crcs or rec.get("low_res_masks") != with_masks:
            write_json(record, rec | {"sha256": sha, "crc32": crcs, "low_res_masks": with_masks})
    return sha


def _check(tmp: str, expected: dict[str, dict[str, bytes]], annotated: dict, img_size: int) -> None:
    """The written temp tar holds exactly the expected samples, and the masks decode to the RLE's."""
    got = list(raw_samples(tmp))
    if [r["__key__"] for r in got] != list(expected):
        raise ShardFormatError(f"{tmp}: the rewritten shard's keys differ from the original's")
    for raw in got:
        key, want = raw["__key__"], expected[raw["__key__"]]
        have = {ext: as_bytes(v) for ext, v in raw.items() if not ext.startswith("__")}
        if have != want:
            raise ShardFormatError(f"{tmp}: sample {key}'s members changed while rewriting")
        if key in annotated:
            anns, size = annotated[key]
            ids = np.arange(len(anns))
            if not np.array_equal(decode_low_res(have[LOW_RES_KEY], ids, len(anns), img_size),
                                  low_res_masks(anns, ids, size, img_size)):  # fmt: skip
                raise ShardFormatError(f"{tmp}: sample {key}'s low-resolution masks differ from its RLE masks")


def add_low_res_masks(root: str | os.PathLike, workers: int = 1, force: bool = False) -> dict[str, Any]:
    """Adds the member to every shard listed in `root/dataset.json`, then declares it in the manifest.

    Args:
        root: the shard directory.
        workers: processes, one shard at a time each (the RLE decode costs ~15-35 ms per SA-1B mask per core).
        force: recompute the member where it exists already.

    Returns:
        {"shards", "rewritten", "samples_with_masks", "added", "manifest"}.
    """
    root = Path(root)
    m = read_manifest(root)
    img_size = int(m["img_size"])
    for stale in root.glob(".shard-*.tar.*.tmp"):  # a temp file of a killed run of this command
        stale.unlink()
    paths = [str(root / sh["name"]) for sh in m["shards"]]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(add_to_shard, paths, [img_size] * len(paths), [force] * len(paths)))
    else:
        results = [add_to_shard(p, img_size, force) for p in paths]
    with_masks = sum(r["with_masks"] for r in results)
    for sh, r in zip(m["shards"], results):
        if "sha256" in sh:  # manifests that record shard hashes follow the rewritten shards
            sh["sha256"] = r["sha256"]
    if with_masks:
        m["low_res_masks"] = manifest_entry(img_size) | {"samples": with_masks}
    write_json(root / MANIFEST, m)
    return {
        "shards": len(results),
        "rewritten": sum(not r["skipped_shard"] for r in results),
        "samples_with_masks": with_masks,
        "added": sum(r["added"] for r in results),
        "manifest": str(root / MANIFEST),
    }
