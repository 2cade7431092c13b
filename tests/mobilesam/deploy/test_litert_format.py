"""LiteRT (.tflite) export: the files under LiteRT's own interpreter against PyTorch, what fp16 stores in half
precision and what it keeps in float32, and the predictor's refusals (its parity with the facade is in
test_runtimes.py, which shares these exports)."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from mobilesam import build_sam
from mobilesam.deploy import LiteRtPredictor, load_predictor
from mobilesam.deploy.formats import ExportOptions
from mobilesam.transforms import resize_image
from tests.helpers import assert_embeds_alike_and_fresh, rel_err

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is missing: pip install 'mobilesam[litert]'")
pytest.importorskip("litert_torch", reason="litert-torch is not installed: pip install 'mobilesam[litert]'")

IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256
# ops that must compute in float32 in the fp16 files: the layer norms' statistics, softmax, attention matmuls
FP32_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "BATCH_MATMUL", "GELU")
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


@pytest.fixture(scope="module")
def exported(exported_small):
    """`mobilesam export --format litert` of the 256 vit_t checkpoint, fp32 and fp16 (one export each per session,
    shared with test_runtimes.py)."""
    return {p: exported_small("litert", p) for p in ("fp32", "fp16")}


def _graph(path):
    """(op name, [input tensor types], [output tensor types], [input tensor indices]) per op, the tensors, and the
    flatbuffer (LiteRT's own schema, no project code)."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    (g,) = m.subgraphs
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    ops = [(codes[op.opcodeIndex], list(op.inputs), list(op.outputs)) for op in g.operators]
    return ops, g.tensors, m


def test_sidecar_describes_the_files_and_their_check(exported):
    for precision, out in exported.items():
        tag = "" if precision == "fp32" else "_fp16"
        meta = json.loads((out / "mobile_sam.json").read_text())["litert"]
        assert set(meta["files"]) == {f"encoder{tag}.tflite", f"decoder{tag}.tflite"}
        assert meta["max_points"] == 8 and meta["precision"] == precision
        assert "1x8x2" in meta["decoder_inputs"] and "1x3xSxS float32" in meta["encoder_input"]
        assert meta["signature_inputs"]["decoder"] == ["image_embeddings", "point_coords", "point_labels"]
        (check,) = meta["check"].values()
        limit = 1e-5 if precision == "fp32" else 2e-3  # measured 1.3e-6 and 6.5e-4
        assert check["embedding_rel_error"] < limit, check
        assert 0.95 < check["spread_ratio"] < 1.05 and check["mask_agreement_min"] >= 0.999, check
        assert (meta["fp16"] is None) == (precision == "fp32")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_files_run_in_a_plain_litert_interpreter(exported, model, precision):
    """No project code on the runtime side: LiteRT's interpreter runs both files through their named signature,
    matching PyTorch's encoder and mask decoder."""
    from ai_edge_litert.interpreter import Interpreter

    tag = "" if precision == "fp32" else "_fp16"
    enc = Interpreter(model_path=str(exported[precision] / f"encoder{tag}.tflite"), num_threads=1)
    dec = Interpreter(model_path=str(exported[precision] / f"decoder{tag}.tflite"), num_threads=1)
    assert enc.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["image_embeddings"]}}
    sig = dec.get_signature_list()["serving_default"]
    assert sorted(sig["inputs"]) == ["image_embeddings", "point_coords", "point_labels"]
    assert sorted(sig["outputs"]) == ["iou_predictions", "low_res_masks"]
    shapes = {k: tuple(v["shape"]) for k, v in dec.get_signature_runner().get_input_details().items()}
    assert shapes == {"image_embeddings": (1, 256, 16, 16), "point_coords": (1, 8, 2), "point_labels": (1, 8)}

    image = torch.from_numpy(np.asarray(resize_image(IMG, 256))).permute(2, 0, 1)[None]
    x = model.preprocess(image)
    emb = enc.get_signature_runner()(image=x.numpy())["image_embeddings"]
    coords = np.zeros((1, 8, 2), np.float32)
    coords[0, 0] = (120.0, 80.0)
    labels = np.full((1, 8), -1.0, np.float32)
    labels[0, 0] = 1.0
    out = dec.get_signature_runner()(image_embeddings=emb, point_coords=coords, point_labels=labels)
    assert out["low_res_masks"].shape == (1, 4, 64, 64) and out["iou_predictions"].shape == (1, 4)
    with torch.no_grad():
        ref_emb = model.image_encoder(x)
        pe = model.prompt_encoder
        pts = torch.from_numpy(coords[:, :1])
        sparse, dense = pe((pts, torch.ones(1, 1, dtype=torch.int)), None, None)  # SAM appends its padding point
        ref_masks, ref_iou = model.mask_decoder.predict_masks(ref_emb, pe.get_dense_pe(), sparse, dense)
    tol = 1e-4 if precision == "fp32" else 1e-2
    assert rel_err(torch.from_numpy(emb), ref_emb) < tol
    assert rel_err(torch.from_numpy(out["low_res_masks"]), ref_masks) < tol
    assert rel_err(torch.from_numpy(out["iou_predictions"]), ref_iou) < tol


