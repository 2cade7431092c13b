"""ONNX int8: static QDQ encoder calibrated on a folder of images (`--calibration`), dynamic without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilesam.transforms import resize_image

onnx = pytest.importorskip("onnx", reason="ONNX is not installed: pip install 'mobilesam[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install 'mobilesam[onnx]'")

IMG_SIZE = 64
EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "example.jpg"  # a real photo


def _crops(n: int, seed: int) -> list[np.ndarray]:
    """n random 48x64 crops of the example photo: real image statistics without a data set."""
    from PIL import Image

    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 128)
        out.append(np.ascontiguousarray(photo[y : y + 96 : 2, x : x + 128 : 2]))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random vit_t at img_size 64, perturbed so that its embedding depends on the image."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_keeping_input_

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = perturb_keeping_input_(build_sam("vit_t", img_size=IMG_SIZE), seed=1)
    path = tmp_path_factory.mktemp("ckpt64") / "mobile_sam.pt"
    save_state_dict(model.state_dict(), path, meta={"img_size": IMG_SIZE, "variant": "vit_t"})
    return path


@pytest.fixture(scope="module")
def static_export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mobilesam export --format onnx --quantize --calibration <4 PNGs>` (the export check runs inside)."""
    from PIL import Image

    from mobilesam.cli import main

    images = tmp_path_factory.mktemp("calibration")
    for i, crop in enumerate(_crops(4, seed=0)):
        Image.fromarray(crop).save(images / f"im{i}.png")
    out = tmp_path_factory.mktemp("onnx_static")
    args = ["export", str(checkpoint), "--out", str(out), "--format", "onnx", "--quantize", "--calibration"]
    assert main([*args, str(images)]) == 0
    return out


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _embedding(path: Path, image: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.asarray(resize_image(image, IMG_SIZE))})[0]


def test_calibrated_encoder_is_static_qdq_and_passes_the_check(static_export: Path):
    ops = _ops(static_export / "encoder_int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops and "DynamicQuantizeLinear" not in ops
    assert "LayerNormalization" in ops  # kept float
    assert "DynamicQuantizeLinear" in _ops(static_export / "decoder_int8.onnx")  # the decoder stays dynamic
    sidecar = json.loads((static_export / "mobile_sam.json").read_text())["onnx"]
    assert sidecar["int8_quantization"]["encoder"].startswith("static, 4 images from ")
    assert sidecar["int8_quantization"]["decoder"] == "dynamic"
    check = sidecar["check"]["encoder_int8.onnx + decoder_int8.onnx"]
    assert check["embedding_rel_error"] < 0.1 and check["mask_agreement_min"] >= 0.95  # the guard's int8 tolerances
    image = _crops(1, seed=7)[0]  # not a calibration image
    fp32, int8 = (
        _embedding(static_export / "encoder.onnx", image),
        _embedding(static_export / "encoder_int8.onnx", image),
    )
    assert np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32) < 0.08  # measured 0.047 (random weights at 64)


def test_calibration_inputs_are_the_resized_images(tmp_path: Path):
    """`encoder_inputs` recovers the uint8 images the ONNX encoder takes from the normalised, padded tensors."""
    from PIL import Image

    from mobilesam.deploy.calibration import read_calibration
    from mobilesam.deploy.onnx_export import encoder_inputs

    crops = _crops(2, seed=3)
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / f"im{i}.png")
    got = encoder_inputs(read_calibration(tmp_path, IMG_SIZE, 2))
    assert [g.shape for g in got] == [(48, 64, 3)] * 2
    for g, crop in zip(got, crops, strict=True):
        np.testing.assert_array_equal(g, np.asarray(resize_image(crop, IMG_SIZE)))


def test_without_calibration_the_encoder_is_dynamic(
    checkpoint: Path, static_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No silent change of default: `--quantize` without `--calibration` writes the dynamic int8 encoder (the float
    graphs are copied from the static export's instead of exported again: only the quantisation is under test)."""
    from mobilesam import build_sam
    from mobilesam.deploy import onnx_export
    from mobilesam.deploy.formats import ExportOptions

    for role in ("encoder", "decoder"):
        copy = lambda model, path, *args, src=static_export / f"{role}.onnx", **kw: Path(shutil.copy(src, path))  # noqa: E731
        monkeypatch.setattr(onnx_export, f"export_{role}", copy)
    model = build_sam("vit_t", checkpoint).eval()
    paths, info = onnx_export.write(model, tmp_path, ExportOptions(quantize=True))
    ops = _ops(paths["encoder_int8"])
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert info["int8_quantization"] == {"encoder": "dynamic", "decoder": "dynamic"}
