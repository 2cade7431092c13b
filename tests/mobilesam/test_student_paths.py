"""A timm student's own file (RepViT-M0.9, `repvit_m0_9.pt` + sidecar) through the user-facing paths: `SAM(path)`,
segment-everything, `mobilesam info` and `predict`, and the web demo; each gives the plain predictor's masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilesam import SAM, SamAutomaticMaskGenerator, SamPredictor, build_sam
from mobilesam.cli import main
from tests.helpers import random_student_file
from tests.mobilesam.test_students import _one_thread  # noqa: F401 (autouse: one intra-op thread)

STUDENT = "repvit_m0_9"
S = 128
POINT = [60, 40]  # (x, y) in the 96 x 128 image
# random weights pass none of SAM's default filters: keep every mask
EVERYTHING = {"points_per_side": 2, "pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory):
    return random_student_file(STUDENT, S, tmp_path_factory.mktemp("student"), seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = np.random.default_rng(1).integers(0, 60, (96, 128, 3), dtype=np.uint8)
    img[20:70, 30:100] = [230, 200, 30]
    return img


@pytest.fixture(scope="module")
def reference(student_file, image):
    """`SamPredictor` on `build_sam("auto", file)` (the student from its sidecar), with `image` set."""
    predictor = SamPredictor(build_sam("auto", student_file).eval())
    predictor.set_image(image)
    return predictor


def _point_mask(reference) -> np.ndarray:
    masks, _, _ = reference.predict(np.array([POINT]), np.array([1]), multimask_output=False)
    return masks[0]


def test_facade_prompts_and_segments_everything(student_file, image, reference) -> None:
    """`SAM("repvit_m0_9.pt")`: the student at the sidecar's size; a point gives the predictor's mask, no prompt
    gives `SamAutomaticMaskGenerator`'s masks on the same model."""
    sam = SAM(student_file, device="cpu")
    assert type(sam.model.image_encoder).__name__ == "TimmStudent" and sam.model.img_size == S
    (r,) = sam.predict(image, points=POINT, labels=[1])
    assert np.array_equal(r.masks[0].numpy(), _point_mask(reference))
    (everything,) = sam.predict(image, everything_options=EVERYTHING)
    assert everything.masks.shape == (12, 96, 128)  # 4 points x 3 masks, nothing dropped
    found = SamAutomaticMaskGenerator(reference.model, **EVERYTHING).generate_masks(image)
    assert sorted(found.iou_preds.tolist()) == pytest.approx(sorted(everything.scores.tolist()), abs=1e-6)


def test_cli_info_and_predict(student_file, image, reference, tmp_path, capsys) -> None:
    """`mobilesam info` names the student from its sidecar and says which tools cannot build it; `mobilesam
    predict` prints the predictor's mask."""
    assert main(["info", str(student_file)]) == 0
    out = capsys.readouterr().out
    assert f"variant    {STUDENT} (from its sidecar)" in out and f"img_size   {S} (from its sidecar)" in out
    assert "loads strictly" in out and f"official MobileSAM code cannot build {STUDENT}" in out
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    args = ["predict", str(path), "--checkpoint", str(student_file), "--points", ",".join(map(str, POINT))]
    assert main(args + ["--out", str(tmp_path / "overlay.png"), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("mask 0:") and f"area {int(_point_mask(reference).sum())} px" in line
    assert Image.open(tmp_path / "overlay.png").size == (128, 96)


def test_web_demo_builds_from_a_student_file(student_file, image, reference, tmp_path) -> None:
    """`mobilesam demo --checkpoint repvit_m0_9.pt`: the backend holds the student, the page builds, and a click
    gives the predictor's mask."""
    pytest.importorskip("gradio")
    from mobilesam.demo import MODES, DemoSession, SessionState, load_backend
    from mobilesam.demo.app import build_app

    backend = load_backend(student_file, device="cpu")
    assert type(backend.model.image_encoder).__name__ == "TimmStudent" and str(student_file) in backend.description
    assert type(build_app(backend, tmp_path / "app")).__name__ == "Blocks"
    session = DemoSession(backend, tmp_path / "session")
    state = session.click(session.load(SessionState(), image, "scene"), *POINT, MODES[0])
    assert np.array_equal(state.result.masks[0], _point_mask(reference))
