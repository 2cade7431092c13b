"""The teacher precompute: shard contents, the teacher on the stored JPEG, resume after SIGKILL, ranks, skips."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data.codec import decode_jpeg, npy_view
from data.demo import precompute_config
from data.manifest import ManifestError, read_manifest
from data.precompute import run
from data.stream import raw_samples
from data.teacher import embed, load_teacher
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[2]


def shard_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard in the manifest; asserts no key appears twice."""
    m = read_manifest(out)
    found: dict[str, dict[str, bytes]] = {}
    for sh in m["shards"]:
        samples = list(raw_samples(str(out / sh["name"])))
        assert len(samples) == sh["count"]
        for s in samples:
            assert s["__key__"] not in found, f"duplicate key {s['__key__']}"
            found[s["__key__"]] = {k: v.read() for k, v in s.items() if not k.startswith("__")}
    return found


def test_shards_hold_resized_jpeg_teacher_embedding_and_json(shards: Path, sa1b_tars: list[Path]) -> None:
    m = read_manifest(shards)
    assert m["img_size"] == 256 and m["embedding"] == {
        "encoding": "float16",
        "shape": [256, 16, 16],
        "members": ["emb.npy"],
    }
    assert m["teacher"]["checkpoint_sha256"] == "random" and m["teacher"]["precision"] == "fp32"
    assert m["sample_count"] == 12 and m["skipped"] == [] and [s["count"] for s in m["shards"]] == [3, 3, 3, 3]
    samples = shard_samples(shards)
    assert sorted(samples) == sorted(f"sa_{i}" for i in range(1, 13))
    model, _ = load_teacher("vit_t", None, 256, "cpu")
    for key in ("sa_1", "sa_12"):
        s = samples[key]
        meta = json.loads(s["json"])
        image = decode_jpeg(s["jpg"])
        assert meta["orig_size"] == [96, 144] and meta["size"] == [171, 256] == list(image.shape[1:])
        assert meta["source"].endswith(f"{key}.jpg") and len(meta["annotations"]) >= 1
        stored = npy_view(s["emb.npy"])
        assert stored.dtype == np.float16 and stored.shape == (256, 16, 16)
        # the teacher ran on the decoded stored JPEG (fp16 storage is the only difference)
        ref = embed(model, [image])[0]
        assert rel_err(torch.from_numpy(stored.astype(np.float32)), ref) < 2e-3
        # on the original pixels it would differ by more than that
        assert np.abs(stored.astype(np.float32) - ref.numpy()).max() < 2e-3 * float(ref.abs().max())


def _precompute_cmd(tars: Path, out: Path, **kw) -> list[str]:
    cfg = precompute_config(tars, out, shard_size=2, batch_size=1, **kw)
    code = "import json, sys; from data.precompute import run; run(json.loads(sys.argv[1]))"
    return [sys.executable, "-c", code, json.dumps(cfg.to_dict())]


