"""ExecuTorch (XNNPACK) export: the .pte programs against the PyTorch model and their delegation (the predictor's
parity with the facade is in test_runtimes.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilesam.deploy import ExecuTorchPredictor, load_predictor
from mobilesam.deploy.executorch import HEAVY_OPS
from mobilesam.files import sha256_file
from mobilesam.transforms import resize_image
from tests.helpers import rel_err

pytest.importorskip("executorch.runtime", reason="executorch is not installed: pip install 'mobilesam[executorch]'")

IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256


@pytest.fixture(scope="module")
def exported(exported_small):
    """The 256 vit_t checkpoint exported with `--format executorch` (once per session, shared with test_runtimes.py,
    which checks the predictor against the facade)."""
    return exported_small("executorch")


def test_cli_writes_the_programs_and_the_sidecar_lists_their_sha256(exported):
    meta = json.loads((exported / "mobile_sam.json").read_text())
    pte = {"encoder.pte", "decoder.pte"}
    for name in pte:
        assert meta["files"][name] == sha256_file(exported / name), name
    et = meta["executorch"]
    assert set(et["files"]) == pte and et["max_points"] == 8 and et["int8"] is False
    assert "1x3xSxS float32" in et["encoder_input"] and "1x8x2" in et["decoder_inputs"]
    assert "123.675" in et["encoder_input"] and "58.395" in et["encoder_input"]  # SAM's mean and std, stated
    fp32 = et["check"]["encoder.pte + decoder.pte"]  # the export check's figures
    assert fp32["embedding_rel_error"] < 1e-4 and fp32["mask_agreement_min"] > 0.999


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


def test_programs_run_in_a_plain_executorch_runtime(exported, model):
    """No project code: ExecuTorch's own runtime loads both files and runs them, matching PyTorch."""
    from executorch.runtime import Runtime

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


def test_load_predictor_picks_the_runtime_by_suffix(exported, exported_small):
    from mobilesam.onnx import OnnxPredictor

    onnx_dir = exported_small("onnx")
    assert isinstance(load_predictor(exported / "encoder.pte", exported / "decoder.pte"), ExecuTorchPredictor)
    assert isinstance(load_predictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx"), OnnxPredictor)
    with pytest.raises(ValueError, match="both must end in one of"):
        load_predictor(onnx_dir / "encoder.onnx", exported / "decoder.pte")
    onnx = load_predictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx")
    (a,) = onnx.predict(IMG, points=[200, 120])
    (b,) = load_predictor(exported / "encoder.pte", exported / "decoder.pte").predict(IMG, points=[200, 120])
    assert (a.masks == b.masks).mean() >= 0.999
