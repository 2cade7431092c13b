"""ExecuTorch (XNNPACK) export: the .pte programs against the PyTorch model, their delegation, the predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilesam import SAM, build_sam
from mobilesam.cli import main
from mobilesam.deploy import ExecuTorchPredictor, load_predictor
from mobilesam.deploy.executorch import HEAVY_OPS
from mobilesam.files import sha256_file
from mobilesam.io import ImageReadError
from mobilesam.prompts import PromptError
from mobilesam.transforms import resize_image
from tests.helpers import rel_err

pytest.importorskip("executorch.runtime", reason="executorch is not installed: pip install 'mobilesam[executorch]'")
pytest.importorskip("onnxruntime", reason="the CLI test writes ONNX too: pip install 'mobilesam[onnx]'")

IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256


@pytest.fixture(scope="module")
def exported(small_checkpoint, tmp_path_factory):
    """The 256 vit_t checkpoint exported once with `--format onnx,executorch` (the only export of this module)."""
    out = tmp_path_factory.mktemp("pte")
    assert main(["export", str(small_checkpoint), "--out", str(out), "--format", "onnx,executorch"]) == 0
    return out


@pytest.fixture(scope="module")
def predictor(exported):
    return ExecuTorchPredictor(exported / "encoder.pte", exported / "decoder.pte")


@pytest.fixture(scope="module")
def facade(small_checkpoint):
    return SAM(small_checkpoint, device="cpu")


def test_cli_writes_both_formats_and_the_sidecar_lists_their_sha256(exported):
    meta = json.loads((exported / "mobile_sam.json").read_text())
    for name in ("encoder.onnx", "decoder.onnx", "encoder.pte", "decoder.pte"):
        assert meta["files"][name] == sha256_file(exported / name), name
    et = meta["executorch"]
    assert set(et["files"]) == {"encoder.pte", "decoder.pte"} and et["max_points"] == 8
    assert "1x3xSxS float32" in et["encoder_input"] and "1x8x2" in et["decoder_inputs"]
    assert set(meta["onnx"]["files"]) == {"encoder.onnx", "decoder.onnx"}


def test_every_heavy_op_runs_in_xnnpack(exported):
    """The export's delegation report: one XNNPACK delegate per program and no conv/linear/matmul/norm/softmax
    left to portable kernels."""
    delegation = json.loads((exported / "mobile_sam.json").read_text())["executorch"]["delegation"]
    for name in ("encoder.pte", "decoder.pte"):
        report = delegation[name]
        assert report["delegated_subgraphs"] == 1, (name, report)
        assert report["delegated_nodes"] > 300, (name, report)
        heavy = {op: n for op, n in report["portable_ops"].items() if any(h in op for h in HEAVY_OPS)}
        assert heavy == {}, (name, heavy)
        assert report["portable_nodes"] <= 3, (name, report)  # the outputs' getitems and a layout copy at most


def test_programs_run_in_a_plain_executorch_runtime(exported, small_checkpoint):
    """No project code: ExecuTorch's own runtime loads both files and runs them, matching PyTorch."""
    from executorch.runtime import Runtime

    model = build_sam("vit_t", small_checkpoint)
    rt = Runtime.get()
    enc = rt.load_program(exported / "encoder.pte")
    dec = rt.load_program(exported / "decoder.pte")
    assert int(enc.load_method("img_size").execute([])[0]) == 256
    assert int(dec.load_method("max_points").execute([])[0]) == 8
    image = torch.from_numpy(np.asarray(resize_image(IMG, 256))).permute(2, 0, 1)[None]
    x = model.preprocess(image)
    (emb,) = enc.load_method("forward").execute([x])
    assert emb.shape == (1, 256, 16, 16)
    coords = torch.zeros(1, 8, 2)
    coords[0, :2] = torch.tensor([[120.0, 80.0], [0.0, 0.0]])
    labels = torch.full((1, 8), -1.0)
    labels[0, 0] = 1.0
    low_res, iou = dec.load_method("forward").execute([emb, coords, labels])
    assert low_res.shape == (1, 4, 64, 64) and iou.shape == (1, 4)
    with torch.no_grad():
        ref_emb = model.image_encoder(x)
        pe = model.prompt_encoder
        sparse, dense = pe((coords[:, :1], labels[:, :1].int()), None, None)
        ref_masks, ref_iou = model.mask_decoder.predict_masks(ref_emb, pe.get_dense_pe(), sparse, dense)
    assert rel_err(emb, ref_emb) < 1e-3
    assert rel_err(low_res, ref_masks) < 1e-3 and rel_err(iou, ref_iou) < 1e-3


