"""OpenVINO IR export: the files under OpenVINO's own API against PyTorch, what fp16 stores in half precision and
what it keeps in f32, the inference precision the predictor picks, and its refusals (its parity with the facade is
in test_runtimes.py, which shares these exports). About 35 s on 2 cores, most of it the two exports."""

from __future__ import annotations

import json
import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest
import torch

from mobilesam import build_sam
from mobilesam.deploy import OpenVinoPredictor, load_predictor
from mobilesam.deploy.formats import ExportOptions
from mobilesam.files import sha256_file
from mobilesam.transforms import resize_image
from tests.helpers import assert_embeds_alike_and_fresh, rel_err

ov = pytest.importorskip("openvino", reason="openvino is missing: pip install 'mobilesam[openvino]'")
# OpenVINO's own API on the process's one Core (see `mobilesam.deploy.ov_runtime.core`: a Core of its own per test
# would leave the thread on an unmapped signal stack, and the next caught signal kills the test run)
from mobilesam.deploy.ov_runtime import core as ov_core  # noqa: E402

IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256
TAG = {"fp32": "", "fp16": "_fp16"}
F32_OPS = ("MVN", "Softmax")  # CPU-plugin layer types that must run in f32 in the fp16 files


@pytest.fixture(scope="module")
def exported(exported_small):
    """`mobilesam export --format openvino` of the 256 vit_t checkpoint, fp32 and fp16 (one export each per
    session, shared with test_runtimes.py)."""
    return {p: exported_small("openvino", p) for p in ("fp32", "fp16")}


def _files(exported, precision):
    out, tag = exported[precision], TAG[precision]
    return out / f"encoder{tag}.xml", out / f"decoder{tag}.xml"


