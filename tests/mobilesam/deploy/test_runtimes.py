"""Every runtime predictor against the PyTorch facade on the same weights: the prompts SAM takes, bad input, the
static decoder's point limit. One export per format and precision (the session's `exported_small`); a runtime that
is not installed skips its cases."""

from __future__ import annotations

import numpy as np
import pytest

from mobilesam import SAM
from mobilesam.deploy import load_predictor
from mobilesam.deploy.formats import FORMATS, file_name
from mobilesam.io import ImageReadError
from mobilesam.prompts import PromptError

IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256

# (format, precision): the exports whose runtime runs here, each shared with its format's own test module
CASES = [
    ("executorch", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("litert", "fp32"),
    ("litert", "fp16"),
    ("onnx", "fp16"),
]
# (smallest mask pixel agreement, largest IoU difference) against PyTorch
TOLERANCE = {"fp32": (0.999, 1e-3), "fp16": (0.99, 2e-2), "int8": (0.93, 0.1)}
EMBEDDING = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}  # largest relative error of the embedding
BOXES = {"fp32": 2, "fp16": 8, "int8": 40}  # largest mask-box corner difference in pixels


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{p}" for f, p in CASES])
def case(request, exported_small):
    name, precision = request.param
    out = exported_small(name, precision)  # int8 files come with the fp32 export under --quantize
    suffix = FORMATS[name].suffix
    enc, dec = (out / file_name(role, suffix, precision) for role in ("encoder", "decoder"))
    return name, precision, load_predictor(enc, dec)


@pytest.fixture(scope="module")
def facade(small_checkpoint):
    return SAM(small_checkpoint, device="cpu")


# Prompts in the original image's pixels (300 x 410), as the facade takes them
PROMPTS = {
    "point": {"points": [200, 120], "labels": [1]},
    "multi_point": {"points": [[[200, 120], [50, 250], [350, 40], [100, 100]]], "labels": [[1, 0, 1, 0]]},
    "box": {"bboxes": [60, 50, 330, 280]},
    "box_and_point": {"points": [[[200, 120]]], "labels": [[0]], "bboxes": [[60, 50, 330, 280]]},
    "several_objects": {"points": [[200, 120], [50, 250], [350, 40]], "labels": [1, 1, 0]},
    "all_slots": {"points": [[[10 + 40 * i, 20 + 30 * i] for i in range(6)]], "bboxes": [[5, 5, 300, 200]]},
}


def _assert_matches(ours, ref, precision):
    agreement, iou_tol = TOLERANCE[precision]
    assert ours.masks.shape == tuple(ref.masks.shape) and ours.masks.dtype == np.bool_
    assert (ours.masks == ref.masks.numpy()).mean() >= agreement
    np.testing.assert_allclose(ours.scores, ref.scores.numpy(), atol=iou_tol)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches_the_facade(case, facade, name):
    _, precision, predictor = case
    (ours,) = predictor.predict(IMG, **PROMPTS[name])
    (ref,) = facade.predict(IMG, **PROMPTS[name])
    _assert_matches(ours, ref, precision)
    np.testing.assert_allclose(ours.boxes, ref.boxes.numpy(), atol=BOXES[precision])


def test_multimask_output_matches_the_facade(case, facade):
    _, precision, predictor = case
    prompts = PROMPTS["several_objects"]
    (ours,) = predictor.predict(IMG, multimask_output=True, **prompts)
    (ref,) = facade.predict(IMG, multimask_output=True, **prompts)
    assert len(ours) == 9
    _assert_matches(ours, ref, precision)


def test_embedding_matches_the_facade(case, facade):
    _, precision, predictor = case
    emb = predictor.embed(IMG)
    facade.predictor.set_image(IMG)
    ref = facade.predictor.features.numpy()
    assert emb.features.shape == ref.shape == (1, 256, 16, 16)
    assert emb.input_size == (187, 256) and emb.original_size == (300, 410)
    error = np.linalg.norm(emb.features - ref) / np.linalg.norm(ref)
    assert error < EMBEDDING[precision]


