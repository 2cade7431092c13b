"""Custom data for fine-tuning: the teacher's shards made once per folder, teacher and size, reused, and refused
when the inputs change; the stable held-out split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.custom import CustomDataModule, DataChangedError, resolve_kind
from data.inputs import holdout_part, list_inputs
from data.manifest import read_manifest
from data.synthetic import make_sa1b_image


def write_folder(root: Path, n: int, seed: int = 0, size: tuple[int, int] = (120, 160)) -> list[Path]:
    """n generated images (png) with SA-1B-style NAME.json masks beside them."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        image, anns = make_sa1b_image(np.random.default_rng([seed, i]), size, 4)
        Image.fromarray(image).save(root / f"img_{i:02d}.png")
        (root / f"img_{i:02d}.json").write_text(json.dumps({"annotations": anns}))
        out.append(root / f"img_{i:02d}.png")
    return out


def datamodule(images: Path, cache: Path, teacher: Path, **kwargs) -> CustomDataModule:
    args = dict(
        images=images,
        cache_dir=cache,
        teacher={"variant": "vit_t", "checkpoint": str(teacher), "precision": "fp32"},
        img_size=256,
        holdout=0.3,
        precompute={"num_workers": 0, "progress": False, "batch_size": 4},
        batch_size=2,
        num_workers=0,
        masks_per_image=4,
        rank=0,
        world_size=1,
    )
    return CustomDataModule(**(args | kwargs))


def test_shards_are_made_once_per_folder_teacher_and_size_then_reused(teacher_file, tmp_path, monkeypatch):
    images = write_folder(tmp_path / "imgs", 10)
    cache = tmp_path / "cache"
    dm = datamodule(tmp_path / "imgs", cache, teacher_file)
    dm.setup("fit")
    base = dm.dataset_dir
    assert base.parent == cache and base.name.startswith("imgs-") and dm.root == base / "train"
    key = json.loads((base / "key.json").read_text())
    assert key["img_size"] == 256 and len(key["teacher"]["checkpoint_sha256"]) == 64
    train, val = read_manifest(base / "train"), read_manifest(base / "val")
    expect_val = sorted(p.stem for p in images if holdout_part(p.stem, 0.3) == "val")
    assert 0 < len(expect_val) < 10 and val["sample_count"] == len(expect_val)
    assert train["sample_count"] == 10 - len(expect_val) and dm.val_root == base / "val"
    assert dm.manifest["teacher"]["checkpoint_sha256"] == key["teacher"]["checkpoint_sha256"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["masks"].shape == (2, 4, 64, 64) and batch["masks"].any()  # the NAME.json masks came along

    # a second run: same folder, teacher and size -> the same shards, and the teacher never runs
    import data.precompute

    monkeypatch.setattr(data.precompute, "run", lambda cfg: pytest.fail("the precompute ran again"))
    again = datamodule(tmp_path / "imgs", cache, teacher_file)
    again.setup("fit")
    assert again.dataset_dir == base and again.manifest["sample_count"] == train["sample_count"]
    # another size or another teacher is another shard set
    assert datamodule(tmp_path / "imgs", cache, teacher_file, img_size=320).cache.resolve() != base
    other = shutil.copy(teacher_file, tmp_path / "other.pth")
    with open(other, "ab") as f:
        f.write(b"\0")  # other bytes, other sha256 (torch.load is never asked to read it here)
    assert datamodule(tmp_path / "imgs", cache, other).cache.resolve() != base

    # a changed input set is reported, with the fix
    write_folder(tmp_path / "imgs", 11)  # one image more
    n_train = 10 - len(expect_val)
    added = "train" if holdout_part("img_10", 0.3) == "train" else "val"
    before = n_train if added == "train" else len(expect_val)
    with pytest.raises(DataChangedError, match=f"inputs: {before} then, {before + 1} now") as err:
        datamodule(tmp_path / "imgs", cache, teacher_file).setup("fit")
    assert f"{base / added} was made from other inputs" in str(err.value) and f"Delete {base}" in str(err.value)


def test_the_holdout_split_is_stable_when_images_are_added(tmp_path):
    def keys(part: str) -> set[str]:
        refs, _ = list_inputs({"kind": "folder", "root": tmp_path / "a", "holdout": 0.25, "part": part})
        return {r.key for r in refs}

    write_folder(tmp_path / "a", 12, size=(40, 50))
    val_before = keys("val")
    write_folder(tmp_path / "a", 30, size=(40, 50))
    val_after, train_after = keys("val"), keys("train")
    assert val_before and val_before <= val_after and not (val_after & train_after)
    assert len(val_after | train_after) == 30 and 3 <= len(val_after) <= 14  # ~25% of 30
    with pytest.raises(ValueError, match="source.part='test'"):
        list_inputs({"kind": "folder", "root": tmp_path / "a", "holdout": 0.25, "part": "test"})


def test_the_source_kind_follows_the_annotations(tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "instances.json").write_text("{}")
    assert resolve_kind("auto", None) == "folder"
    assert resolve_kind("auto", tmp_path / "masks") == "masks"
    assert resolve_kind("auto", tmp_path / "instances.json") == "coco"
    with pytest.raises(FileNotFoundError, match="data.annotations=.*does not exist"):
        resolve_kind("auto", tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="needs data.annotations"):
        resolve_kind("coco", None)
    with pytest.raises(ValueError, match="data.val_root is not used"):
        CustomDataModule(images=tmp_path, val_root=tmp_path)
    with pytest.raises(ValueError, match="disagree"):
        CustomDataModule(images=tmp_path / "a", root=tmp_path / "b")
