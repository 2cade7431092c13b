"""Core ML (.mlpackage) export: the packages' interface, metadata and fp16 op placement read back with coremltools'
own API, their ML programs against PyTorch through an op-by-op PyTorch emulation (Core ML itself runs on macOS
only), and the predictor's refusals. Off macOS nothing runs the packages in Core ML; on a Mac the last test does.

Run time: about 45 s on 2 CPU cores (two exports through the CLI, one extra decoder conversion, the emulations).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobilesam import build_sam
from mobilesam.deploy import CoreMLPredictor, load_predictor
from mobilesam.deploy.formats import FORMATS, ExportOptions

ct = pytest.importorskip("coremltools", reason="coremltools is missing: pip install 'mobilesam[coreml]'")

TAGS = {"fp32": "", "fp16": "_fp16"}
RUNS_HERE = FORMATS["coreml"].runs_here()  # the table's platform rule: macOS only
IMG = np.random.default_rng(7).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 187 x 256


@pytest.fixture(scope="module")
def exported(exported_small):
    """`mobilesam export --format coreml` of the 256 vit_t checkpoint, fp32 and fp16 (once per session)."""
    return {p: exported_small("coreml", p) for p in ("fp32", "fp16")}


def _paths(exported, precision):
    tag = TAGS[precision]
    return exported[precision] / f"encoder{tag}.mlpackage", exported[precision] / f"decoder{tag}.mlpackage"


def _mil(path):
    """The package's ML program reloaded from its spec and weight file (coremltools' milproto loader)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    return load(spec, spec.specificationVersion, mlmodel.weights_dir)


# --- an op-by-op PyTorch emulation of the MIL programs (no Core ML: coremltools has no runtime off macOS) --------


def _value(env, var):
    if isinstance(var, (list, tuple)):
        return [_value(env, v) for v in var]
    if var is None:
        return None
    return env[var.name] if var.name in env else var.val


def _t(x):
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).float()