def test_a_batch_of_images_gives_what_one_at_a_time_gives(case):
    """`predict(images, batch_size=2)`: images of three sizes through the encoder two at a time (OpenVINO in one
    inference; the static-shape files of the other runtimes one by one), the same embeddings and masks."""
    name, precision, predictor = case
    images = [IMG, IMG[::-1, ::-1].copy(), IMG[:200, :150].copy()]
    alone = [predictor.embed(im) for im in images]
    together = predictor.embed_images(images)
    for a, b in zip(alone, together, strict=True):
        assert b.features.shape == a.features.shape == (1, 256, 16, 16)
        assert (b.original_size, b.input_size) == (a.original_size, a.input_size)
        assert np.linalg.norm(b.features - a.features) / np.linalg.norm(a.features) < EMBEDDING[precision] / 10
    prompts = {"points": [[100, 80], [120, 40]], "labels": [1, 1]}
    batched = predictor.predict(images, batch_size=2, **prompts)
    single = predictor.predict(images, **prompts)
    assert len(batched) == len(single) == 3
    for a, b in zip(single, batched, strict=True):
        assert b.masks.shape == a.masks.shape and (b.masks == a.masks).mean() >= TOLERANCE[precision][0]
        np.testing.assert_allclose(b.scores, a.scores, atol=TOLERANCE[precision][1])
    if name == "openvino":  # today's OpenVINO encoder takes the batch in one inference
        assert predictor.batched
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive int"):
        predictor.predict(images, batch_size=0, **prompts)


def _error(fn):
    try:
        fn()
    except (PromptError, ImageReadError) as e:
        return type(e), str(e)
    raise AssertionError("no error raised")


BAD = {
    "wrong_shape": (np.zeros((300, 410, 7), np.uint8), {"points": [10, 10]}),
    "empty": (np.zeros((0, 410, 3), np.uint8), {"points": [10, 10]}),
    "point_outside": (IMG, {"points": [500, 10]}),
    "box_outside": (IMG, {"bboxes": [10, 10, 420, 200]}),
    "labels_mismatch": (IMG, {"points": [[1, 2], [3, 4]], "labels": [1]}),
    "no_prompt": (IMG, {}),
}


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_input_gets_the_facades_error(case, facade, bad):
    image, prompts = BAD[bad]
    if bad == "no_prompt":  # the facade segments everything; the deployed predictors refuse
        with pytest.raises(PromptError, match="pass points or bboxes"):
            case[2].predict(image, **prompts)
        return
    assert _error(lambda: case[2].predict(image, **prompts)) == _error(lambda: facade.predict(image, **prompts))


@pytest.mark.parametrize("kind", ["grayscale", "rgba"])
def test_grayscale_and_rgba_are_read_as_the_facade_reads_them(case, facade, kind):
    image = IMG[..., 0] if kind == "grayscale" else np.dstack([IMG, np.full(IMG.shape[:2], 7, np.uint8)])
    (ours,) = case[2].predict(image, points=[200, 120])
    (ref,) = facade.predict(image, points=[200, 120])
    assert (ours.orig_img == ref.orig_img).all()
    _assert_matches(ours, ref, case[1])


def test_too_many_points_names_the_limit_and_the_option(case):
    name, _, predictor = case
    if name == "onnx":
        pytest.skip("the ONNX decoder takes any number of points")
    with pytest.raises(PromptError, match=r"needs 9 decoder points .* holds 8; export again with `--max-points 9`"):
        predictor.predict(IMG, points=[[[10 + 5 * i, 20] for i in range(7)]], bboxes=[[5, 5, 300, 200]])


def test_the_sidecar_records_the_check_and_every_file(case, exported_small):
    """`mobilesam export` kept the files because they passed the guard: its figures are in the sidecar."""
    import json

    from mobilesam.files import sha256_path

    name, precision, _ = case
    out = exported_small(name, precision)
    entry = json.loads((out / "mobile_sam.json").read_text())[name]
    assert entry["precision"] == ("fp32" if precision == "int8" else precision)
    for file, digest in entry["files"].items():
        assert sha256_path(out / file) == digest
    suffix = FORMATS[name].suffix
    figures = entry["check"][" + ".join(file_name(role, suffix, precision) for role in ("encoder", "decoder"))]
    assert figures["spread_ratio"] > 0.5 and figures["mask_agreement_min"] >= TOLERANCE[precision][0]
    assert not list(out.glob(f".{name}.*")), "the staging folder was left behind"
