"""Labelled datasets: COCO (polygons, compressed and uncompressed RLE) and both mask-folder layouts read to the
same masks, boxes and points; what cannot be used is skipped and listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.annotations import decode_masks, farthest_interior_point
from data.labels import LabelError, read_coco, read_labels, read_mask_folder
from data.synthetic_labels import labelled_samples, write_labelled_dataset


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict[str, Path]]:
    samples = labelled_samples(n_images=3, size=(96, 128), seed=0)
    return samples, write_labelled_dataset(tmp_path_factory.mktemp("labelled"), samples)


def test_every_format_reads_to_the_generated_masks(labelled) -> None:
    samples, paths = labelled
    sets = [
        read_coco(paths["images"], paths["coco"]),
        read_mask_folder(paths["images"], paths["objects"], layout="objects"),
        read_mask_folder(paths["images"], paths["labels"], layout="labels"),
        read_mask_folder(paths["images"], paths["labels"]),  # auto
    ]
    for ds in sets:
        assert ds.skipped == []
        assert [im.key for im in ds.images] == [s["key"] for s in samples]
        for im, s in zip(ds.images, samples):
            assert im.size == (96, 128) and im.path == paths["images"] / f"{s['key']}.jpg"
            anns = im.annotations
            assert len(anns) == len(s["masks"])  # the third image has none
            got = decode_masks(anns, range(len(anns)), im.size)
            for a, m, g in zip(anns, s["masks"], got):
                assert np.array_equal(g, m)  # polygons of pixel-edge corners are exact rectangles
                ys, xs = np.nonzero(m)
                assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert a["point_coords"] == [farthest_interior_point(m)]
                assert a["area"] == int(m.sum())
                x, y = a["point_coords"][0]
                assert m[int(y), int(x)]  # the point is inside its mask
                assert isinstance(a["segmentation"]["counts"], str)  # JSON-able, as in the shards
    assert sum(len(s["masks"]) for s in samples) == 7
    assert [a["category_id"] for a in sets[0].images[0].annotations] == [1] * 4


def test_read_labels_dispatches_and_names_what_is_missing(labelled) -> None:
    _, paths = labelled
    assert len(read_labels("coco", paths["images"], annotations=paths["coco"])) == 3
    assert len(read_labels("masks", paths["images"], masks=paths["labels"])) == 3
    with pytest.raises(LabelError, match="annotations=FILE.json"):
        read_labels("coco", paths["images"])
    with pytest.raises(LabelError, match="masks=DIR"):
        read_labels("masks", paths["images"])
    with pytest.raises(LabelError, match="'voc'"):
        read_labels("voc", paths["images"])
    with pytest.raises(LabelError, match="does not exist"):
        read_coco(paths["images"], paths["coco"].with_name("nope.json"))
    with pytest.raises(LabelError, match="layout"):
        read_mask_folder(paths["images"], paths["labels"], layout="stacked")


def test_coco_problems_are_skipped_and_listed(labelled, tmp_path: Path) -> None:
    _, paths = labelled
    doc = json.loads(paths["coco"].read_text())
    first = doc["annotations"][0]
    h, w = doc["images"][0]["height"], doc["images"][0]["width"]
    doc["images"].append({"id": 99, "file_name": "missing.jpg", "height": h, "width": w})
    doc["images"].append({"id": 98, "file_name": doc["images"][0]["file_name"], "height": h + 1, "width": w})
    bad = [
        first | {"id": 101, "iscrowd": 1},
        first | {"id": 102, "image_id": 12345},
        first | {"id": 103, "segmentation": [[1, 2, 3, 4]]},  # two points: not a polygon
        first | {"id": 104, "segmentation": {"size": [h + 1, w], "counts": first["segmentation"]["counts"]}},
        first | {"id": 105, "segmentation": {"size": [h, w], "counts": [h * w]}},  # empty
    ]
    doc["annotations"] += bad
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    ds = read_coco(paths["images"], path)
    reasons = [s["reason"] for s in ds.skipped]
    assert len(ds) == 3 and len(ds.skipped) == 7
    assert any("missing or unreadable" in r for r in reasons)
    assert any(f"the JSON says ({h + 1}, {w})" in r for r in reasons)
    assert any("crowd region" in r for r in reasons)
    assert any("image_id is not a usable image" in r for r in reasons)
    assert any("polygon needs" in r for r in reasons)
    assert any("differs from the image size" in r for r in reasons)
    assert any(r == "empty mask" for r in reasons)
    assert sum(len(im.annotations) for im in ds.images) == 7
    crowd = read_coco(paths["images"], path, include_crowd=True)
    assert len(crowd.skipped) == 6 and len(crowd.images[0].annotations) == 5
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(LabelError, match="'images' and 'annotations'"):
        read_coco(paths["images"], path)


def test_mask_folder_problems_are_skipped_and_listed(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "images" / "masks"  # masks inside images: not images
    (masks / "a").mkdir(parents=True)
    (masks / "sub").mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    for name in ("a", "b", "c", "sub/d"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(images / f"{name}.jpg")
    obj = np.zeros((20, 30), np.uint8)
    obj[2:6, 3:9] = 255
    Image.fromarray(obj).save(masks / "a" / "0.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "a" / "1.png")  # empty
    Image.fromarray(obj[:10]).save(masks / "a" / "2.png")  # wrong size
    label = np.zeros((20, 30), np.uint16)  # 16-bit label image; 255 is VOC's border value
    label[0:5, 0:5], label[10:15, 10:20], label[16:, :] = 300, 7, 255
    Image.fromarray(label).save(masks / "sub" / "d.png")
    Image.fromarray(obj).save(masks / "c.png")  # c: a label image ...
    (masks / "c").mkdir()
    Image.fromarray(obj).save(masks / "c" / "0.png")  # ... and an object folder: ambiguous under auto
    ds = read_mask_folder(images, masks, ignore_values=[255])
    assert [im.key for im in ds.images] == ["a", "b", "sub_d"]  # b: no masks, kept without annotations
    assert [len(im.annotations) for im in ds.images] == [1, 0, 2]
    reasons = sorted(s["reason"] for s in ds.skipped)
    assert len(reasons) == 3
    assert reasons[0].startswith("both") and "layout=objects or layout=labels" in reasons[0]
    assert reasons[1] == "empty mask" and "mask is (10, 30)" in reasons[2]
    d = ds.images[2].annotations
    assert [a["area"] for a in d] == [50, 25]  # value order: 7 then 300
    assert d[1]["bbox"] == [0.0, 0.0, 5.0, 5.0]
    assert len(read_mask_folder(images, masks).images[2].annotations) == 3  # 255 is an object unless ignored
    assert len(read_mask_folder(images, masks, layout="objects").images) == 4  # c's folder decides
