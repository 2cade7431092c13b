"""Which model the demo runs (a checkpoint, the newest `make demo` output, random weights, exported files), what
the page says about it, and the command's refusals."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from mobilesam.demo import MODES, DemoSession, SessionState, default_checkpoint, load_backend
from mobilesam.demo.examples import example
from mobilesam.demo.session import guarded

POS, NEG, BOX = MODES
# gradio's own queue code, under pandas 3
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def test_default_weights_are_the_newest_demo_output_else_random(tmp_path, small_checkpoint):
    assert default_checkpoint(tmp_path) is None
    old, new = tmp_path / "outputs/demo/2026-01-01_00-00-00", tmp_path / "outputs/demo/2026-02-01_00-00-00"
    for i, folder in enumerate((old, new)):
        folder.mkdir(parents=True)
        for name in ("mobile_sam.pt", "mobile_sam.json"):
            shutil.copy(small_checkpoint.with_name("small_" + name), folder / name)
        os.utime(folder / "mobile_sam.pt", (1e9 + i, 1e9 + i))
    assert default_checkpoint(tmp_path) == new / "mobile_sam.pt"
    b = load_backend(root=tmp_path, device="cpu")
    assert not b.random_weights and str(new / "mobile_sam.pt") in b.description and b.img_size == 256
    b = load_backend(root=tmp_path / "empty", device="cpu", img_size=256)
    assert b.random_weights and "RANDOM" in b.description
    pytest.importorskip("gradio")
    from mobilesam.demo.app import build_app

    warnings = [
        c for c in build_app(b, tmp_path / "o").blocks.values() if getattr(c, "elem_id", None) == "random-weights"
    ]
    assert len(warnings) == 1 and "Random weights" in warnings[0].value
    with pytest.raises(ValueError, match="--encoder and --decoder together"):
        load_backend(encoder="e.onnx")


def test_cli_demo_refuses_bad_arguments_with_a_message(tmp_path, small_checkpoint, capsys):
    from mobilesam.cli import build_parser, main

    args = build_parser().parse_args(["demo", "--checkpoint", "m.pt", "--port", "8000"])
    assert (args.checkpoint, args.host, args.port, args.encoder) == ("m.pt", "127.0.0.1", 8000, None)
    for argv, message in [
        (["demo", "--encoder", "e.onnx"], "give --encoder and --decoder together"),
        (["demo", "--checkpoint", str(small_checkpoint), "--encoder", "e.onnx", "--decoder", "d.onnx"], "not both"),
        (["demo", "--checkpoint", str(tmp_path / "nope.pt")], "error: .*nope.pt"),
        (["demo", "--encoder", str(tmp_path / "e.onnx"), "--decoder", str(tmp_path / "d.onnx")], "does not exist"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err) and "Traceback" not in err


def test_exported_files_go_through_mobilesam_deploy(monkeypatch):
    import types

    import mobilesam.deploy

    calls = []
    fake = types.SimpleNamespace(img_size=512)
    monkeypatch.setattr(mobilesam.deploy, "load_predictor", lambda e, d: calls.append((e, d)) or fake)
    b = load_backend(encoder="x/encoder.pte", decoder="x/decoder.pte")
    assert calls == [("x/encoder.pte", "x/decoder.pte")] and b.img_size == 512 and "encoder.pte" in b.description


@pytest.mark.slow  # the ONNX export: ~50 s on 2 busy cores
def test_exported_onnx_files_give_the_onnx_predictors_masks(small_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mobilesam.cli import main
    from mobilesam.onnx import OnnxPredictor

    assert main(["export", str(small_checkpoint), "--out", str(tmp_path), "--onnx"]) == 0
    enc, dec = tmp_path / "encoder.onnx", tmp_path / "decoder.onnx"
    b = load_backend(encoder=enc, decoder=dec)
    assert not b.supports_everything and "encoder.onnx" in b.description and b.img_size == 256
    session = DemoSession(b, tmp_path / "out")
    state = session.load(SessionState(), example("shapes"), "shapes")
    state = session.click(session.click(state, 100, 150, POS), 200, 200, NEG)
    (want,) = OnnxPredictor(enc, dec).predict(example("shapes"), points=[[[100, 150], [200, 200]]], labels=[[1, 0]])
    assert np.array_equal(state.result.masks, want.masks) and state.result.masks.any()
    state = session.set_multimask(state, True)
    assert state.result.masks.shape == (3, 360, 480)
    state = guarded(session.everything)(state, 8)
    assert "segment everything needs the PyTorch model" in state.message


def _components(app, elem_id: str) -> list:
    return [c for c in app.blocks.values() if getattr(c, "elem_id", None) == elem_id]


def test_the_page_says_when_the_model_is_the_make_demo_toy(tmp_path, small_checkpoint, monkeypatch):
    pytest.importorskip("gradio")
    from mobilesam.demo.app import build_app
    from mobilesam.demo.backends import toy_reason

    # what `make demo` records in mobile_sam.json (train.callbacks.export_module): the default config, demo on
    toy = tmp_path / "toy" / "mobile_sam.pt"
    toy.parent.mkdir()
    shutil.copy(small_checkpoint, toy)
    meta = json.loads(small_checkpoint.with_suffix(".json").read_text())
    teacher = {"variant": "vit_b", "checkpoint": "outputs/data/demo/teacher_sam_vit_b_256.pth", "precision": "fp32"}
    toy.with_suffix(".json").write_text(json.dumps(meta | {"teacher": teacher, "config": {"demo": {"enabled": True}}}))
    b = load_backend(toy, device="cpu")
    assert not b.random_weights and "`make demo` toy" in b.toy and "RANDOM demo teacher" in b.toy
    (note,) = _components(build_app(b, tmp_path / "o"), "toy-model")
    assert "Toy model" in note.value and "expected, not a bug" in note.value and "--checkpoint" in note.value
    # a model whose sidecar says nothing of the sort gets no note; random weights get their own
    real = load_backend(small_checkpoint, device="cpu")
    assert real.toy is None and not _components(build_app(real, tmp_path / "p"), "toy-model")
    rand = load_backend(root=tmp_path / "empty", device="cpu", img_size=256)
    app = build_app(rand, tmp_path / "q")
    assert _components(app, "random-weights") and not _components(app, "toy-model")
    # distilled from a random teacher (no checkpoint) is said too; a broken sidecar is not a toy
    assert "RANDOM vit_h teacher" in toy_reason({"teacher": {"variant": "vit_h", "checkpoint": None}})
    assert toy_reason(None) is None and toy_reason({"config": "x"}) is None
    # exported files: the sidecar in their folder (mobile_sam.json beside them) says it
    import types

    import mobilesam.deploy

    fake = types.SimpleNamespace(img_size=256)
    monkeypatch.setattr(mobilesam.deploy, "load_predictor", lambda e, d: fake)
    exported = load_backend(encoder=tmp_path / "toy" / "encoder.onnx", decoder=tmp_path / "toy" / "decoder.onnx")
    assert "`make demo` toy" in exported.toy


def test_a_new_page_shows_an_image_before_the_first_click(backend, small_checkpoint, tmp_path):
    pytest.importorskip("gradio")
    from mobilesam import SamPredictor, build_sam
    from mobilesam.demo.app import build_app
    from mobilesam.demo.drawing import picture
    from mobilesam.demo.session import Prompts

    app = build_app(backend, tmp_path)
    (canvas,) = _components(app, "canvas")
    shown = np.asarray(Image.open(canvas.value["path"]).convert("RGB"))
    assert np.array_equal(shown, np.asarray(picture(example("shapes"), np.zeros((0,)), Prompts(), False)))
    (status,) = _components(app, "status")
    assert "image encoder at the first click" in status.value
    # each session's first state: the example, not embedded yet (opening the page runs no encoder)
    (state_block,) = [c for c in app.blocks.values() if type(c).__name__ == "State"]
    first, second = state_block.value(), state_block.value()
    assert np.array_equal(first.image, example("shapes")) and "embed" not in first.timings
    assert first.gate is not second.gate and first.gate.sid != second.gate.sid
    # the first click embeds it and gives the predictor's mask
    session = DemoSession(backend, tmp_path)
    state = guarded(session.click)(first, 100, 150, POS)
    reference = SamPredictor(build_sam("vit_t", small_checkpoint).eval())
    reference.set_image(example("shapes"))
    masks, _, _ = reference.predict(np.array([[100, 150]]), np.array([1]), multimask_output=False)
    assert np.array_equal(state.result.masks, masks) and state.message.startswith("Mask of")
    assert state.timings["embed"] > 0 and "computed once" in session.status(state)
