"""Checks a shard directory against its manifest: every shard readable and unchanged since it was committed (sha256,
and each sample's crc32 from its record), counts, keys and shapes as declared."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mobilesam.files import sha256_file

from .batch import SampleDecoder
from .codec import ShardFormatError, as_bytes
from .low_res import LOW_RES_KEY, decode_low_res
from .manifest import read_manifest, sample_crc32
from .stream import raw_samples


def _recorded_crc32(root: Path, shard: str) -> dict[str, int]:
    """The per-sample crc32 the shard's commit record holds ({} for shards made before records had them)."""
    rec = root / (Path(shard).stem + ".json")
    if not rec.is_file():
        return {}
    try:
        return {str(k): int(v) for k, v in (json.loads(rec.read_text()).get("crc32") or {}).items()}
    except (ValueError, AttributeError):
        return {}


def verify_shards(root: str | os.PathLike, decode: bool = True, max_errors: int = 20) -> dict[str, Any]:
    """Reads every shard listed in `root/dataset.json`.

    Args:
        decode: also decode every JPEG and embedding and check their shapes (slower; counts and keys otherwise).

    Returns:
        {"shards", "samples", "errors": [str], "ok": bool}. Errors: missing or unreadable shards, per-shard
        counts that differ from the manifest, duplicate keys, samples whose members or shapes are wrong.
    """
    root = Path(root)
    m = read_manifest(root)
    decoder = SampleDecoder(int(m["img_size"]), m["embedding"]["encoding"], 0)
    errors: list[str] = []
    seen: dict[str, str] = {}
    total = 0
    for sh in m["shards"]:
        path = root / sh["name"]
        if not path.is_file():
            errors.append(f"{sh['name']}: missing")
            continue
        crcs = _recorded_crc32(root, sh["name"])
        if sh.get("sha256") and sha256_file(path) != sh["sha256"]:
            errors.append(f"{sh['name']}: its bytes changed since it was committed (sha256 differs from dataset.json)")
        n = 0
        try:
            for raw in raw_samples(str(path)):
                n += 1
                key = raw["__key__"]
                if key in crcs and sample_crc32(raw) != crcs[key]:
                    errors.append(f"{sh['name']}: sample {key} changed since it was written (crc32 of its members)")
                if key in seen:
                    errors.append(f"{sh['name']}: key {key} also in {seen[key]}")
                seen[key] = sh["name"]
                if decode:
                    try:
                        decoder(raw, None)
                        if LOW_RES_KEY in raw:  # the stored low-resolution masks: one per annotation, right shape
                            count = len(json.loads(as_bytes(raw["json"])).get("annotations", []))
                            decode_low_res(raw[LOW_RES_KEY], range(count), count, int(m["img_size"]))
                    except (ShardFormatError, RuntimeError, ValueError, KeyError) as e:
                        errors.append(f"{sh['name']}: {e}")
        except Exception as e:  # a truncated or corrupt tar
            errors.append(f"{sh['name']}: unreadable after {n} samples: {e}")
        if n != sh["count"]:
            errors.append(f"{sh['name']}: {n} samples, the manifest says {sh['count']}")
        total += n
        if len(errors) >= max_errors:
            errors.append("(stopped after too many errors)")
            break
    if total != m["sample_count"] and len(errors) < max_errors:
        errors.append(f"{total} samples in all, the manifest says {m['sample_count']}")
    stray = sorted(p.name for p in root.glob(".shard-*.tmp"))
    if stray:
        errors.append(f"half-written shards of an unfinished run: {stray[:3]} (rerun the precompute to finish)")
    return {"shards": len(m["shards"]), "samples": total, "errors": errors, "ok": not errors}