def _cpu_f16() -> bool:
    return "FP16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _runtime_precisions(compiled) -> Counter:
    """(layer type, runtime precision) -> count in the CPU plugin's execution graph."""
    return Counter(
        (op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ordered_ops()
    )


def test_sidecar_describes_the_files_and_their_check(exported):
    for precision, out in exported.items():
        tag = TAG[precision]
        meta = json.loads((out / "mobile_sam.json").read_text())["openvino"]
        assert set(meta["files"]) == {f"encoder{tag}.xml", f"decoder{tag}.xml"}
        assert set(meta["weight_files"]) == {f"encoder{tag}.bin", f"decoder{tag}.bin"}
        everything = json.loads((out / "mobile_sam.json").read_text())["files"]
        for name, digest in meta["weight_files"].items():
            assert sha256_file(out / name) == digest == everything[name]
        assert meta["max_points"] == 8 and meta["precision"] == precision
        assert "1x8x2" in meta["decoder_inputs"] and "Bx3xSxS float32" in meta["encoder_input"]
        assert meta["encoder_batch"] == "any"
        assert meta["input_names"]["decoder"] == ["image_embeddings", "point_coords", "point_labels"]
        (check,) = meta["check"].values()
        limit = 1e-5 if precision == "fp32" else 5e-3  # measured 1.3e-6 and 1.3e-3
        assert check["embedding_rel_error"] < limit, check
        assert 0.95 < check["spread_ratio"] < 1.05 and check["mask_agreement_min"] >= 0.999, check
        assert (meta["fp16"] is None) == (precision == "fp32")
        if precision == "fp16":
            assert meta["fp32_nodes"]["encoder"] == {"MVN": 22, "ScaledDotProductAttention": 10}
            # the factored static decoder: 4 attentions OpenVINO fuses into SDPA, 3 bare softmaxes
            assert meta["fp32_nodes"]["decoder"] == {"MVN": 10, "ScaledDotProductAttention": 4, "SoftMax": 3}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_files_run_in_plain_openvino(exported, model, precision):
    """No project code on the runtime side: OpenVINO reads and runs both files by their tensor names, matching
    PyTorch's encoder and mask decoder; img_size, max_points and precision are in the rt_info."""
    enc_path, dec_path = _files(exported, precision)
    core = ov_core()
    enc, dec = core.read_model(enc_path), core.read_model(dec_path)
    assert [p.get_names() for p in enc.inputs] == [{"image"}] and enc.outputs[0].get_names() == {"image_embeddings"}
    assert str(enc.inputs[0].get_partial_shape()) == "[?,3,256,256]"  # any batch of images
    shapes = {next(iter(p.get_names())): tuple(p.get_partial_shape().to_shape()) for p in dec.inputs}
    assert shapes == {"image_embeddings": (1, 256, 16, 16), "point_coords": (1, 8, 2), "point_labels": (1, 8)}
    assert [p.get_names() for p in dec.outputs] == [{"low_res_masks"}, {"iou_predictions"}]
    for m, role in ((enc, "encoder"), (dec, "decoder")):
        rt = {k: m.get_rt_info(["mobilesam", k]).astype(str) for k in ("role", "img_size", "max_points", "precision")}
        assert rt == {"role": role, "img_size": "256", "max_points": "8", "precision": precision}
        assert m.get_rt_info(["mobilesam", "variant"]).astype(str) == "vit_t"

    hint = "f32" if precision == "fp32" or not _cpu_f16() else "f16"
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": 2}
    enc_c, dec_c = core.compile_model(enc, "CPU", config), core.compile_model(dec, "CPU", config)
    image = torch.from_numpy(np.asarray(resize_image(IMG, 256))).permute(2, 0, 1)[None]
    x = model.preprocess(image)
    emb = enc_c({"image": x.numpy()})["image_embeddings"]
    coords = np.zeros((1, 8, 2), np.float32)
    coords[0, 0] = (120.0, 80.0)
    labels = np.full((1, 8), -1.0, np.float32)
    labels[0, 0] = 1.0
    out = dec_c({"image_embeddings": emb, "point_coords": coords, "point_labels": labels})
    assert out["low_res_masks"].shape == (1, 4, 64, 64) and out["iou_predictions"].shape == (1, 4)
    with torch.no_grad():
        ref_emb = model.image_encoder(x)
        pe = model.prompt_encoder
        sparse, dense = pe((torch.from_numpy(coords[:, :1]), torch.ones(1, 1, dtype=torch.int)), None, None)
        ref_masks, ref_iou = model.mask_decoder.predict_masks(ref_emb, pe.get_dense_pe(), sparse, dense)
    tol = 1e-4 if precision == "fp32" else 2e-2
    assert rel_err(torch.from_numpy(emb), ref_emb) < tol
    # two images in one call: each as it is alone
    pair = enc_c({"image": torch.cat([x, x.flip(-1)]).numpy()})["image_embeddings"]
    assert pair.shape == (2, 256, 16, 16)
    assert rel_err(torch.from_numpy(pair[:1]), torch.from_numpy(emb)) < tol / 10
    with torch.no_grad():
        assert rel_err(torch.from_numpy(pair[1:]), model.image_encoder(x.flip(-1))) < tol
    assert rel_err(torch.from_numpy(out["low_res_masks"]), ref_masks) < tol
    assert rel_err(torch.from_numpy(out["iou_predictions"]), ref_iou) < tol


def test_fp16_files_hold_half_precision_weights_and_keep_norms_and_softmax_f32(exported):
    """fp16: every convolution / matmul weight is an f16 constant (widened by a decompression Convert), the fp32
    files hold no f16 at all, and LayerNorm (MVN) and attention (SDPA) carry the `precise` attribute, under which
    the CPU plugin runs them (and the softmax inside) in f32 while the linear layers compute in f16."""
    core = ov_core()
    for role in ("encoder", "decoder"):
        m16 = core.read_model(exported["fp16"] / f"{role}_fp16.xml")
        weights = [
            op.input_value(1).get_node()
            for op in m16.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
        ]
        constant = [w for w in weights if w.get_type_name() == "Convert"]
        # every weight is widened from f16; the decoder's 7 other matmuls multiply two activations (the masks, and
        # the factored attentions' products with the image tokens)
        assert (len(constant), len(weights)) == ((69, 69) if role == "encoder" else (54, 61)), role
        for w in constant:
            src = w.input_value(0).get_node()
            assert src.get_type_name() == "Constant" and src.get_output_element_type(0) == ov.Type.f16, role
            assert "decompression_0" in w.get_rt_info().keys()
        f32 = [
            op
            for op in m16.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f32
        ]
        assert all(int(np.prod(op.get_shape())) == 1 for op in f32), role  # only scalars (SDPA's scale) stay f32
        kinds = Counter(op.get_type_name() for op in m16.get_ordered_ops())
        assert kinds["MVN"] > 0 and kinds["ScaledDotProductAttention"] > 0

        root = ET.parse(exported["fp16"] / f"{role}_fp16.xml").getroot()
        precise = Counter(
            layer.get("type")
            for layer in root.iter("layer")
            if any(a.get("name") == "precise" for a in layer.iter("attribute"))
        )
        # and the bare softmaxes of the decoder's factored attentions ("Softmax" in the API, "SoftMax" in the IR)
        kept = {"MVN": kinds["MVN"], "ScaledDotProductAttention": kinds["ScaledDotProductAttention"]}
        assert precise == {**kept, **({"SoftMax": kinds["Softmax"]} if kinds["Softmax"] else {})}

        m32 = core.read_model(exported["fp32"] / f"{role}.xml")
        types = {op.get_output_element_type(0) for op in m32.get_ordered_ops() if op.get_type_name() == "Constant"}
        assert ov.Type.f16 not in types and ov.Type.f32 in types
        size16 = (exported["fp16"] / f"{role}_fp16.bin").stat().st_size
        size32 = (exported["fp32"] / f"{role}.bin").stat().st_size
        assert size16 < 0.55 * size32, (role, size16, size32)

        if _cpu_f16():
            compiled = core.compile_model(m16, "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
            ran = _runtime_precisions(compiled)
            assert ran[("FullyConnected", "f16")] > 0, ran
            for kind in F32_OPS:
                assert ran[(kind, "f32")] > 0 and ran[(kind, "f16")] == 0, (role, kind, ran)


def test_predictor_picks_the_inference_precision_and_honours_threads(exported):
    """fp32 files run in f32 (not the plugin's bf16 default on AMX CPUs); fp16 files in f16 where the CPU has it,
    f32 elsewhere (never the plugin's bf16 fallback)."""
    enc, dec = _files(exported, "fp32")
    p = load_predictor(enc, dec)
    assert isinstance(p, OpenVinoPredictor) and (p.img_size, p.max_points) == (256, 8)
    assert (p.precision, p.inference_precision) == ("fp32", "f32")
    half = OpenVinoPredictor(*_files(exported, "fp16"))
    assert half.precision == "fp16" and half.inference_precision == ("f16" if _cpu_f16() else "f32")

    one = OpenVinoPredictor(enc, dec, threads=1)
    assert one._encoder.get_property("INFERENCE_NUM_THREADS") == 1
    assert_embeds_alike_and_fresh(p, one, IMG)


def test_predictor_refuses_files_of_another_img_size_role_or_export(exported, tmp_path):
    from mobilesam.deploy.interface import DECODER_INPUTS, DECODER_OUTPUTS
    from mobilesam.deploy.openvino import convert, save
    from mobilesam.deploy.static_decoder import StaticDecoder

    enc, dec = _files(exported, "fp32")
    torch.manual_seed(0)
    other = StaticDecoder(build_sam("vit_t", img_size=320).eval(), 8)  # 20 x 20 embeddings
    args = (torch.randn(1, 256, 20, 20), torch.zeros(1, 8, 2), torch.full((1, 8), -1.0))
    meta = {"role": "decoder", "img_size": 320, "max_points": 8}
    save(convert(other, args, DECODER_INPUTS, DECODER_OUTPUTS), tmp_path / "decoder.xml", "fp32", meta)
    with pytest.raises(ValueError, match=r"img_size=256 but .* img_size=320; use the two files of one export"):
        OpenVinoPredictor(enc, tmp_path / "decoder.xml")
    with pytest.raises(ValueError, match="is the encoder of an export, not its decoder"):
        OpenVinoPredictor(enc, enc)
    with pytest.raises(ValueError, match="precision=fp32 but .* precision=fp16"):
        OpenVinoPredictor(enc, _files(exported, "fp16")[1])
    graph = ov_core().read_model(dec)
    plain = ov.Model(graph.outputs, graph.get_parameters(), "plain")  # the same graph, no `mobilesam` rt_info
    assert not plain.has_rt_info(["mobilesam", "role"])
    ov.save_model(plain, tmp_path / "plain.xml", compress_to_fp16=False)
    with pytest.raises(ValueError, match="not written by `mobilesam export --format openvino`"):
        OpenVinoPredictor(enc, tmp_path / "plain.xml")
    with pytest.raises(FileNotFoundError, match="mobilesam export CHECKPOINT --out DIR --format openvino"):
        OpenVinoPredictor(tmp_path / "missing.xml", dec)
    shutil.copy(enc, tmp_path / "encoder.xml")  # the .xml without its .bin
    with pytest.raises(FileNotFoundError, match=r"encoder\.bin does not exist"):
        OpenVinoPredictor(tmp_path / "encoder.xml", dec)


def test_predictors_made_and_dropped_in_any_order_leave_signals_working(exported):
    """Two predictors released in the order they were made, then a signal caught by a Python handler (what a
    subprocess's SIGCHLD is once PyTorch's DataLoader has set its handler). With a Core per predictor, OpenVINO's
    CPU plugin left the thread on the first plugin's unmapped signal stack and this process died of SIGSEGV (the
    crash that stopped the test suite); it must print ok."""
    import subprocess

    enc, dec = _files(exported, "fp32")
    code = (
        "import gc, os, signal\n"
        "from mobilesam.deploy import OpenVinoPredictor\n"
        f"a = OpenVinoPredictor({str(enc)!r}, {str(dec)!r})\n"
        f"b = OpenVinoPredictor({str(enc)!r}, {str(dec)!r})\n"
        "del a; gc.collect(); del b; gc.collect()\n"
        "signal.signal(signal.SIGUSR1, lambda *_: None)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])


def test_missing_packages_name_the_extra(exported, monkeypatch):
    from mobilesam.deploy import openvino as writer

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[openvino\]'"):
        OpenVinoPredictor(*_files(exported, "fp32"))
    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[openvino\]'"):
        writer.require()


def test_writer_refuses_int8(model, tmp_path):
    from mobilesam.deploy import openvino as writer

    with pytest.raises(ValueError, match="no int8"):
        writer.write(model, tmp_path, ExportOptions(quantize=True))
    assert not list(tmp_path.iterdir())