def test_fp16_files_hold_half_precision_weights_and_compute_in_float32(exported):
    """fp16: every conv / linear weight is a float16 constant widened by a DEQUANTIZE; nothing else is float16, so
    layer norms, softmax and the attention matmuls run in float32. Both graphs' layer norms are weight-free MEAN /
    SQUARED_DIFFERENCE / RSQRT statistics (the decoder's are not XNNPACK's linear-layer form, which only the
    ExecuTorch writer uses). The fp32 files hold no float16 at all."""
    from ai_edge_litert.schema_py_generated import TensorType

    for role in ("encoder", "decoder"):
        ops16, tensors16, _ = _graph(exported["fp16"] / f"{role}_fp16.tflite")
        producer = {o: (name, ins) for name, ins, outs in ops16 for o in outs}
        weights = [ins[1] for name, ins, _ in ops16 if name in WEIGHT_OPS]
        # a weight is a float16 constant through a DEQUANTIZE, or an activation (the decoder's mask product)
        assert all(w in producer for w in weights), role  # no float32 constant weight is left
        widened = [w for w in weights if producer[w][0] == "DEQUANTIZE"]
        assert len(widened) >= (69 if role == "encoder" else 52), (role, len(widened))
        for w in widened:
            (src,) = producer[w][1]
            assert tensors16[w].type == TensorType.FLOAT32 and tensors16[src].type == TensorType.FLOAT16, (role, w)
        half = {i for i, t in enumerate(tensors16) if t.type == TensorType.FLOAT16}
        consumers = {name for name, ins, _ in ops16 for i in ins if i in half}
        assert len(half) >= len(set(widened)) // 2 and consumers == {"DEQUANTIZE"}, (role, consumers)  # only widened
        kinds = Counter(name for name, _, _ in ops16)
        for name, ins, outs in ops16:
            if name in FP32_OPS:
                types = {tensors16[i].type for i in [*ins, *outs] if i >= 0}  # MEAN's axes are INT32
                assert TensorType.FLOAT32 in types and TensorType.FLOAT16 not in types, (role, name)
        assert kinds["SOFTMAX"] > 0 and kinds["RSQRT"] > 0
        # LayerNorm stays weight-free float32 statistics (not linear layers with a 1/C vector): 22 in the encoder,
        # 10 in the decoder
        assert kinds["MEAN"] == 2 * kinds["SQUARED_DIFFERENCE"] > 0
        assert kinds["SQUARED_DIFFERENCE"] >= (22 if role == "encoder" else 10), (role, kinds)

        ops32, tensors32, _ = _graph(exported["fp32"] / f"{role}.tflite")
        assert {t.type for t in tensors32} <= {TensorType.FLOAT32, TensorType.INT32}
        assert "DEQUANTIZE" not in {name for name, _, _ in ops32}
        size16 = (exported["fp16"] / f"{role}_fp16.tflite").stat().st_size
        size32 = (exported["fp32"] / f"{role}.tflite").stat().st_size
        assert size16 < 0.65 * size32, (role, size16, size32)


def test_predictor_reads_sizes_from_the_files_and_honours_threads(exported):
    enc, dec = exported["fp32"] / "encoder.tflite", exported["fp32"] / "decoder.tflite"
    p = load_predictor(enc, dec)
    assert isinstance(p, LiteRtPredictor) and (p.img_size, p.max_points) == (256, 8)
    one = LiteRtPredictor(enc, dec, threads=1)
    assert_embeds_alike_and_fresh(p, one, IMG)


def test_predictor_refuses_files_of_another_img_size_or_role(exported, tmp_path):
    from mobilesam.deploy.interface import DECODER_INPUTS
    from mobilesam.deploy.litert import _NamedDecoder, convert
    from mobilesam.deploy.static_decoder import StaticDecoder

    enc, dec = exported["fp32"] / "encoder.tflite", exported["fp32"] / "decoder.tflite"
    torch.manual_seed(0)
    other = StaticDecoder(build_sam("vit_t", img_size=320).eval(), 8)  # 20 x 20 embeddings
    args = (torch.randn(1, 256, 20, 20), torch.zeros(1, 8, 2), torch.full((1, 8), -1.0))
    (tmp_path / "decoder.tflite").write_bytes(convert(_NamedDecoder(other), dict(zip(DECODER_INPUTS, args))))
    with pytest.raises(ValueError, match=r"img_size=256 but .* img_size=320; use the two files of one export"):
        LiteRtPredictor(enc, tmp_path / "decoder.tflite")
    with pytest.raises(ValueError, match="is the encoder of an export, not its decoder"):
        LiteRtPredictor(enc, enc)
    with pytest.raises(FileNotFoundError, match="mobilesam export CHECKPOINT --out DIR --format litert"):
        LiteRtPredictor(tmp_path / "missing.tflite", dec)


def test_missing_packages_name_the_extra(exported, monkeypatch):
    from mobilesam.deploy import litert

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[litert\]'"):
        LiteRtPredictor(exported["fp32"] / "encoder.tflite", exported["fp32"] / "decoder.tflite")
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[litert\]'"):
        litert.require()


def test_writer_refuses_int8(model, tmp_path):
    from mobilesam.deploy import litert

    with pytest.raises(ValueError, match="no int8"):
        litert.write(model, tmp_path, ExportOptions(quantize=True))
    assert not list(tmp_path.iterdir())