def run_mil(program, feeds, half=True):
    """Runs a MIL program's `main` in float32 PyTorch, rounding every float16 value to float16 (`half`): an
    approximation of Core ML on a GPU (float16 storage, float32 arithmetic), not Core ML. Raises on an op it lacks."""
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.ops.defs._utils import get_squeeze_axes, solve_slice_by_index_slice

    (fn,) = program.functions.values()
    env = {name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in feeds.items()}
    for op in fn.operations:
        t = op.op_type
        if t == "const":
            continue
        a = {k: _value(env, v) for k, v in op.inputs.items()}
        x = _t(a["x"]) if a.get("x") is not None else None
        binary = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div}
        unary = {"abs": torch.abs, "relu": torch.relu, "sin": torch.sin, "cos": torch.cos, "cast": lambda v: v}
        if t in binary:
            outs = [binary[t](x, _t(a["y"]))]
        elif t in unary:
            outs = [unary[t](x)]
        elif t == "clip":
            outs = [x.clamp(float(a["alpha"]), float(a["beta"]))]
        elif t == "gelu":
            assert a.get("mode") in (None, "EXACT", "TANH_APPROXIMATION"), a["mode"]
            outs = [F.gelu(x, approximate="tanh" if a.get("mode") == "TANH_APPROXIMATION" else "none")]
        elif t == "linear":
            outs = [F.linear(x, _t(a["weight"]), None if a.get("bias") is None else _t(a["bias"]))]
        elif t == "matmul":
            y = _t(a["y"])
            x, y = x.mT if a.get("transpose_x") else x, y.mT if a.get("transpose_y") else y
            outs = [x @ y]
        elif t == "conv":
            pad = [int(p) for p in a["pad"]] if a.get("pad_type") == "custom" else [0, 0, 0, 0]
            assert a.get("pad_type") in ("valid", "custom"), a["pad_type"]
            x = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
            bias = None if a.get("bias") is None else _t(a["bias"])
            stride, dilation = [int(v) for v in a["strides"]], [int(v) for v in a["dilations"]]
            outs = [F.conv2d(x, _t(a["weight"]), bias, stride, 0, dilation, int(a["groups"]))]
        elif t == "layer_norm":
            axes = sorted(int(ax) % x.ndim for ax in a["axes"])
            assert axes == list(range(x.ndim - len(axes), x.ndim)), axes
            gamma, beta = (None if a.get(k) is None else _t(a[k]) for k in ("gamma", "beta"))
            outs = [F.layer_norm(x, x.shape[-len(axes) :], gamma, beta, float(a["epsilon"]))]
        elif t == "softmax":
            outs = [torch.softmax(x, int(a["axis"]))]
        elif t == "reshape":
            outs = [x.reshape([int(s) for s in a["shape"]])]
        elif t == "transpose":
            outs = [x.permute([int(p) for p in a["perm"]])]
        elif t == "expand_dims":
            rank = x.ndim + len(a["axes"])
            for ax in sorted(int(ax) % rank for ax in a["axes"]):
                x = x.unsqueeze(ax)
            outs = [x]
        elif t == "pad":
            assert a.get("mode") in (None, "constant"), a["mode"]
            p = [int(v) for v in a["pad"]]
            pairs = [p[i : i + 2] for i in range(0, len(p), 2)][::-1]  # F.pad starts at the last axis
            outs = [F.pad(x, [v for pair in pairs for v in pair], value=float(a.get("constant_val") or 0.0))]
        elif t == "slice_by_index":
            opt = {k: None if a.get(k) is None else np.asarray(a[k]) for k in ("stride", "begin_mask", "end_mask")}
            mask = None if a.get("squeeze_mask") is None else np.asarray(a["squeeze_mask"])
            index = solve_slice_by_index_slice(
                x.shape,
                np.asarray(a["begin"]),
                np.asarray(a["end"]),
                opt["stride"],
                opt["begin_mask"],
                opt["end_mask"],
                mask,
            )
            y = x[tuple(index)]
            squeeze = get_squeeze_axes(mask, x.ndim)
            outs = [y.squeeze(tuple(squeeze)) if squeeze else y]
        elif t == "split":
            sizes = a.get("split_sizes")
            axis = int(a["axis"])
            outs = list(
                torch.split(x, [int(s) for s in sizes], axis)
                if sizes is not None
                else x.chunk(int(a["num_splits"]), axis)
            )
        elif t == "concat":
            assert not a.get("interleave")
            outs = [torch.cat([_t(v) for v in a["values"]], int(a["axis"]))]
        else:
            raise NotImplementedError(f"the emulation has no MIL op {t}")
        for var, out in zip(op.outputs, outs, strict=True):
            assert tuple(out.shape) == tuple(var.shape), (op.name, t, tuple(out.shape), var.shape)
            env[var.name] = out.half().float() if half and var.dtype == types.fp16 else out
    return {v.name: env[v.name].numpy() for v in fn.outputs}


class EmulatedPredictor(CoreMLPredictor):
    """`CoreMLPredictor` (its metadata checks, pre- and post-processing) with `run_mil` in place of Core ML."""

    def _ready(self, encoder_path, decoder_path):
        self.programs = _mil(encoder_path), _mil(decoder_path)

    def _encode(self, image):
        return run_mil(self.programs[0], {"image": image})["image_embeddings"]

    def _decode(self, features, coords, labels):
        out = run_mil(self.programs[1], {"image_embeddings": features, "point_coords": coords, "point_labels": labels})
        return out["low_res_masks"], out["iou_predictions"]


# --- tests ------------------------------------------------------------------------------------------------------


