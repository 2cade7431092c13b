"""The demo's page in a real browser (Debian's chromium + chromedriver through selenium)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilesam.demo import MODES
from mobilesam.demo.drawing import MASK_COLOUR, picture
from mobilesam.demo.examples import example
from mobilesam.demo.files import rle_decode
from mobilesam.demo.session import Prompts

POS, NEG, BOX = MODES
# gradio's own queue code, under pandas 3
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


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
        # a new page shows the first example before any click
        first = _wait("the first example", lambda: browser.find_elements(By.CSS_SELECTOR, "#canvas img"))[0]
        _wait("the first example drawn", lambda: _shown_as(first, Image.fromarray(example("shapes"))))
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
