"""Low-resolution masks stored in the shards: the loader's stored path equals its RLE path; adding them later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data import add_low_res
from data.add_low_res import add_low_res_masks
from data.annotations import low_res_masks
from data.batch import SampleDecoder
from data.codec import ShardFormatError, as_bytes
from data.low_res import LOW_RES_KEY, decode_low_res, encode_low_res
from data.manifest import read_manifest
from data.stream import Shard, ShardStream, raw_samples
from data.verify import verify_shards


def _strip(src: Path, dest: Path) -> Path:
    """A copy of the shard directory without the low-resolution masks (shards as older precomputes wrote them)."""
    shutil.copytree(src, dest)
    m = json.loads((dest / "dataset.json").read_text())
    m.pop("low_res_masks", None)
    (dest / "dataset.json").write_text(json.dumps(m))
    for sh in m["shards"]:
        path = dest / sh["name"]
        samples = [
            {k: as_bytes(v) for k, v in r.items() if k != "__url__" and k != LOW_RES_KEY}
            for r in raw_samples(str(path))
        ]
        with wds.TarWriter(str(path), encoder=False) as w:
            for s in samples:
                w.write(s)
        # records and manifest as an older precompute left them: hashes of the shards without the member
        record = path.with_suffix(".json")
        sh["sha256"] = add_low_res._sync_record(str(path), record, json.loads(record.read_text()), 0)
    (dest / "dataset.json").write_text(json.dumps(m))
    return dest


def _batches(root: Path, masks: int = 3, epoch: int = 1) -> dict[str, dict]:
    m = read_manifest(root)
    shards = [Shard(str(root / s["name"]), s["count"]) for s in m["shards"]]
    stream = ShardStream(shards, SampleDecoder(256, "float16", masks), 4, shuffle_buffer=8, train=True)
    stream.set_epoch(epoch)
    return {tuple(b["key"])[0]: b for b in stream}


def _members(root: Path) -> dict[str, dict[str, bytes]]:
    m = read_manifest(root)
    return {
        r["__key__"]: {k: as_bytes(v) for k, v in r.items() if k != "__url__"}
        for s in m["shards"]
        for r in raw_samples(str(root / s["name"]))
    }


def test_precompute_stores_every_annotation_and_the_loader_paths_agree(shards: Path, tmp_path: Path) -> None:
    m = read_manifest(shards)
    assert m["low_res_masks"]["member"] == LOW_RES_KEY and m["low_res_masks"]["samples"] == m["sample_count"] == 12
    for s in _members(shards).values():
        meta = json.loads(s["json"])
        anns, ids = meta["annotations"], np.arange(len(meta["annotations"]))
        stored = decode_low_res(s[LOW_RES_KEY], ids, len(anns), 256)
        assert stored.shape == (len(anns), 64, 64) and stored.any()
        assert np.array_equal(stored, low_res_masks(anns, ids, tuple(meta["size"]), 256))
    old = _strip(shards, tmp_path / "old")
    assert all(LOW_RES_KEY not in s for s in _members(old).values())
    for epoch in (0, 1):  # per-epoch mask choice: other masks each epoch, equal on both paths
        new_b, old_b = _batches(shards, epoch=epoch), _batches(old, epoch=epoch)
        assert new_b.keys() == old_b.keys() and len(new_b) == 3
        for k in new_b:
            for field, value in new_b[k].items():
                same = torch.equal(value, old_b[k][field]) if torch.is_tensor(value) else value == old_b[k][field]
                assert same, (k, field)
            assert new_b[k]["masks"].any()


def test_the_loader_reads_the_member_without_the_rle(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data.batch

    def no_rle(*args, **kwargs):
        raise AssertionError("the RLE was decoded")

    monkeypatch.setattr(data.batch, "low_res_masks", no_rle)
    assert sum(len(b["key"]) for b in _batches(shards).values()) == 12


def test_add_low_res_masks_is_atomic_resumable_and_equals_the_precompute(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _strip(shards, tmp_path / "old")
    before = _members(old)
    real = add_low_res.add_to_shard
    calls = []

    def dies_on_the_third(path, img_size, force=False):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a run killed while shard 3 is being written
        return real(path, img_size, force)

    monkeypatch.setattr(add_low_res, "add_to_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        add_low_res_masks(old)
    monkeypatch.setattr(add_low_res, "add_to_shard", real)
    half = _members(old)
    assert sum(LOW_RES_KEY in s for s in half.values()) == 6  # two shards of 3 done, the rest untouched
    assert "low_res_masks" not in read_manifest(old)
    (old / ".shard-r000-000003.tar.x1.tmp").write_bytes(b"half")  # a temp file left by a kill -9
    r = add_low_res_masks(old)
    assert r["rewritten"] == 2 and r["added"] == 6 and r["samples_with_masks"] == 12
    assert not list(old.glob(".*.tmp"))
    # the added members are the precompute's, bytes for bytes, and nothing else changed
    assert _members(old) == _members(shards)
    assert read_manifest(old)["low_res_masks"] == read_manifest(shards)["low_res_masks"]
    assert add_low_res_masks(old)["rewritten"] == 0  # done: a rerun leaves every shard alone
    assert verify_shards(old)["ok"]  # hashes and crc32 records follow the rewritten shards
    # (the tars' own bytes differ from the precompute's by their headers' times, so the sha256 are their own)
    assert all(sh["sha256"] == add_low_res.sha256_file(old / sh["name"]) for sh in read_manifest(old)["shards"])
    assert {k: {e: v for e, v in s.items() if e != LOW_RES_KEY} for k, s in _members(old).items()} == before


def test_a_bad_member_is_refused_by_name(shards: Path) -> None:
    raw = next(iter(raw_samples(str(shards / read_manifest(shards)["shards"][0]["name"]))))
    raw = {k: as_bytes(v) if k not in ("__key__", "__url__") else v for k, v in raw.items()}
    n = len(json.loads(raw["json"])["annotations"])
    raw[LOW_RES_KEY] = encode_low_res(json.loads(raw["json"])["annotations"][:-1], (64, 96), 256)
    with pytest.raises(ShardFormatError, match=rf"sample {raw['__key__']}.*expected uint8 \({n}, 64, 8\)"):
        SampleDecoder(256, "float16", 2)(raw, 0)