def test_sidecar_says_the_packages_were_validated_not_run(exported):
    for precision, out in exported.items():
        tag = TAGS[precision]
        meta = json.loads((out / "mobile_sam.json").read_text())["coreml"]
        assert set(meta["files"]) == {f"encoder{tag}.mlpackage", f"decoder{tag}.mlpackage"}
        assert meta["max_points"] == 8 and meta["precision"] == precision
        assert "1x8x2" in meta["decoder_inputs"] and "1x3xSxS float32" in meta["encoder_input"]
        if not RUNS_HERE:
            assert "check" not in meta  # nothing ran it
            assert "validated structurally, not run" in meta["checked"] and "iOS16" in meta["checked"]
        else:
            assert set(meta["check"]) == {f"encoder{tag}.mlpackage + decoder{tag}.mlpackage"}
        assert meta["mil_ops"]["encoder"]["layer_norm"] == 22 and meta["mil_ops"]["encoder"]["softmax"] == 10
        assert meta["mil_ops"]["decoder"]["layer_norm"] == 10 and meta["mil_ops"]["decoder"]["softmax"] == 7
        if precision == "fp16":
            assert "layer_norm and softmax" in meta["fp16"]
            for role, fp32_ops in meta["float32_ops"].items():
                assert set(fp32_ops) == {"cast", "layer_norm", "softmax"}, (role, fp32_ops)
        else:
            assert meta["fp16"] is None and meta["float32_ops"] is None


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_packages_have_the_static_interface_and_metadata(exported, precision):
    """Read with coremltools alone: ML programs for iOS 16 with named float32 inputs and outputs of the static
    shapes, and the metadata the predictor reads."""
    enc, dec = _paths(exported, precision)
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    want = {
        enc: ({"image": (1, 3, 256, 256)}, {"image_embeddings": (1, 256, 16, 16)}, "encoder"),
        dec: (
            {"image_embeddings": (1, 256, 16, 16), "point_coords": (1, 8, 2), "point_labels": (1, 8)},
            {"low_res_masks": (1, 4, 64, 64), "iou_predictions": (1, 4)},
            "decoder",
        ),
    }
    for path, (inputs, outputs, graph) in want.items():
        m = ct.models.MLModel(str(path), skip_model_load=True)
        spec = m.get_spec()
        assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == int(ct.target.iOS16)
        for features, shapes in ((spec.description.input, inputs), (spec.description.output, outputs)):
            assert [f.name for f in features] == list(shapes)
            assert {f.name: tuple(f.type.multiArrayType.shape) for f in features} == shapes
            assert {f.type.multiArrayType.dataType for f in features} == {float32}
        meta = dict(m.user_defined_metadata)
        assert (meta["img_size"], meta["max_points"], meta["graph"], meta["precision"]) == (
            "256",
            "8",
            graph,
            precision,
        )
        assert meta["variant"] == "vit_t" and len(meta["source_sha256"]) == 64


