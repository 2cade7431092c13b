"""The web demo: session logic against SamPredictor, downloads, errors, the ONNX backend, and the page in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilesam import SamAutomaticMaskGenerator, SamPredictor, build_sam
from mobilesam.demo import MAX_SIDE, MODES, DemoError, DemoSession, SessionState, default_checkpoint, load_backend
from mobilesam.demo.examples import EXAMPLES, example
from mobilesam.demo.files import mask_png, masks_json, rle_decode, rle_encode
from mobilesam.demo.session import MASK_COLOUR, Prompts, guarded, picture

POS, NEG, BOX = MODES
# gradio's own queue code, under pandas 3
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def backend(small_checkpoint):
    return load_backend(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def reference(small_checkpoint):
    """A plain SamPredictor on the same weights, with the `shapes` example set."""
    p = SamPredictor(build_sam("vit_t", small_checkpoint).eval())
    p.set_image(example("shapes"))
    return p


@pytest.fixture()
def session(backend, tmp_path):
    return DemoSession(backend, tmp_path)


@pytest.fixture()
def loaded(session):
    return session, session.load(SessionState(), example("shapes"), "shapes")


def _encoder_runs(backend) -> list[int]:
    """A counter of image-encoder forward passes on the backend's model (a list holding one int)."""
    count = [0]
    backend.model.image_encoder.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def _downloaded(state: SessionState) -> tuple[np.ndarray, dict]:
    png, js = state.downloads
    return np.asarray(Image.open(png)), json.loads(js.read_text())


def test_examples_are_small_rgb_images():
    for name in EXAMPLES:
        img = example(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert 300 <= max(img.shape[:2]) <= 500 and img.std() > 20, name
    with pytest.raises(KeyError, match="choose one of"):
        example("nope")


def test_a_click_gives_the_predictors_mask_and_embeds_once(session, reference, backend):
    runs = _encoder_runs(backend)
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
    png, doc = _downloaded(state)
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
    png, doc = _downloaded(state)
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


def test_rle_round_trips_and_matches_pycocotools():
    rng = np.random.default_rng(0)
    for mask in [rng.random((37, 53)) > 0.5, np.ones((4, 5), bool), np.zeros((6, 3), bool), np.eye(5, dtype=bool)]:
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size and np.array_equal(rle_decode(rle), mask)
    mask = rng.random((37, 53)) > 0.5
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]
    assert rle_encode(np.array([[0, 1], [0, 1]], bool))["counts"] == [2, 2]  # column-major
    mask_utils = pytest.importorskip("pycocotools.mask")
    compressed = masks_json(mask[None], np.array([0.5]), "x", {})["annotations"][0]["segmentation"]
    assert isinstance(compressed["counts"], str)
    assert np.array_equal(mask_utils.decode({**compressed, "counts": compressed["counts"].encode()}), mask)
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle_encode(mask), 37, 53)), mask)


def test_label_png_of_several_masks():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2], masks[1, :, :2], masks[2, 3, 3] = True, True, True
    labels = np.asarray(mask_png(masks))
    assert labels.tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [2, 2, 0, 0], [2, 2, 0, 3]]


def test_segment_everything_reuses_the_embedding_and_equals_the_generator(loaded, backend, small_checkpoint):
    session, state = loaded
    runs = _encoder_runs(backend)
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


# The page in a real browser


