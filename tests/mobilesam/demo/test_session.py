"""The demo's session logic against SamPredictor on the same weights: clicks, undo, boxes, candidates, downloads,
segment-everything and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilesam import SamAutomaticMaskGenerator, build_sam
from mobilesam.demo import MAX_SIDE, MODES, DemoError, SessionState
from mobilesam.demo.examples import EXAMPLES, example
from mobilesam.demo.files import rle_decode
from mobilesam.demo.session import guarded
from tests.mobilesam.demo.conftest import downloaded, encoder_runs

POS, NEG, BOX = MODES


def test_examples_are_small_rgb_images():
    for name in EXAMPLES:
        img = example(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert 300 <= max(img.shape[:2]) <= 500 and img.std() > 20, name
    with pytest.raises(KeyError, match="choose one of"):
        example("nope")


def test_a_click_gives_the_predictors_mask_and_embeds_once(session, reference, backend):
    runs = encoder_runs(backend)
    image = example("shapes")
    state = session.load(SessionState(), image, "shapes")
    assert state.timings["embed"] > 0
    for x, y in [(100, 150), (300, 100), (350, 300)]:
        state = session.clear(state)
        state = session.click(state, x, y, POS)
        masks, scores, _ = reference.predict(np.array([[x, y]]), np.array([1]), multimask_output=False)
        assert np.array_equal(state.result.masks, masks) and 0 < masks.sum() < masks.size
        np.testing.assert_allclose(state.result.scores, scores, rtol=1e-5)
        assert state.timings["decode"] > 0
    # the same image again (another tab, a reload) is found in the cache
    state = session.load(state, image.copy(), "shapes")
    assert state.embed_cached and state.result is None and not state.prompts.points
    assert runs[0] <= 1  # 0 when an earlier test of this module embedded the image already
    assert "decoder" in session.status(session.click(state, 10, 10, POS))


def test_negative_points_and_undo(loaded, reference):
    session, state = loaded
    state = session.click(state, 100, 150, POS)
    one = state.result.masks.copy()
    state = session.click(state, 200, 200, NEG)
    masks, _, _ = reference.predict(np.array([[100, 150], [200, 200]]), np.array([1, 0]), multimask_output=False)
    assert np.array_equal(state.result.masks, masks) and not np.array_equal(masks, one)
    assert state.prompts.labels == [1, 0]
    state = session.undo(state)
    assert np.array_equal(state.result.masks, one) and state.prompts.points == [[100.0, 150.0]]
    state = session.undo(state)
    assert state.result is None and state.downloads is None and state.prompts.empty()
    state = session.undo(state)
    assert state.message == "Nothing to undo."


def test_a_box_is_two_clicks_in_any_order(loaded, reference):
    session, state = loaded
    state = session.click(state, 330, 200, BOX)
    assert state.result is None and state.prompts.corner == [330.0, 200.0]
    assert "opposite corner" in state.message
    state = session.click(state, 40, 60, BOX)  # up-left of the first corner
    assert state.prompts.box == [40.0, 60.0, 330.0, 200.0] and state.prompts.corner is None
    masks, _, _ = reference.predict(box=np.array([40, 60, 330, 200]), multimask_output=False)
    assert np.array_equal(state.result.masks, masks)
    state = session.click(state, 150, 150, NEG)  # a point on the boxed object
    masks, _, _ = reference.predict(
        np.array([[150, 150]]), np.array([0]), box=np.array([40, 60, 330, 200]), multimask_output=False
    )
    assert np.array_equal(state.result.masks, masks)
    state = session.undo(session.undo(state))  # the point, then the box: the first corner is back
    assert state.prompts.box is None and state.prompts.corner == [330.0, 200.0] and state.result is None


def test_multimask_shows_three_candidates_and_downloads_the_chosen_one(loaded, reference):
    session, state = loaded
    state = session.set_multimask(session.click(state, 100, 150, POS), True)
    masks, scores, _ = reference.predict(np.array([[100, 150]]), np.array([1]), multimask_output=True)
    assert state.result.masks.shape == (3, 360, 480) and np.array_equal(state.result.masks, masks)
    assert state.chosen == int(np.argmax(scores))
    captions = [c for _, c in session.candidates(state)]
    assert len(captions) == 3 and f"IoU {scores[0]:.3f}" in captions[0] and "(shown)" in captions[state.chosen]
    other = (state.chosen + 1) % 3
    state = session.choose(state, other)
    png, doc = downloaded(state)
    assert np.array_equal(png > 0, masks[other]) and doc["prompts"]["candidate"] == other
    assert np.array_equal(rle_decode(doc["annotations"][0]["segmentation"]), masks[other])
    with pytest.raises(DemoError, match="no candidate"):
        session.choose(state, 3)


def test_downloads_decode_to_the_shown_mask(loaded):
    session, state = loaded
    state = session.click(state, 300, 100, POS)
    mask = state.result.masks[0]
    first = state.downloads
    state = session.click(session.undo(state), 300, 100, POS)
    assert not first[0].parent.exists()  # the previous result's files are removed
    png, doc = downloaded(state)
    assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255} and np.array_equal(png == 255, mask)
    (ann,) = doc["annotations"]
    assert doc["image"] == {"id": 1, "file_name": "shapes", "height": 360, "width": 480}
    assert np.array_equal(rle_decode(ann["segmentation"]), mask) and ann["area"] == int(mask.sum())
    ys, xs = np.nonzero(mask)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert doc["prompts"]["points"] == [[300.0, 100.0]] and doc["prompts"]["labels"] == [1]
    # the overlay shows the mask: blended pixels inside it, the image outside (the point marker aside)
    picture = np.asarray(session.render(state)).astype(int)
    changed = np.abs(picture - example("shapes").astype(int)).max(-1) > 3
    assert changed[mask].mean() > 0.9 and changed[~mask].mean() < 0.01


def test_segment_everything_reuses_the_embedding_and_equals_the_generator(loaded, backend, small_checkpoint):
    session, state = loaded
    runs = encoder_runs(backend)
    # random weights pass none of SAM's default filters; without them NMS leaves a few masks
    state = session.everything(state, 4, 0.0, 0.0)
    assert runs[0] == 0 and state.everything and state.timings["everything"] > 0
    model = build_sam("vit_t", small_checkpoint).eval()
    reference = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    records = sorted(reference.generate(example("shapes")), key=lambda r: -int(r["segmentation"].sum()))
    assert len(state.result.masks) == len(records) >= 1
    for got, want in zip(state.result.masks, records):
        assert np.array_equal(got, want["segmentation"])
    assert f"{len(records)} masks from a 4x4 grid" in state.message
    # a click afterwards starts prompting afresh
    state = session.click(state, 100, 150, POS)
    assert not state.everything and state.result.masks.shape == (1, 360, 480)
    with pytest.raises(DemoError, match="points per side must be 4..64"):
        session.everything(state, 2)
    with pytest.raises(DemoError, match="thresholds must lie in"):
        session.everything(state, 8, 1.5)
    state = session.everything(state, 4)  # SAM's default thresholds: none of the random masks passes
    assert (
        state.result.masks.shape == (0, 360, 480)
        and state.downloads is None
        and "lower the thresholds" in state.message
    )


def test_bad_input_becomes_a_message(session, tmp_path):
    click, load_file, everything = guarded(session.click), guarded(session.load_file), guarded(session.everything)
    state = click(SessionState(), 10, 10, POS)
    assert "no image yet" in state.message
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    state = load_file(SessionState(), broken)
    assert "cannot read broken.png as an image" in state.message and state.image is None
    huge = tmp_path / "huge.png"
    Image.new("L", (MAX_SIDE + 1, 8)).save(huge)
    state = load_file(SessionState(), huge)
    assert f"{MAX_SIDE + 1}x8 pixels" in state.message and f"at most {MAX_SIDE}" in state.message
    ok = tmp_path / "ok.png"
    Image.fromarray(example("tiles")).save(ok)
    state = load_file(SessionState(), ok)
    assert state.image.shape == (400, 400, 3) and state.name == "ok.png"
    state = click(state, 401, 10, POS)
    assert "lies outside the 400x400 image" in state.message and state.prompts.empty()
    state = click(state, 10, 10, "lasso")
    assert "unknown click mode 'lasso'" in state.message
    assert "points per side must be" in everything(state, 1000).message

    def boom(state):
        raise RuntimeError("out of <memory>")

    state = guarded(boom)(state)
    assert state.message == "⚠️ Something went wrong: RuntimeError: out of <memory>"
    assert "out of &lt;memory&gt;" in session.status(state)