def test_fp16_packages_compute_in_half_precision_but_norms_and_softmax_in_float32(exported):
    """fp16: every conv / linear layer takes float16 activations and a float16 constant weight; every layer_norm
    and softmax takes, scales and returns float32. The fp32 packages hold no float16 value; fp16 weights are half
    the size."""
    from coremltools.converters.mil.mil import types

    for role in ("encoder", "decoder"):
        ops16 = [op for op in _mil(exported["fp16"] / f"{role}_fp16.mlpackage").functions["main"].operations]
        heavy = [op for op in ops16 if op.op_type in ("conv", "linear")]
        # the decoder: the factored static graph projects the image tokens once (52 linear layers before)
        assert len(heavy) == (69 if role == "encoder" else 42), (role, len(heavy))
        for op in heavy:
            w = op.inputs["weight"]
            assert op.inputs["x"].dtype == types.fp16 and w.dtype == types.fp16 and w.op.op_type == "const", op.name
        kept = [op for op in ops16 if op.op_type in ("layer_norm", "softmax")]
        assert len(kept) == (32 if role == "encoder" else 17)
        for op in kept:
            values = [op.inputs["x"], *op.outputs, *(op.inputs[k] for k in ("gamma", "beta") if k in op.inputs)]
            assert {v.dtype for v in values} == {types.fp32}, op.name
            assert op.inputs["x"].op.op_type == "cast"  # widened from the float16 graph around it
        assert {v.dtype for op in ops16 if op.op_type == "matmul" for v in op.outputs} == {types.fp16}

        ops32 = _mil(exported["fp32"] / f"{role}.mlpackage").functions["main"].operations
        assert not any(v.dtype == types.fp16 for op in ops32 for v in op.outputs if types.is_tensor(v.sym_type))
        assert "cast" not in {op.op_type for op in ops32}
        weights = {p: next((exported[p]).glob(f"{role}*.mlpackage")).joinpath("Data") for p in TAGS}
        size = {p: sum(f.stat().st_size for f in w.rglob("weight.bin")) for p, w in weights.items()}
        assert 0.45 < size["fp16"] / size["fp32"] < 0.55, (role, size)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_emulated_programs_match_pytorch(exported, model, precision):
    """The ML programs read back from the packages, run op by op in PyTorch (`run_mil`, an emulation: Core ML does
    not run here), match the model: the conversion kept its function. fp16 is emulated by rounding every float16
    value. Measured: fp32 1.0e-6 (embedding) / 6e-7 (masks), fp16 1.2e-3 / 1.1e-3."""
    from mobilesam.deploy.static_decoder import StaticDecoder
    from mobilesam.transforms import resize_image

    enc, dec = _paths(exported, precision)
    image = torch.from_numpy(np.array(resize_image(IMG, 256))).permute(2, 0, 1)[None]
    x = model.preprocess(image)
    coords = torch.zeros(1, 8, 2)
    coords[0, :3] = torch.tensor([[120.0, 80.0], [30.0, 40.0], [200.0, 170.0]])
    labels = torch.tensor([[1.0, 2.0, 3.0, -1, -1, -1, -1, -1]])
    with torch.no_grad():
        want_emb = model.image_encoder(x)
        want_masks, want_iou = StaticDecoder(model, 8)(want_emb, coords, labels)
    emb = run_mil(_mil(enc), {"image": x.numpy()})["image_embeddings"]
    out = run_mil(_mil(dec), {"image_embeddings": emb, "point_coords": coords.numpy(), "point_labels": labels.numpy()})

    def rel(a, b):
        return float(np.linalg.norm(a - b.numpy()) / np.linalg.norm(b.numpy()))

    tol = 1e-5 if precision == "fp32" else 5e-3
    assert rel(emb, want_emb) < tol and rel(out["low_res_masks"], want_masks) < tol
    assert np.abs(out["iou_predictions"] - want_iou.numpy()).max() < tol
    assert ((out["low_res_masks"] > 0) == (want_masks.numpy() > 0)).mean() > (0.9999 if precision == "fp32" else 0.999)


def test_emulated_packages_pass_the_export_check(exported, model):
    """The export check (`guard.check_export`, the figures a Mac would measure) on the emulated programs through
    the predictor's pre- and post-processing. Measured: fp32 1.2e-6 / spread 1.000 / masks 100%, fp16 1.2e-3 /
    1.005 / 99.97%."""
    from mobilesam.deploy import guard

    ref = guard.reference(model)
    for precision in TAGS:
        figures = guard.check_export(precision, EmulatedPredictor(*_paths(exported, precision)), ref, precision)
        limit = 1e-5 if precision == "fp32" else 5e-3
        assert figures["embedding_rel_error"] < limit, figures
        assert 0.95 < figures["spread_ratio"] < 1.05 and figures["mask_agreement_min"] > 0.999, figures