def test_sigkill_mid_run_then_resume_gives_every_input_once(
    shards: Path, sa1b_tars: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = _precompute_cmd(sa1b_tars[0].parent, out, limit=8)  # the first 8 keys in sorted order
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.time() + 120
    while not list(out.glob("shard-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = len(list(out.glob("shard-*.json")))
    assert 1 <= committed < 4 and not (out / "dataset.json").exists(), "the kill must land part-way"
    result = run(json.loads(cmd[-1]))
    assert result["written"] == 8 - 2 * committed  # only the uncommitted chunks are redone
    assert not list(out.glob(".*.tmp"))
    resumed, fresh = shard_samples(out), shard_samples(shards)
    assert sorted(resumed) == sorted(fresh)[:8]
    for key in resumed:  # same seed-drawn random teacher, same bytes
        assert resumed[key]["emb.npy"] == fresh[key]["emb.npy"] and resumed[key]["jpg"] == fresh[key]["jpg"]


def test_two_ranks_write_disjoint_shards_that_cover_every_input(sa1b_tars: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "ranks"
    cfg = precompute_config(sa1b_tars[0].parent, out, shard_size=2, world_size=2, limit=6)
    first = run(cfg.replace(rank=1))
    assert first["manifest"] is None  # rank 0 not done yet
    second = run(cfg.replace(rank=0))
    assert second["manifest"] is not None
    m = read_manifest(out)
    by_rank = {r: {k for s in m["shards"] if s["rank"] == r for k in shard_keys(out / s["name"])} for r in (0, 1)}
    assert by_rank[0].isdisjoint(by_rank[1]) and len(by_rank[0]) == len(by_rank[1]) == 3
    assert by_rank[0] | by_rank[1] == {"sa_1", "sa_10", "sa_11", "sa_12", "sa_2", "sa_3"}  # the first 6 keys
    with pytest.raises(ManifestError, match="world_size"):  # resuming with other settings is refused
        run(cfg.replace(rank=0, world_size=3))


def shard_keys(path: Path) -> list[str]:
    return [s["__key__"] for s in raw_samples(str(path))]


def test_corrupt_inputs_are_skipped_counted_and_listed(sa1b_tars: list[Path], tmp_path: Path) -> None:
    from tests.data.test_sources import make_corrupt_tar  # noqa: I001 - a helper of the sibling test module

    src = tmp_path / "src"
    src.mkdir()
    make_corrupt_tar(src / "sa_000100.tar", sa1b_tars[0])
    out = tmp_path / "out"
    result = run(precompute_config(src, out, shard_size=4))
    m = read_manifest(out)
    reasons = {s["source"].split(":")[-1]: s["reason"] for s in m["skipped"]}
    # the truncated json of sa_903 leaves its image without annotations; the tar's cut tail is reported too
    assert set(reasons) == {
        "sa_900.jpg",
        "sa_901.jpg",
        "sa_902.jpg",
        "sa_903.jpg",
        "sa_903.json",
        str(src / "sa_000100.tar"),
    }
    assert "corrupt image" in reasons["sa_900.jpg"] and "bad JSON" in reasons["sa_901.jpg"]
    assert "truncated" in reasons["sa_903.json"] and "no annotation json" in reasons["sa_903.jpg"]
    assert m["skipped_count"] == 6 and m["sample_count"] == 6 == result["written"]
    assert sorted(shard_samples(out)) == sorted(f"sa_{i}" for i in range(1, 7))


def test_typed_config_defaults_are_the_yaml_and_bad_values_are_named(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from data.precompute_config import PrecomputeConfig, TeacherConfig

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        composed = compose("precompute", overrides=[f"out_dir={tmp_path}", "source.root=/x"])
    typed = PrecomputeConfig.of(composed)
    assert typed.teacher == TeacherConfig("vit_h", None, "fp32") and typed.source["kind"] == "sa1b"
    defaults = PrecomputeConfig(source={}, out_dir=str(tmp_path))
    assert typed.replace(source={}) == defaults  # every default of the dataclass is the yaml's, and back
    for key, value, message in [
        ("batch_size", -1, "batch_size=-1 must be an integer >= 1"),
        ("img_size", 1000, "img_size=1000 must be a positive multiple of 64"),
        ("encoding", "bf16", "encoding='bf16'; use one of float16, int8"),
        ("jpeg_quality", 0, "jpeg_quality=0 must be an integer in 1..100"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            defaults.replace(**{key: value})
    with pytest.raises(ValueError, match=r"unknown precompute options \['batchsize'\]"):
        PrecomputeConfig.of({"source": {}, "out_dir": "x", "batchsize": 4})
    with pytest.raises(ValueError, match="teacher.precision='fp8'"):
        PrecomputeConfig.of({"source": {}, "out_dir": "x", "teacher": {"variant": "vit_h", "precision": "fp8"}})


def test_without_its_plan_a_finished_folder_refuses_other_settings(sa1b_tars: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "done"
    cfg = precompute_config(sa1b_tars[0].parent, out, shard_size=3, limit=3)
    run(cfg)
    manifest = (out / "dataset.json").read_text()
    (out / "_plan.json").unlink()
    with pytest.raises(ManifestError, match=r"img_size: 256 in dataset.json, 320 now"):
        run(cfg.replace(img_size=320))
    assert (out / "dataset.json").read_text() == manifest  # still describes what is on disk
    run(cfg)  # the shards' own settings: accepted, nothing redone
    assert json.loads((out / "dataset.json").read_text())["img_size"] == 256
