"""Every student exported with parity in ONNX and OpenVINO at img_size 64: tiny_vit_5m is vit_t (the deploy tests
export it in every format), efficientvit_b0 goes through the whole `mobilesam export`, and the other seven export
their image encoder's ONNX graph (the exporter's own path), which ONNX Runtime and OpenVINO run with PyTorch's
embeddings; RepViT, the one family no full export covers, also goes through the OpenVINO writer's own conversion.

The prompt encoder and mask decoder are SAM's for every student (one graph whatever the encoder), so one full export
(both files, each format's check, the sidecar) stands for the decoder. An encoder graph costs ~6-17 s of CPU (the
export itself: torch.export, decompositions, onnxscript's optimiser), a full export ~26 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict, student_meta, weights_name
from mobilesam.variants import STUDENTS
from tests.helpers import perturb_keeping_input_
from tests.mobilesam.test_students import _one_thread  # noqa: F401 (autouse: one intra-op thread)

S = 64  # the smallest size every student takes (TinyViT: a multiple of 64; timm students: of 32)
FULL = "efficientvit_b0"  # the student of the full export below; the others export their encoder graph only
# tiny_vit_5m is vit_t, which the deploy tests export in every format (`exported_small`)
GRAPH_ONLY = [n for n in STUDENTS if n not in (FULL, "tiny_vit_5m")]
TOLERANCE = 1e-4  # relative error of an fp32 graph against PyTorch (`max|a - b| / max|b|`)
DELTA_TOLERANCE = 1e-2  # the same, of the difference between two images' embeddings


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _images() -> list[np.ndarray]:
    """Two different images, one square and one not (the graph pads it), long side S."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((S, S, 3), (S * 3 // 4, S, 3))]


def _model(name: str):
    torch.manual_seed(0)
    return perturb_keeping_input_(build_sam(name, img_size=S), seed=1).eval()


@pytest.mark.parametrize("name", GRAPH_ONLY)
def test_student_encoder_graph_parity(name: str, tmp_path: Path) -> None:
    """`onnx_graphs.export_encoder` (normalisation and padding inside, any h x w up to S) for the student: ONNX
    Runtime and OpenVINO (reading the same graph, f32) give PyTorch's embedding of two images, which differ."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from mobilesam.deploy.onnx_graphs import export_encoder
    from mobilesam.deploy.ov_runtime import core

    model = _model(name)
    path = export_encoder(model, tmp_path / "encoder.onnx", metadata={"variant": name})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    compiled = core().compile_model(core().read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got: dict[str, list[np.ndarray]] = {"PyTorch": [], "ONNX Runtime": [], "OpenVINO": []}
    for image in _images():
        with torch.no_grad():
            got["PyTorch"].append(model.image_encoder(model.preprocess(torch.from_numpy(image).permute(2, 0, 1))[None]))
        got["ONNX Runtime"].append(session.run(None, {session.get_inputs()[0].name: image})[0])
        got["OpenVINO"].append(compiled([image])[0])
    ref = [t.numpy() for t in got.pop("PyTorch")]
    assert ref[0].shape == (1, 256, S // 16, S // 16)
    for runtime, (a, b) in got.items():
        assert max(_rel(a, ref[0]), _rel(b, ref[1])) < TOLERANCE, runtime
        # the graph follows the image: what tells the two images apart is PyTorch's too (a random EfficientViT's
        # embeddings differ by only ~4e-4 relative between images, so the whole-tensor check alone would not see it)
        assert _rel(a - b, ref[0] - ref[1]) < DELTA_TOLERANCE, runtime


def test_openvino_writer_converts_a_repvit_encoder() -> None:
    """The OpenVINO writer's own route (torch.export -> OpenVINO's FX frontend, a free batch) for the family that
    neither the vit_t deploy tests (TinyViT) nor the full export below (EfficientViT) put through it: one call on a
    batch of both images gives PyTorch's embeddings."""
    pytest.importorskip("openvino")
    from mobilesam.deploy.interface import NAMES
    from mobilesam.deploy.openvino import convert
    from mobilesam.deploy.ov_runtime import core
    from mobilesam.deploy.runtime import normalize_pad

    model = _model("repvit_m0_9")
    batch = np.concatenate([normalize_pad(image, S) for image in _images()])
    ir = convert(model.image_encoder, (torch.from_numpy(batch[:1]),), *NAMES["encoder"], dynamic_batch=True)
    got = core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([batch])[0]
    with torch.no_grad():
        ref = model.image_encoder(torch.from_numpy(batch)).numpy()
    assert got.shape == (2, 256, S // 16, S // 16)
    assert _rel(got, ref) < TOLERANCE and _rel(got[0] - got[1], ref[0] - ref[1]) < DELTA_TOLERANCE


def test_full_export_of_a_timm_student(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`mobilesam export --format onnx,openvino` of a non-TinyViT student: each format's own check (two images
    against PyTorch) passes, the weights come out as `<student>.pt` beside a sidecar that names the student, and
    the ONNX and OpenVINO predictors give the reloaded model's embedding."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from mobilesam.cli import main
    from mobilesam.deploy import load_predictor

    model = _model(FULL)
    src = save_state_dict(
        model.state_dict(), tmp_path / "src" / weights_name(FULL), meta=student_meta(FULL) | {"img_size": S}
    )
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out), "--format", "onnx,openvino"]) == 0
    assert f"official MobileSAM code cannot build {FULL}" in capsys.readouterr().out  # not "pass imgsz=64"
    meta = json.loads((out / f"{FULL}.json").read_text())
    assert (meta["student"], meta["variant"], meta["img_size"]) == (FULL, FULL, S)
    assert {"onnx", "openvino"} <= set(meta) and not (out / "mobile_sam.pt").exists()
    reloaded = build_sam("auto", out / f"{FULL}.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())
    image = _images()[1]
    with torch.no_grad():
        ref = model.image_encoder(model.preprocess(torch.from_numpy(image).permute(2, 0, 1))[None]).numpy()
    for encoder, decoder in (("encoder.onnx", "decoder.onnx"), ("encoder.xml", "decoder.xml")):
        emb = load_predictor(out / encoder, out / decoder).embed(image)
        assert _rel(np.asarray(emb.features), ref) < TOLERANCE, encoder