@pytest.mark.skipif(RUNS_HERE, reason="Core ML runs here")
def test_load_predictor_refuses_packages_off_macos(exported):
    enc, dec = _paths(exported, "fp32")
    with pytest.raises(RuntimeError, match="Core ML models run on macOS and iOS only"):
        load_predictor(enc, dec)
    # the predictor itself reads and checks both packages first, then refuses the same way
    with pytest.raises(RuntimeError, match="copy .* to a Mac, or export another format here"):
        CoreMLPredictor(enc, dec)
    p = EmulatedPredictor(enc, dec)
    assert (p.img_size, p.max_points, p.transform.target_length) == (256, 8, 256)


def test_predictor_refuses_a_mismatched_pair_a_wrong_role_and_missing_files(exported, tmp_path, monkeypatch):
    from mobilesam.deploy.coreml import _save, convert
    from mobilesam.deploy.interface import DECODER_OUTPUTS
    from mobilesam.deploy.static_decoder import StaticDecoder, example_inputs

    enc, dec = _paths(exported, "fp32")
    torch.manual_seed(0)
    other = StaticDecoder(build_sam("vit_t", img_size=320).eval(), 8)  # 20 x 20 embeddings
    meta = {"img_size": 320, "max_points": 8, "graph": "decoder", "precision": "fp32"}
    mlmodel = convert(other, example_inputs(320, 8)["decoder"], DECODER_OUTPUTS, "fp32", meta)
    _save(mlmodel, tmp_path / "decoder.mlpackage")
    with pytest.raises(ValueError, match=r"img_size=256 but .* img_size=320; use the two files of one export"):
        EmulatedPredictor(enc, tmp_path / "decoder.mlpackage")
    with pytest.raises(ValueError, match="is a Core ML encoder .* not the decoder written by `mobilesam export"):
        EmulatedPredictor(enc, enc)
    with pytest.raises(FileNotFoundError, match="mobilesam export CHECKPOINT --out DIR --format coreml"):
        EmulatedPredictor(tmp_path / "missing.mlpackage", dec)
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[coreml\]'"):
        CoreMLPredictor(enc, dec)
    from mobilesam.deploy import coreml

    with pytest.raises(ImportError, match=r"pip install 'mobilesam\[coreml\]'"):
        coreml.require()


def test_validate_names_what_differs(exported):
    from mobilesam.deploy.coreml import CoreMLValidationError, validate

    enc, dec = _paths(exported, "fp32")
    report = validate(dec, "decoder", ExportOptions(), img_size=256)
    assert report["ops"]["sin"] == 1 and not report["float16_ops"]
    with pytest.raises(CoreMLValidationError) as e:
        validate(enc, "encoder", ExportOptions(precision="fp16"), img_size=256)
    assert "metadata precision='fp32', not 'fp16'" in str(e.value)
    assert "conv " in str(e.value) and "computes in fp32, not float16 with float16 weights" in str(e.value)
    with pytest.raises(CoreMLValidationError, match="inputs image 1x3x256x256 float32, not image_embeddings"):
        validate(enc, "decoder", ExportOptions(), img_size=256)
    with pytest.raises(CoreMLValidationError, match="metadata max_points='8', not '6'.*point_coords 1x6x2"):
        validate(dec, "decoder", ExportOptions(max_points=6), img_size=256)


def test_writer_refuses_int8(model, tmp_path):
    from mobilesam.deploy import coreml

    with pytest.raises(ValueError, match="no int8"):
        coreml.write(model, tmp_path, ExportOptions(quantize=True))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not RUNS_HERE, reason="Core ML runs on macOS only")
def test_core_ml_runs_the_packages_on_macos(exported, model):
    from mobilesam.deploy import guard

    ref = guard.reference(model)
    for precision in TAGS:
        predictor = load_predictor(*_paths(exported, precision), compute_units="CPU_ONLY")
        assert isinstance(predictor, CoreMLPredictor) and (predictor.img_size, predictor.max_points) == (256, 8)
        guard.check_export(precision, predictor, ref, precision)  # raises with the figures