def test_embedding_matches_pytorch(predictor, small_checkpoint):
    model = build_sam("vit_t", small_checkpoint)
    emb = predictor.embed(IMG)
    resized = torch.from_numpy(np.asarray(resize_image(IMG, 256))).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = model.image_encoder(model.preprocess(resized))
    assert emb.input_size == (187, 256) and emb.original_size == (300, 410)
    assert rel_err(torch.from_numpy(emb.features), ref) < 1e-3


# Prompts in the original image's pixels (300 x 410), as the facade takes them
PROMPTS = {
    "point": {"points": [200, 120], "labels": [1]},
    "multi_point": {"points": [[[200, 120], [50, 250], [350, 40], [100, 100]]], "labels": [[1, 0, 1, 0]]},
    "box": {"bboxes": [60, 50, 330, 280]},
    "box_and_point": {"points": [[[200, 120]]], "labels": [[0]], "bboxes": [[60, 50, 330, 280]]},
    "several_objects": {"points": [[200, 120], [50, 250], [350, 40]], "labels": [1, 1, 0]},
}


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_matches_the_facade(predictor, facade, name, multimask):
    if multimask and name not in ("point", "several_objects"):
        pytest.skip("multimask output is checked on single-point prompts (SAM's use)")
    (ours,) = predictor.predict(IMG, multimask_output=multimask, **PROMPTS[name])
    (ref,) = facade.predict(IMG, multimask_output=multimask, **PROMPTS[name])
    assert ours.masks.shape == tuple(ref.masks.shape) and ours.masks.dtype == np.bool_
    assert (ours.masks == ref.masks.numpy()).mean() >= 0.999
    np.testing.assert_allclose(ours.scores, ref.scores.numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.boxes, ref.boxes.numpy(), atol=2)


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
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_the_facades_error(predictor, facade, name):
    image, prompts = BAD[name]
    assert _error(lambda: predictor.predict(image, **prompts)) == _error(lambda: facade.predict(image, **prompts))


@pytest.mark.parametrize("kind", ["grayscale", "rgba"])
def test_grayscale_and_rgba_are_read_as_the_facade_reads_them(predictor, facade, kind):
    image = IMG[..., 0] if kind == "grayscale" else np.dstack([IMG, np.full(IMG.shape[:2], 7, np.uint8)])
    (ours,) = predictor.predict(image, points=[200, 120])
    (ref,) = facade.predict(image, points=[200, 120])
    assert (ours.orig_img == ref.orig_img).all()
    assert (ours.masks == ref.masks.numpy()).mean() >= 0.999


def test_too_many_points_names_the_limit_and_the_option(predictor):
    with pytest.raises(PromptError, match=r"needs 9 decoder points .* holds 8; export again with `--max-points 9`"):
        predictor.predict(IMG, points=[[[10 + 5 * i, 20] for i in range(7)]], bboxes=[[5, 5, 300, 200]])


def test_a_prompt_filling_every_slot_matches_the_facade(predictor, facade):
    """6 points and a box take all 8 slots (no padding), 2 points leave 6 padding slots: both as PyTorch."""
    for prompts in (
        {"points": [[[10 + 40 * i, 20 + 30 * i] for i in range(6)]], "bboxes": [[5, 5, 300, 200]]},
        {"points": [[[10, 20], [200, 150]]], "labels": [[1, 0]]},
    ):
        (ours,) = predictor.predict(IMG, **prompts)
        (ref,) = facade.predict(IMG, **prompts)
        assert (ours.masks == ref.masks.numpy()).mean() >= 0.999
        np.testing.assert_allclose(ours.scores, ref.scores.numpy(), atol=1e-3)


def test_load_predictor_picks_the_runtime_by_suffix(exported):
    from mobilesam.onnx import OnnxPredictor

    assert isinstance(load_predictor(exported / "encoder.pte", exported / "decoder.pte"), ExecuTorchPredictor)
    assert isinstance(load_predictor(exported / "encoder.onnx", exported / "decoder.onnx"), OnnxPredictor)
    with pytest.raises(ValueError, match="both must end in one of"):
        load_predictor(exported / "encoder.onnx", exported / "decoder.pte")
    onnx = load_predictor(exported / "encoder.onnx", exported / "decoder.onnx")
    (a,) = onnx.predict(IMG, points=[200, 120])
    (b,) = load_predictor(exported / "encoder.pte", exported / "decoder.pte").predict(IMG, points=[200, 120])
    assert (a.masks == b.masks).mean() >= 0.999
