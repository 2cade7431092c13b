"""Reading SA-1B tars, extracted SA-1B folders and image folders, and skipping corrupt inputs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data.annotations import AnnotationError, decode_rle, parse_sa1b_json
from data.precompute import prepare
from data.sources import decode_image, list_folder, list_sa1b
from data.synthetic import make_image_folder, make_sa1b_tars
from mobilesam.io import load_image


def test_tars_and_extracted_folder_give_the_same_inputs(sa1b_tars: list[Path], tmp_path: Path) -> None:
    refs, skipped = list_sa1b(sa1b_tars[0].parent)
    assert skipped == []
    assert sorted(r.key for r in refs) == sorted(f"sa_{i}" for i in range(1, 13))
    for tar in sa1b_tars:
        with tarfile.open(tar) as tf:
            tf.extractall(tmp_path / "x", filter="data")
    flat, _ = list_sa1b(tmp_path / "x")
    assert [r.key for r in flat] == [r.key for r in refs]
    for a, b in zip(refs, flat):
        assert a.image.container and not b.image.container  # read in place from the tar, vs a plain file
        assert a.image.read() == b.image.read() and a.annotation.read() == b.annotation.read()


def test_sa1b_annotations_decode_lazily_to_the_generated_masks(sa1b_tars: list[Path]) -> None:
    refs, _ = list_sa1b(sa1b_tars[0])
    ref = refs[0]
    img = decode_image(ref.image.read(), "x")
    anns = parse_sa1b_json(ref.annotation.read(), img.shape[:2])
    raw = json.loads(ref.annotation.read())["annotations"]
    assert len(anns) == len(raw) >= 1
    for a, r in zip(anns, raw):
        m = decode_rle(a["segmentation"])
        assert m.shape == img.shape[:2] and int(m.sum()) == r["area"]
        x, y, w, h = r["bbox"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert a["point_coords"] == r["point_coords"]
        px, py = (int(v) for v in a["point_coords"][0])
        assert m[py, px] == 1  # the SA-1B point lies inside its mask


def test_image_folder_converts_by_the_io_rule_and_derives_prompts(tmp_path: Path) -> None:
    files = make_image_folder(tmp_path)
    refs, skipped = list_folder(tmp_path)
    assert skipped == [] and sorted(r.key for r in refs) == ["color", "gray", "rgb", "sub_deep", "sub_rgba"]
    for ref in refs:
        path = next(f for f in files if f.name.startswith(ref.key.split("_")[-1]))
        img = decode_image(ref.image.read(), ref.key)
        assert img.dtype == np.uint8 and img.shape == (80, 120, 3)
        assert np.array_equal(img, load_image(path))  # the one conversion rule of mobilesam.io
    deep = decode_image(next(r for r in refs if r.key == "sub_deep").image.read(), "deep")
    assert deep.min() == 0 and deep.max() == 255  # 16-bit stretched from its own min..max
    rgb = next(r for r in refs if r.key == "rgb")
    sample = prepare(rgb, 256, 95, need_annotations=False)
    anns = json.loads(sample["json"])["annotations"]
    assert anns and all(len(a["bbox"]) == 4 and a["point_coords"] for a in anns)
    for a in anns:  # derived point: inside the mask; derived box: the mask's tight box
        m = decode_rle(a["segmentation"])
        px, py = (int(v) for v in a["point_coords"][0])
        assert m[py, px] == 1
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def make_corrupt_tar(path: Path, good_tar: Path) -> None:
    """A copy of a good tar plus a corrupt JPEG, a bad JSON, a missing JSON, and a truncated last member."""
    with tarfile.open(good_tar) as src, tarfile.open(path, "w") as dst:
        members = [(m, src.extractfile(m).read()) for m in src]
        for m, data in members:
            dst.addfile(m, __import__("io").BytesIO(data))
        jpg, js = members[0][1], members[1][1]

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, __import__("io").BytesIO(data))

        add("sa_900.jpg", b"\xff\xd8 not really a jpeg")
        add("sa_900.json", js)
        add("sa_901.jpg", jpg)
        add("sa_901.json", b'{"annotations": [{"segmentation": ')
        add("sa_902.jpg", jpg)
        add("sa_903.jpg", jpg)
        add("sa_903.json", js)
    data = path.read_bytes()
    # cut inside the last member's data (and drop the end-of-archive blocks)
    path.write_bytes(data[: data.rfind(b"sa_903.json") + 512 + 100])


def test_corrupt_inputs_become_skip_records(sa1b_tars: list[Path], tmp_path: Path) -> None:
    make_corrupt_tar(tmp_path / "sa_000100.tar", sa1b_tars[0])
    refs, skipped = list_sa1b(tmp_path)
    reasons = {s["source"].split(":")[-1]: s["reason"] for s in skipped}
    assert "truncated" in reasons["sa_903.json"]
    assert "no annotation json" in reasons["sa_902.jpg"]
    by_key = {r.key: r for r in refs}
    with pytest.raises(ValueError, match="corrupt image"):
        prepare(by_key["sa_900"], 256, 95, True)
    with pytest.raises(AnnotationError, match="bad JSON"):
        prepare(by_key["sa_901"], 256, 95, True)
    assert prepare(by_key["sa_1"], 256, 95, True)["key"] == "sa_1"


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = make_sa1b_tars(tmp_path / "a", 1, 2, size=(40, 60), seed=3)[0].read_bytes()
    b = make_sa1b_tars(tmp_path / "b", 1, 2, size=(40, 60), seed=3)[0].read_bytes()
    c = make_sa1b_tars(tmp_path / "c", 1, 2, size=(40, 60), seed=4)[0].read_bytes()

    def payload(data: bytes) -> list[bytes]:  # member contents (tar headers hold mtimes)
        import io

        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            return [tf.extractfile(m).read() for m in tf]

    assert payload(a) == payload(b) != payload(c)