@pytest.fixture()
def chrome_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip that says what to install (checked before the model fixtures)."""
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[dev]')")
    pytest.importorskip("gradio", reason="the browser test needs gradio (pip install -e '.[dev]')")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver): "
            f"chromium {'found' if chromium else 'missing'}, chromedriver {'found' if driver else 'missing'}"
        )
    return chromium, driver


def _chrome(paths: tuple[str, str], download_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    flags += "--disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1280,1000"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={download_dir.parent / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value is not None and (isinstance(value, np.ndarray) or value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _shown_as(img, picture: Image.Image) -> np.ndarray | None:
    """The element's screenshot (int RGB) when it shows `picture`: under 3% of its pixels differ by more than 24 in
    a channel (the browser's scaling differs from Pillow's at edges only), else None."""
    from io import BytesIO

    shot = np.asarray(Image.open(BytesIO(img.screenshot_as_png)).convert("RGB")).astype(int)
    want = np.asarray(picture.convert("RGB").resize(shot.shape[1::-1], Image.BILINEAR)).astype(int)
    off = float((np.abs(shot - want).max(-1) > 24).mean())
    return shot if off < 0.03 else None


def test_clicking_in_chromium_shows_the_mask_and_downloads_it(chrome_paths, backend, reference, tmp_path):
    from urllib.request import urlopen

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from mobilesam.demo.app import serve

    downloads = tmp_path / "downloads"
    browser = _chrome(chrome_paths, downloads)
    port = _free_port()
    app = serve(backend, port=port, block=False, out_dir=tmp_path / "served")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        _wait("the page", lambda: browser.find_elements(By.ID, "load-example"))
        browser.find_element(By.ID, "load-example").click()
        img = _wait("the example image", lambda: browser.find_elements(By.CSS_SELECTOR, "#canvas img"))[0]
        _wait("the image to load", lambda: browser.execute_script("return arguments[0].complete", img))
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [
            480,
            360,
        ]
        # the page shows the example once its screenshot is the example's pixels (rendering may lag `complete`)
        before = _wait("the example drawn", lambda: _shown_as(img, Image.fromarray(example("shapes"))))

        # Click on the disc, 100 px left of the image's centre (WebDriver offsets are from the centre)
        ActionChains(browser).move_to_element_with_offset(img, -100, -30).click().perform()
        status = browser.find_element(By.ID, "status")
        _wait("the mask", lambda: "Mask of" in status.text)
        assert "decoder" in status.text and "image encoder" in status.text

        # The returned data: the served overlay is the session's picture of the mask for the clicked point
        browser.find_element(By.ID, "download-json").click()
        path = _wait("the JSON download", lambda: next(downloads.glob("masks*.json"), None))
        doc = _wait("the download to finish", lambda: json.loads(path.read_text() or "null"))
        (ann,) = doc["annotations"]
        mask = rle_decode(ann["segmentation"])
        (point,) = doc["prompts"]["points"]
        scale = img.size["width"] / 480
        assert abs(point[0] - (240 - 100 / scale)) <= 2 and abs(point[1] - (180 - 30 / scale)) <= 2
        want, _, _ = reference.predict(np.array([point]), np.array([1]), multimask_output=False)
        assert np.array_equal(mask, want[0]) and 0 < mask.sum() < mask.size
        img = browser.find_element(By.CSS_SELECTOR, "#canvas img")
        served = np.asarray(Image.open(urlopen(img.get_attribute("src"), timeout=10)).convert("RGB"))
        drawn = picture(example("shapes"), mask[None], Prompts(points=[point], labels=[1]), everything=False)
        assert np.array_equal(served, np.asarray(drawn))

        # The screenshot: the pixels that changed are the mask's, blended toward the overlay colour
        after = _wait("the overlay drawn", lambda: _shown_as(img, drawn), timeout=30.0)
        assert after.shape == before.shape
        shown = np.asarray(Image.fromarray(mask).resize(after.shape[1::-1], Image.NEAREST))
        changed = np.abs(after - before).max(-1) > 12
        assert abs(changed.mean() - shown.mean()) < 0.05, (changed.mean(), shown.mean())
        assert (changed == shown).mean() > 0.9
        blended = np.asarray(drawn.resize(after.shape[1::-1], Image.BILINEAR)).astype(int)
        assert np.median(np.abs(after - blended)[shown]) < 12
        toward = ((after - before)[shown] * (MASK_COLOUR - before[shown])).sum(-1)  # moved toward the blue
        assert (toward > 0).mean() > 0.9

        # Nothing was fetched from anywhere but this server (no CDN fonts or scripts, no analytics)
        urls = [
            json.loads(e["message"])["message"]["params"]["request"]["url"]
            for e in browser.get_log("performance")
            if '"Network.requestWillBeSent"' in e["message"]
        ]
        remote = [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:")) and "//127.0.0.1:" not in u]
        assert urls and not remote, remote

        # An unreadable upload: a message in the page, the image and its mask stay
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8\xff not a jpeg")
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file], input[type=file]").send_keys(str(broken))
        _wait("the error message", lambda: "cannot read broken.jpg" in status.text)
        assert "Traceback" not in browser.page_source and browser.find_elements(By.CSS_SELECTOR, "#canvas img")
    finally:
        browser.quit()
        app.close()
