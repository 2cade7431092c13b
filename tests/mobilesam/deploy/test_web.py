"""The web format: the page's JavaScript against Pillow and pycocotools (Node.js), the folder and server checks, and
the exported page in headless Chromium against `OnnxPredictor` (WASM, and WebGPU where Chromium has an adapter)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilesam.deploy import web
from tests.helpers import remote_requests

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "web"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("the page's JavaScript tests need Node.js (apt-get install nodejs)")
    return node


def _run_node(script: str, payload: dict) -> dict:
    """Runs an ES module `script` (importing web/js/*.js) with `payload` on stdin; returns its JSON stdout."""
    out = subprocess.run(
        [_node(), "--input-type=module", "-e", script],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=WEB,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_page_resizes_exactly_as_pillow():
    """Bit-exact against `mobilesam.transforms.resize_image` (Pillow's bilinear), down, up, thin and 1-pixel sides."""
    from mobilesam.transforms import resize_image

    rng = np.random.default_rng(0)
    cases = [(300, 410, 256), (420, 290, 256), (37, 1000, 256), (1000, 3, 64), (2000, 19, 1024), (5, 7, 1024)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w, _ in cases]
    script = """
import { resizeLongSide } from './js/resize.js';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const out = JSON.parse(text).cases.map(([h, w, s, pixels]) => {
  const r = resizeLongSide(Uint8Array.from(Buffer.from(pixels, 'base64')), w, h, 3, s);
  return [r.h, r.w, Buffer.from(r.data).toString('base64')];
});
console.log(JSON.stringify(out));
"""
    import base64

    payload = {"cases": [[h, w, s, base64.b64encode(im.tobytes()).decode()] for (h, w, s), im in zip(cases, images)]}
    for ((h, w, s), im), (oh, ow, data) in zip(zip(cases, images), _run_node(script, payload)):
        want = np.asarray(resize_image(im, s))
        got = np.frombuffer(base64.b64decode(data), np.uint8).reshape(oh, ow, 3)
        assert got.shape == want.shape and np.array_equal(got, want), (h, w, s)


def test_the_page_writes_coco_rle_as_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    masks = [rng.random((13, 17)) > 0.5, np.zeros((4, 6), bool), np.ones((5, 3), bool)]
    big = np.zeros((300, 200), bool)
    big[40:260, 30:170] = True  # long runs: several characters a count
    masks.append(big)
    script = """
import { masksJson } from './js/rle.js';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const out = JSON.parse(text).masks.map(([h, w, m]) => masksJson(Uint8Array.from(m), 0.5, h, w, 'x.png', {}));
console.log(JSON.stringify(out));
"""
    payload = {"masks": [[*m.shape, m.astype(int).ravel().tolist()] for m in masks]}
    for m, doc in zip(masks, _run_node(script, payload)):
        (ann,) = doc["annotations"]
        want = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ann["segmentation"]["counts"] == want["counts"].decode() and ann["segmentation"]["size"] == list(m.shape)
        assert ann["area"] == int(m.sum()) and ann["bbox"] == [int(v) for v in mask_utils.toBbox(want)]


# The folder and the server


def _fake_folder(root: Path) -> Path:
    """A folder with every file a web export has (tiny stand-ins) and a consistent model.json."""
    for f in (*web.PAGE_FILES, *(f"ort/{f}" for f in web.ORT_FILES)):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    (root / "model").mkdir()
    models = {"fp32": {}}
    for role in ("encoder", "decoder"):
        (root / "model" / f"{role}.onnx").write_bytes(b"12345")
        models["fp32"][role] = {"path": f"{role}.onnx", "bytes": 5, "sha256": "0" * 64}
    (root / "model" / "model.json").write_text(json.dumps({"img_size": 256, "models": models}))
    return root


def test_web_folders_that_are_not_exports_are_refused_in_one_line(tmp_path, capsys):
    from mobilesam.cli import main

    folder = _fake_folder(tmp_path / "site")
    assert web.check_folder(folder)["img_size"] == 256
    (folder / "model" / "decoder.onnx").write_bytes(b"123")
    with pytest.raises(ValueError, match=r"decoder.onnx \(fp32 decoder\) is 3 bytes, model.json records 5 bytes"):
        web.check_folder(folder)
    (folder / "model" / "decoder.onnx").unlink()
    with pytest.raises(ValueError, match=r"decoder.onnx \(fp32 decoder\) is missing"):
        web.check_folder(folder)
    (folder / "model" / "model.json").write_text("{")
    with pytest.raises(ValueError, match="is not a web export's model.json"):
        web.check_folder(folder)
    (folder / "ort" / web.ORT_FILES[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"missing ort/ort-wasm-simd-threaded.jsep.wasm\)"):
        web.check_folder(folder)
    for bad, why in ((tmp_path / "nothing", "does not exist"), (folder / "index.html", "is a file, not a folder")):
        assert main(["web", str(bad)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and "--format web" in err[0], err
    with pytest.raises(ValueError, match="port=70000"):
        web.make_server(_fake_folder(tmp_path / "ok"), port=70000)


def test_the_server_isolates_the_page_and_serves_wasm_and_modules(tmp_path):
    server = web.serve(_fake_folder(tmp_path / "site"), port=0)
    try:
        base = f"http://127.0.0.1:{server.server_port}/"
        for path, mime in (("ort/ort.min.mjs", "text/javascript"), ("ort/ort-wasm-simd-threaded.jsep.wasm", "wasm")):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                assert mime in r.headers["Content-Type"], (path, r.headers["Content-Type"])
                assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{server.server_port}"):
            web.make_server(tmp_path / "site", port=server.server_port)  # the port is taken
    finally:
        server.shutdown()
        server.server_close()


def test_export_without_onnxruntime_web_says_to_run_npm_ci(tmp_path, monkeypatch):
    src = tmp_path / "web"
    for f in (*web.PAGE_FILES, "package.json"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(WEB / f, src / f)
    monkeypatch.setenv("MOBILESAM_WEB_DIR", str(src))
    with pytest.raises(FileNotFoundError, match=f"run `npm ci --prefix {src}`"):
        web.require()
    (src / "js" / "rle.js").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing js/rle.js\)"):
        web.require()


# The exported page in headless Chromium


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip that says what to install."""
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[dev]')")
    paths = shutil.which("chromium"), shutil.which("chromedriver")
    if None in paths:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium-driver)")
    return paths


@pytest.fixture(scope="module")
def site(chromium, exported_small, tmp_path_factory) -> Path:
    """A web folder around the session's ONNX export of the small test model (fp32 and int8: `web.assemble`, what
    `mobilesam export --format web` puts around the graphs it writes)."""
    try:
        web.require()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    onnx = exported_small("onnx")
    out = tmp_path_factory.mktemp("web")
    files = {}
    for role in ("encoder", "decoder", "encoder_int8", "decoder_int8"):
        files[role] = out / "model" / f"{role}.onnx"
        files[role].parent.mkdir(exist_ok=True)
        os.link(onnx / f"{role}.onnx", files[role])
    info = web.assemble(out, files, img_size=256)
    assert info["download_bytes"]["int8"] < info["download_bytes"]["fp32"]
    return out


@pytest.fixture(scope="module")
def browser(chromium):
    from tests.helpers import headless_chromium

    driver = headless_chromium(*chromium, performance_log=True)
    yield driver
    driver.quit()


def _state(browser) -> dict:
    return browser.execute_script("return window.mobilesam ? window.mobilesam.state() : {}")


def _wait_state(browser, states: tuple[str, ...], timeout: float = 60.0, points: int | None = None) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = _state(browser)
        if s.get("state") in states and (points is None or len(s["points"]) == points):
            return s
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for the page to be {states}: {_state(browser)}")


def _open(browser, server, query: str = "") -> dict:
    browser.get(f"http://127.0.0.1:{server.server_port}/{query}")
    return _wait_state(browser, ("ready", "error"))


def _upload(browser, path: Path, states=("encoded",), timeout: float = 60.0) -> dict:
    from selenium.webdriver.common.by import By

    browser.execute_script("document.body.dataset.state = 'uploading'")  # not the state of the last upload
    browser.find_element(By.ID, "file").send_keys(str(path))
    return _wait_state(browser, (*states, "error"), timeout=timeout)


def _page_mask(browser) -> tuple[np.ndarray, dict]:
    from mobilesam.rle import decode

    doc = browser.execute_script("return window.mobilesam.maskDocument()")
    (ann,) = doc["annotations"]
    return decode(ann["segmentation"]).view(bool), doc


def _agreement(browser, predictor, image: np.ndarray, multimask: bool = False) -> float:
    """Pixel agreement of the page's mask with `OnnxPredictor`'s for the prompts the page used."""
    mask, doc = _page_mask(browser)
    p = doc["prompts"]
    kwargs = {"points": [p["points"]], "labels": [p["labels"]]} if p["points"] else {}
    if p["box"]:
        kwargs["bboxes"] = [p["box"]]
    (r,) = predictor.predict(image, multimask_output=multimask, **kwargs)
    want = r.masks[int(np.argmax(r.scores))]
    assert mask.shape == want.shape and 0 < want.sum() < want.size
    return float((mask == want).mean())


def _segment_and_compare(browser, server, site: Path, tmp_path: Path, backend: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from mobilesam.demo.examples import example
    from mobilesam.deploy.onnx_runtime import OnnxPredictor

    predictor = OnnxPredictor(site / "model" / "encoder.onnx", site / "model" / "decoder.onnx", threads=2)
    image = example("shapes")
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    s = _upload(browser, path)
    assert s["state"] == "encoded" and (s["width"], s["height"]) == (480, 360), s
    overlay = browser.find_element(By.ID, "overlay")
    # a positive click on the disc, a negative shift-click (WebDriver offsets are from the element's centre)
    ActionChains(browser).move_to_element_with_offset(overlay, -100, -30).click().perform()
    _wait_state(browser, ("decoded",), points=1)
    ActionChains(browser).key_down(Keys.SHIFT).move_to_element_with_offset(overlay, 120, 60).click().key_up(
        Keys.SHIFT
    ).perform()
    s = _wait_state(browser, ("decoded",), points=2)
    assert s["labels"] == [1, 0] and s["backend"] == backend
    points_only = _page_mask(browser)[0]
    assert _agreement(browser, predictor, image) >= 0.999
    # a box dragged around the points, then the three masks of a point
    browser.find_element(By.ID, "mode-box").click()
    ActionChains(browser).move_to_element_with_offset(overlay, -200, -120).click_and_hold().move_by_offset(
        320, 240
    ).release().perform()
    end = time.monotonic() + 30
    while not (_state(browser)["box"] and _state(browser)["state"] == "decoded") and time.monotonic() < end:
        time.sleep(0.05)
    assert _state(browser)["box"] is not None
    assert _agreement(browser, predictor, image) >= 0.999
    browser.find_element(By.ID, "undo").click()  # the box goes, the two points stay
    end = time.monotonic() + 30
    while not (_state(browser)["box"] is None and _state(browser)["state"] == "decoded") and time.monotonic() < end:
        time.sleep(0.05)
    assert np.array_equal(_page_mask(browser)[0], points_only)
    browser.find_element(By.ID, "multimask").click()
    end = time.monotonic() + 30
    while len(browser.find_elements(By.CSS_SELECTOR, "#choices button")) != 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#choices button")) == 3
    assert _agreement(browser, predictor, image, multimask=True) >= 0.999
    times = browser.find_element(By.ID, "times").text
    assert "encode" in times and "decode" in times, times


def test_the_page_segments_as_onnx_runtime_on_wasm(browser, site, tmp_path):
    server = web.serve(site, port=0)
    try:
        s = _open(browser, server, "?backend=wasm")
        assert s["state"] == "ready" and s["backend"] == "wasm", s
        assert browser.execute_script("return crossOriginIsolated")  # the served headers allow WASM threads
        _segment_and_compare(browser, server, site, tmp_path, "wasm")

        # Bad input: a message in the page, the image and its mask stay
        (tmp_path / "notes.txt").write_text("not an image")
        assert "notes.txt is not an image (text/plain)" in _upload(browser, tmp_path / "notes.txt")["error"]
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        assert "cannot read broken.png" in _upload(browser, tmp_path / "broken.png")["error"]
        Image.new("RGB", (4100, 8)).save(tmp_path / "wide.png")
        s = _upload(browser, tmp_path / "wide.png")
        assert "wide.png is 4100x8 px: this page takes images up to 4096 px" in s["error"]
        assert s["width"] == 480 and _page_mask(browser)[0].shape == (360, 480)

        # Nothing was fetched from anywhere but this server
        urls, remote = remote_requests(browser)
        assert urls and not remote, remote
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_page_segments_as_onnx_runtime_on_webgpu(chromium, site, tmp_path):
    """WebGPU, on whatever adapter Chromium offers with --enable-unsafe-webgpu (here SwiftShader's software one: a
    minute to embed at 256, so one click). The page itself uses a software adapter only when asked to."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from mobilesam.demo.examples import example
    from mobilesam.deploy.onnx_runtime import OnnxPredictor
    from tests.helpers import headless_chromium

    browser = headless_chromium(*chromium, extra=("--enable-unsafe-webgpu",))
    server = web.serve(site, port=0)
    try:
        s = _open(browser, server, "?backend=webgpu")
        if s["state"] == "error" and "WebGPU is not available" in (s["error"] or ""):
            pytest.skip(f"headless Chromium offers no WebGPU adapter here (the page says: {s['error']})")
        assert s["state"] == "ready" and s["backend"] == "webgpu", s
        Image.fromarray(example("shapes")).save(tmp_path / "shapes.png")
        assert _upload(browser, tmp_path / "shapes.png", timeout=300)["state"] == "encoded"
        overlay = browser.find_element(By.ID, "overlay")
        ActionChains(browser).move_to_element_with_offset(overlay, -100, -30).click().perform()
        _wait_state(browser, ("decoded",), timeout=300, points=1)
        predictor = OnnxPredictor(site / "model" / "encoder.onnx", site / "model" / "decoder.onnx", threads=2)
        assert _agreement(browser, predictor, example("shapes")) >= 0.999
        # unasked, the page runs on WASM when the only adapter is a software one, and says so
        s = _open(browser, server, "")
        if s["backend"] == "wasm":
            assert "the only WebGPU adapter is a software one" in browser.find_element(By.ID, "backend").text
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()


def _broken_copy(site: Path, dst: Path) -> Path:
    """A copy of the export (hard links: the big files are not copied; change a file by replacing it)."""
    shutil.copytree(site, dst, copy_function=os.link)
    return dst


def test_a_broken_model_folder_gives_a_message_in_the_page(browser, site, tmp_path):
    missing = _broken_copy(site, tmp_path / "missing")
    (missing / "model" / "decoder.onnx").unlink()
    other_size = _broken_copy(site, tmp_path / "other_size")
    config = json.loads((site / "model" / "model.json").read_text())
    (other_size / "model" / "model.json").unlink()
    (other_size / "model" / "model.json").write_text(json.dumps({**config, "img_size": 512}))
    no_config = _broken_copy(site, tmp_path / "no_config")
    (no_config / "model" / "model.json").unlink()
    cases = {
        missing: "decoder.onnx is missing from the model folder (HTTP 404)",
        other_size: "was exported for img_size 256, but model.json says 512",
        no_config: "model/model.json is missing (HTTP 404)",
    }
    for folder, message in cases.items():
        if folder is not other_size:
            with pytest.raises((FileNotFoundError, ValueError)):
                web.make_server(folder, port=0)  # `mobilesam web` refuses it; a static host would serve it anyway
        handler = functools.partial(web._Handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            s = _open(browser, server, "?backend=wasm")
            assert s["state"] == "error" and message in s["error"] and "export" in s["error"], (folder.name, s)
        finally:
            server.shutdown()
            server.server_close()


def test_export_format_web_writes_a_checked_folder(small_checkpoint, tmp_path, capsys):
    """`mobilesam export --format web`: the page, the runtime and the graphs, checked, recorded in the sidecar."""
    from mobilesam.cli import main

    try:
        web.require()
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(str(e))
    out = tmp_path / "site"
    assert main(["export", str(small_checkpoint), "--out", str(out), "--format", "web"]) == 0, capsys.readouterr()
    config = web.check_folder(out)
    assert config["img_size"] == 256 and list(config["models"]) == ["fp32"]
    sidecar = json.loads((out / "mobile_sam.json").read_text())
    (check,) = sidecar["web"]["check"].values()
    assert (
        sidecar["web"]["onnxruntime_web"]
        == json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    )
    assert check and "model/encoder.onnx" in sidecar["files"] and "model/decoder.onnx" in sidecar["files"]
    assert not list(out.glob(".web.*"))  # the staging folder is gone
