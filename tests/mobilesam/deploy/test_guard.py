"""The check every export passes: it catches an encoder that ignores its input and files that disagree with
PyTorch, leaves nothing of a failed format behind, and refuses options a format does not have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilesam import build_sam
from mobilesam.deploy import formats, guard
from mobilesam.deploy.runtime import Embedding
from tests.helpers import perturb_

pytest.importorskip("onnxruntime", reason="the failing-export test writes ONNX: pip install 'mobilesam[onnx]'")


@pytest.fixture(scope="module")
def ref(model):
    return guard.reference(model)


class _Replay:
    """A 'runtime' that returns given embeddings and PyTorch's masks (to test the guard's arithmetic alone)."""

    def __init__(self, ref, embeddings):
        self.ref, self.embeddings, self.i = ref, embeddings, 0

    def embed(self, image):
        i = next(k for k, r in enumerate(self.ref) if r["image"] is image)
        return Embedding(self.embeddings[i], image.shape[:2], image.shape[:2], image)

    def decode(self, emb, **prompt):
        r = next(r for r in self.ref if r["image"] is emb.image)
        k = [p.keys() == prompt.keys() and p == prompt for p in guard.probe_prompts(emb.image.shape)].index(True)
        return type("R", (), {"masks": r["masks"][k][None]})


def test_the_probe_images_differ_and_pytorch_tells_them_apart(ref):
    a, b = ref
    assert a["image"].shape != b["image"].shape
    assert guard.relative_error(a["embedding"], b["embedding"]) > 0.01
    assert all(m.any() and not m.all() for r in ref for m in r["masks"]), "a probe mask is empty or full"


def test_pytorch_against_itself_passes_with_exact_figures(ref):
    figures = guard.check_export("self", _Replay(ref, [r["embedding"] for r in ref]), ref, "fp32")
    assert figures == {
        "embedding_rel_error": 0.0,
        "spread_ratio": 1.0,
        "difference_rel_error": 0.0,
        "mask_agreement_min": 1.0,
    }


def test_an_encoder_that_ignores_its_input_fails_though_its_error_is_within_bounds(ref):
    """The OpenVINO fp16 failure: one embedding for every image. Here it is the mean of PyTorch's two: its error is
    half their distance, inside fp16's bound, and the masks are PyTorch's; only the spread check catches it."""
    mean = (ref[0]["embedding"] + ref[1]["embedding"]) / 2
    error = guard.relative_error(mean, ref[0]["embedding"])
    assert error < guard.TOLERANCES["fp16"].embedding
    with pytest.raises(guard.ExportCheckError) as e:
        guard.check_export("enc + dec", _Replay(ref, [mean, mean]), ref, "fp16")
    message = str(e.value)
    assert "differ 0.00x as much as PyTorch's (at least 0.5x expected)" in message
    assert "off PyTorch's by 1.00" in message and "embedding relative error" not in message
    assert message.endswith("The files were not kept; export with --precision fp32")


def test_noise_within_fp16_passes_fp16_and_fails_fp32(ref):
    rng = np.random.default_rng(0)
    noisy = [r["embedding"] + 0.002 * r["embedding"].std() * rng.standard_normal(r["embedding"].shape) for r in ref]
    figures = guard.check_export("noisy", _Replay(ref, noisy), ref, "fp16")
    assert 1e-3 < figures["embedding_rel_error"] < 2e-2 and figures["difference_rel_error"] < 0.25
    with pytest.raises(guard.ExportCheckError, match=r"embedding relative error \d\.\d\de-03 \(limit 0\.001\)"):
        guard.check_export("noisy", _Replay(ref, noisy), ref, "fp32")


def test_a_failing_format_leaves_no_file_and_no_weights(small_checkpoint, model, tmp_path, monkeypatch):
    """The ONNX writer made to write another model's graphs: the check fails, and neither the staged files, the
    staging folder nor the weights file remain."""
    from mobilesam.deploy import onnx_export
    from mobilesam.export import export

    torch.manual_seed(3)
    other = perturb_(build_sam("vit_t", img_size=256), seed=5).eval()
    real_write = onnx_export.write
    monkeypatch.setattr(onnx_export, "write", lambda _model, out, options: real_write(other, out, options))
    with pytest.raises(
        guard.ExportCheckError, match=r"encoder\.onnx \+ decoder\.onnx \(fp32\) failed the export check"
    ):
        export(small_checkpoint, tmp_path, formats=["onnx"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("names", "options", "match"),
    [
        (["executorch"], formats.ExportOptions(precision="fp16"), r"--format executorch has no fp16 export"),
        (["openvino"], formats.ExportOptions(quantize=True), r"--format openvino has no int8 export"),
        (["onnx"], formats.ExportOptions(precision="bf16"), r"precision='bf16': choose from fp32, fp16"),
        (["onnx"], formats.ExportOptions(max_points=1), r"--max-points 1 is out of range: choose an integer from 2"),
    ],
)
def test_options_a_format_does_not_have_are_refused_before_any_work(names, options, match):
    with pytest.raises(ValueError, match=match):
        formats.check_options(names, options)


def test_unknown_formats_are_named():
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['tensorrt'\]: choose from onnx, executorch"):
        formats.check_formats("onnx,tensorrt")
    assert formats.check_formats(" ONNX, executorch,onnx") == ["onnx", "executorch"]
    assert formats.check_formats([], onnx=True) == ["onnx"]


def test_file_names_by_precision():
    assert formats.file_name("encoder", ".xml", "fp16") == "encoder_fp16.xml"
    assert formats.file_name("decoder", ".onnx") == "decoder.onnx"
    assert formats.file_name("encoder_int8", ".pte", "fp32") == "encoder_int8.pte"
