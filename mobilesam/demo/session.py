"""The demo's logic without a browser: one user's image, prompts, undo history, masks, timings and downloads."""

from __future__ import annotations

import copy
import functools
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobilesam.io import load_image

from .base import Backend, Decoded, image_key
from .drawing import blend, picture
from .files import write_downloads
from .gate import SessionGate

log = logging.getLogger(__name__)

# Images whose long side exceeds this are refused (the page says so): the overlay is drawn and sent at full size
MAX_SIDE = 4096
# Uploads larger than this are refused by the server before they are read
MAX_FILE_MB = 50
MODES = ("positive point", "negative point", "box (two clicks)")
MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE = 4, 64
# Points per object, and clicks kept for undo: what one session holds stays bounded, however fast it clicks
MAX_POINTS, MAX_HISTORY = 64, 100


class DemoError(ValueError):
    """Bad input from the page (no image, a click outside, an unreadable or huge file): shown as a message."""


@dataclass
class Prompts:
    """One object's prompts in original pixels: points with labels, a box, and a box's first corner."""

    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    corner: list[float] | None = None

    def empty(self) -> bool:
        return not self.points and self.box is None

    def as_dict(self) -> dict[str, Any]:
        return {"points": self.points, "labels": self.labels, "box": self.box}


@dataclass
class SessionState:
    """What one browser session holds (the image embedding itself lives in the backend's cache, keyed for this
    session; `gate` orders the session's events and names it)."""

    image: np.ndarray | None = None
    key: str | None = None
    name: str = ""
    prompts: Prompts = field(default_factory=Prompts)
    history: list[Prompts] = field(default_factory=list)
    multimask: bool = False
    result: Decoded | None = None
    chosen: int = 0
    everything: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    embed_cached: bool = False
    message: str = ""
    downloads: tuple[Path, Path] | None = None
    gate: SessionGate = field(default_factory=SessionGate, compare=False, repr=False)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class DemoSession:
    """Turns page events into masks with a backend; every method takes and returns the user's `SessionState`.

    Args:
        backend: the model (`TorchBackend` or `RuntimeBackend`).
        out_dir: where the downloads are written (one sub-folder per result).
    """

    def __init__(self, backend: Backend, out_dir: str | Path) -> None:
        self.backend = backend
        self.out_dir = Path(out_dir)

    # Images
    def start(self, image: np.ndarray, name: str) -> SessionState:
        """A new session's first state: `image` shown before the first click, embedded at that click (opening the
        page costs no encoder run)."""
        h, w = image.shape[:2]
        state = SessionState(image=image, key=image_key(image), name=name)
        state.message = f"This is {name} ({w}x{h}): click on it to segment an object, or upload your own image."
        return state

    def load(self, state: SessionState, image: np.ndarray, name: str = "image", shared: bool = False) -> SessionState:
        """Sets a new image (HxWx3 uint8 RGB): embeds it once (or finds it cached) and clears the prompts.

        The embedding is cached under a key of this session (`state.gate.sid`) unless `shared` (the example
        images): no session learns whether another one has embedded an image.
        """
        h, w = image.shape[:2]
        if max(h, w) > MAX_SIDE:
            raise DemoError(
                f"the image {name} is {w}x{h} pixels; the demo takes at most {MAX_SIDE} pixels on the long side: "
                "resize it and upload it again"
            )
        key = image_key(image) if shared else f"{state.gate.sid}:{image_key(image)}"
        start = time.perf_counter()
        cached = self.backend.embed(image, key)
        self._drop_files(state)
        state = SessionState(image=image, key=key, name=name, multimask=state.multimask, gate=state.gate)
        state.timings["embed"] = time.perf_counter() - start
        state.embed_cached = cached
        state.message = f"Loaded {name} ({w}x{h}). Click on the image to segment an object."
        return state

    def load_file(self, state: SessionState, path: str | Path) -> SessionState:
        """Reads an uploaded file (any format Pillow reads, converted as `mobilesam.io` says) and loads it."""
        path = Path(path)
        name = path.name
        try:
            with Image.open(path) as im:  # the header alone: refuse huge images before decoding them
                w, h = im.size
        except Exception as e:
            raise DemoError(f"cannot read {name} as an image ({type(e).__name__}: {e}); upload a PNG or JPEG") from e
        if max(w, h) > MAX_SIDE:
            raise DemoError(
                f"the image {name} is {w}x{h} pixels; the demo takes at most {MAX_SIDE} pixels on the long side: "
                "resize it and upload it again"
            )
        try:
            image = load_image(path)
        except Exception as e:
            raise DemoError(f"cannot read {name} as an image ({e}); upload a PNG or JPEG") from e
        return self.load(state, image, name)

    def _require_image(self, state: SessionState) -> np.ndarray:
        if state.image is None:
            raise DemoError("no image yet: upload one or pick an example first")
        return state.image

    # Prompts
    def click(self, state: SessionState, x: float, y: float, mode: str) -> SessionState:
        """A click at (x, y) original pixels: a positive or negative point, or a box corner (by `mode`)."""
        image = self._require_image(state)
        h, w = image.shape[:2]
        if not (0 <= x <= w and 0 <= y <= h):
            raise DemoError(f"the click ({x:.0f}, {y:.0f}) lies outside the {w}x{h} image; click on the image")
        if mode not in MODES:
            raise DemoError(f"unknown click mode {mode!r}; choose one of {', '.join(MODES)}")
        p = state.prompts
        if mode != MODES[2] and len(p.points) >= MAX_POINTS:
            raise DemoError(f"an object takes at most {MAX_POINTS} points: undo or clear, then click again")
        if state.everything:  # prompting starts afresh after segment-everything
            state.everything, state.result = False, None
        state.history = [*state.history[-(MAX_HISTORY - 1) :], copy.deepcopy(p)]  # undo reaches MAX_HISTORY back
        if mode == MODES[2]:
            if p.corner is None:
                p.corner = [float(x), float(y)]
                state.message = "Box: first corner set, click the opposite corner."
                return state
            (x0, y0), p.corner = p.corner, None
            p.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        else:
            p.points.append([float(x), float(y)])
            p.labels.append(1 if mode == MODES[0] else 0)
        try:
            return self._decode(state)
        except Exception:
            state.prompts = state.history.pop()  # a click that could not be decoded is not kept
            raise

    def undo(self, state: SessionState) -> SessionState:
        """Takes back the last click (a point, a box corner or a box)."""
        if not state.history:
            state.message = "Nothing to undo."
            return state
        state.prompts = state.history.pop()
        return self._decode(state)

    def clear(self, state: SessionState) -> SessionState:
        """Removes every prompt and mask; the image and its embedding stay."""
        state.prompts, state.history, state.result, state.everything = Prompts(), [], None, False
        state.downloads = self._drop_files(state)
        state.message = "Cleared."
        return state

    def set_multimask(self, state: SessionState, on: bool) -> SessionState:
        """Single mask or SAM's three candidates; decodes the current prompts again."""
        state.multimask = bool(on)
        if state.image is None or state.everything:
            return state
        return self._decode(state)

    def choose(self, state: SessionState, index: int) -> SessionState:
        """Shows (and offers for download) candidate `index` of a multimask result."""
        if state.result is None or state.everything or not 0 <= index < len(state.result.masks):
            raise DemoError("no candidate masks to choose from: click on the image with multimask output on")
        state.chosen = int(index)
        state.downloads = self._write(state)
        state.message = f"Mask {index + 1} chosen (predicted IoU {state.result.scores[index]:.3f})."
        return state

    def _decode(self, state: SessionState) -> SessionState:
        p = state.prompts
        if p.empty():
            state.result, state.downloads = None, self._drop_files(state)
            state.message = "No prompt left: click on the image."
            return state
        start = time.perf_counter()
        state.result = self.backend.decode(
            state.image,
            state.key,
            np.asarray(p.points, dtype=np.float64).reshape(-1, 2),
            np.asarray(p.labels, dtype=np.int64),
            None if p.box is None else np.asarray(p.box, dtype=np.float64),
            state.multimask,
        )
        embedded = self._embedded(state, state.result.embed_seconds)
        state.timings["decode"] = time.perf_counter() - start - (state.result.embed_seconds or 0.0)
        state.chosen = int(np.argmax(state.result.scores))  # SAM's habit: the candidate of highest predicted IoU
        state.downloads = self._write(state)
        area = int(state.result.masks[state.chosen].sum())
        state.message = f"Mask of {area} px (predicted IoU {state.result.scores[state.chosen]:.3f}).{embedded}"
        return state

    def _embedded(self, state: SessionState, seconds: float | None) -> str:
        """Records an encoder run made inside a decode (first click, or the embedding had left the cache)."""
        if seconds is None:
            return ""
        again = "embed" in state.timings
        state.timings["embed"], state.embed_cached = seconds, False
        return " The image was embedded again (its embedding had left the cache)." if again else ""

    def everything(
        self,
        state: SessionState,
        points_per_side: int,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
    ) -> SessionState:
        """Segments everything with an NxN grid of point prompts (SamAutomaticMaskGenerator; SAM's default
        thresholds: a mask is kept when its predicted IoU exceeds 0.88 and its stability score reaches 0.95)."""
        image = self._require_image(state)
        n = int(points_per_side)
        if not MIN_POINTS_PER_SIDE <= n <= MAX_POINTS_PER_SIDE:
            raise DemoError(f"points per side must be {MIN_POINTS_PER_SIDE}..{MAX_POINTS_PER_SIDE}, got {n}")
        if not self.backend.supports_everything:
            raise DemoError(
                "segment everything needs the PyTorch model: start the demo with --checkpoint (the exported "
                "graphs have no grid decoder)"
            )
        start = time.perf_counter()
        if not (0 <= pred_iou_thresh <= 1 and 0 <= stability_score_thresh <= 1):
            raise DemoError(
                f"the thresholds must lie in [0, 1], got predicted IoU {pred_iou_thresh} and stability "
                f"{stability_score_thresh}"
            )
        result = self.backend.everything(image, state.key, n, float(pred_iou_thresh), float(stability_score_thresh))
        self._embedded(state, result.embed_seconds)
        state.timings["everything"] = time.perf_counter() - start - (result.embed_seconds or 0.0)
        order = np.argsort([-int(m.sum()) for m in result.masks], kind="stable")  # large first: small stay visible
        state.result = Decoded(result.masks[order], result.scores[order])
        state.prompts, state.history, state.everything = Prompts(), [], True
        state.downloads = self._write(state)
        state.message = f"Segment everything: {len(result.masks)} masks from a {n}x{n} grid."
        if not len(result.masks):
            state.message += " None passed the quality filters: lower the thresholds (random weights need 0)."
        return state

    # What the page shows
    def shown_masks(self, state: SessionState) -> np.ndarray | None:
        """NxHxW masks drawn in the page and downloaded: the chosen candidate, or every mask after everything."""
        if state.result is None:
            return None
        if state.everything:
            return state.result.masks
        return state.result.masks[state.chosen : state.chosen + 1]

    def shown_scores(self, state: SessionState) -> np.ndarray:
        if state.result is None:
            return np.zeros(0, np.float32)
        return state.result.scores if state.everything else state.result.scores[state.chosen : state.chosen + 1]

    def render(self, state: SessionState) -> Image.Image | None:
        """The page's picture of the state (see `picture`), or None before an image is loaded."""
        if state.image is None:
            return None
        start = time.perf_counter()
        masks = self.shown_masks(state)
        canvas = picture(state.image, masks if masks is not None else np.zeros((0,)), state.prompts, state.everything)
        state.timings["render"] = time.perf_counter() - start
        return canvas

    def candidates(self, state: SessionState) -> list[tuple[Image.Image, str]]:
        """The three candidates of a multimask result, each drawn alone, with its predicted IoU."""
        if state.result is None or state.everything or len(state.result.masks) < 2:
            return []
        out = []
        for i, (m, s) in enumerate(zip(state.result.masks, state.result.scores)):
            mark = " (shown)" if i == state.chosen else ""
            out.append((Image.fromarray(blend(state.image, m)), f"mask {i + 1}: IoU {s:.3f}{mark}"))
        return out

    def status(self, state: SessionState) -> str:
        """One Markdown paragraph: the weights, the image, each step's time, and the last message."""
        lines = [f"**Model**: {self.backend.description} (img_size {self.backend.img_size})."]
        if state.image is not None:
            h, w = state.image.shape[:2]
            t = state.timings
            how = "found in the cache" if state.embed_cached else "computed once, then cached"
            encoder = f"image encoder {_ms(t['embed'])} ({how})" if "embed" in t else "image encoder at the first click"
            steps = [f"image {w}x{h}", encoder]
            if "decode" in t:
                steps.append(f"decoder {_ms(t['decode'])} per click")
            if "everything" in t:
                steps.append(f"segment everything {_ms(t['everything'])}")
            if "files" in t:
                steps.append(f"PNG + JSON files {_ms(t['files'])}")
            if "render" in t:
                steps.append(f"drawing {_ms(t['render'])}")
            lines.append("**Time**: " + " · ".join(steps) + ".")
        if state.message:  # escaped: a message may quote a file name or an error with <...> in it
            lines.append(state.message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
        return "\n\n".join(lines)

    def _drop_files(self, state: SessionState) -> None:
        """Removes the previous result's files: there is nothing to download now."""
        if state.downloads:
            shutil.rmtree(state.downloads[0].parent, ignore_errors=True)

    def _write(self, state: SessionState) -> tuple[Path, Path] | None:
        """Writes the shown masks' downloads, removing the previous result's files (the page offers the new)."""
        self._drop_files(state)
        masks = self.shown_masks(state)
        if masks is None or not len(masks):
            return None
        prompts = {**state.prompts.as_dict(), "mode": "everything" if state.everything else "prompts"}
        if state.multimask and not state.everything:
            prompts["candidate"] = state.chosen
        start = time.perf_counter()
        folder = self.out_dir / uuid.uuid4().hex
        paths = write_downloads(folder, masks, self.shown_scores(state), state.name, prompts)
        state.timings["files"] = time.perf_counter() - start
        return paths


def guarded(fn: Callable[..., SessionState]) -> Callable[..., SessionState]:
    """Wraps a handler: one event at a time per session, in arrival order (`SessionGate`), and `DemoError` or any
    other exception becomes the state's message, never a trace.

    The first argument of `fn` must be the `SessionState`; unexpected exceptions are logged with their traceback
    on the server's console.
    """

    @functools.wraps(fn)
    def run(state: SessionState, *args: Any) -> SessionState:
        with state.gate:
            try:
                return fn(state, *args)
            except DemoError as e:
                state.message = f"⚠️ {e}"
            except Exception as e:  # noqa: BLE001 (the page must show a message, whatever went wrong)
                log.exception("demo handler %s failed", getattr(fn, "__name__", fn))
                state.message = f"⚠️ Something went wrong: {type(e).__name__}: {e}"
            return state

    return run
