"""The demo's web page (Gradio): upload or pick an image, click to segment, download the masks."""

from __future__ import annotations

import functools
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

# Before gradio is imported: no usage statistics, no version check, nothing sent anywhere
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# gradio's files (uploads, the pictures sent to the page) go into a temporary folder of this process that is removed
# at exit (set before gradio is imported: some of its modules read it then); a GRADIO_TEMP_DIR of the user's is kept
if not os.environ.get("GRADIO_TEMP_DIR"):
    _GRADIO_TMP = tempfile.TemporaryDirectory(prefix="mobilesam_demo_gradio_")
    os.environ["GRADIO_TEMP_DIR"] = _GRADIO_TMP.name

try:
    import gradio as gr
except ImportError as e:  # pragma: no cover (the extra is missing)
    raise ImportError("the web demo needs gradio: pip install 'mobilesam[demo]'") from e

from .base import Backend
from .examples import EXAMPLES, example
from .session import (
    MAX_FILE_MB,
    MAX_POINTS_PER_SIDE,
    MAX_SIDE,
    MIN_POINTS_PER_SIDE,
    MODES,
    DemoSession,
    SessionState,
    guarded,
)

INTRO = f"""# MobileSAM: click to segment
Upload an image or pick an example, then click on it: **positive** points add to the object, **negative** points
take away, a **box** is two clicks (opposite corners). The image is embedded once; each click runs only the prompt
encoder and mask decoder. Images up to {MAX_SIDE} pixels on the long side and {MAX_FILE_MB} MB."""

# Events waiting in the server's queue (all sessions together); a burst beyond it is refused by gradio with a notice
QUEUE_SIZE = 64


def build_app(backend: Backend, out_dir: str | Path | None = None) -> gr.Blocks:
    """The page for one backend; downloads go to `out_dir` (default: a temporary folder the app owns, removed by
    `app.close()` and at exit).

    Every event goes through `DemoSession` and `guarded`: bad input becomes a message in the page, and a session's
    events run one at a time in the order they came. A new page shows the first example before any click.
    """
    owned = None
    if out_dir is None:
        owned = tempfile.TemporaryDirectory(prefix="mobilesam_demo_")  # its finalizer removes it at exit too
        out_dir = owned.name
    out_dir = Path(out_dir)
    session = DemoSession(backend, out_dir)
    first = next(iter(EXAMPLES))
    first_image, first_name = example(first), f"example '{first}'"

    def outputs(state: SessionState) -> tuple[Any, ...]:
        picture = session.render(state)
        png, js = state.downloads if state.downloads else (None, None)
        return (
            state,
            picture,
            session.status(state),
            gr.update(value=session.candidates(state), visible=state.multimask and not state.everything),
            gr.update(value=png, interactive=png is not None),
            gr.update(value=js, interactive=js is not None),
        )

    def handler(fn: Any) -> Any:
        safe = guarded(fn)

        @functools.wraps(fn)  # gradio reads the signature: a gr.SelectData parameter gets the event
        def run(state: SessionState | None, *args: Any) -> tuple[Any, ...]:
            return outputs(safe(state if state is not None else SessionState(), *args))

        return run

    def on_upload(state: SessionState, path: str | None) -> SessionState:
        if path is None:
            return state
        return session.load_file(state, path)

    def on_example(state: SessionState, name: str) -> SessionState:
        return session.load(state, example(name), f"example '{name}'", shared=True)

    def on_click(state: SessionState, mode: str, evt: gr.SelectData) -> SessionState:
        x, y = evt.index
        return session.click(state, float(x), float(y), mode)

    def on_choose(state: SessionState, evt: gr.SelectData) -> SessionState:
        return session.choose(state, int(evt.index))

    # gradio's files (uploads, pictures sent) older than a session's life go, and all of them when the server stops
    with gr.Blocks(title="MobileSAM demo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        # each session starts on the first example (a callable: called per session, so each gets its own gate);
        # an idle session's image and masks go after an hour
        state = gr.State(lambda: session.start(first_image, first_name), time_to_live=3600)
        gr.Markdown(INTRO)
        if backend.random_weights:
            gr.Markdown(
                "⚠️ **Random weights**: no checkpoint was given and no `outputs/demo/*/mobile_sam.pt` was found, "
                "so the model is randomly initialised and its masks mean nothing. Start it with "
                "`mobilesam demo --checkpoint mobile_sam.pt`.",
                elem_id="random-weights",
            )
        elif backend.toy:
            gr.Markdown(
                f"⚠️ **Toy model**: {backend.toy}. For real masks, start the demo with "
                "`mobilesam demo --checkpoint mobile_sam.pt` (the official weights, or a real training run's).",
                elem_id="toy-model",
            )
        with gr.Row():
            with gr.Column(scale=3):
                first_state = session.start(first_image, first_name)
                image = gr.Image(
                    session.render(first_state),
                    label="image: click to segment",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="canvas",
                    buttons=[],
                )
                with gr.Row():
                    png = gr.DownloadButton("Mask PNG", interactive=False, elem_id="download-png")
                    js = gr.DownloadButton("Masks COCO RLE JSON", interactive=False, elem_id="download-json")
                status = gr.Markdown(session.status(first_state), elem_id="status")
            with gr.Column(scale=2):
                upload = gr.UploadButton("Upload an image", file_types=["image"], elem_id="upload")
                with gr.Row():
                    pick = gr.Dropdown(list(EXAMPLES), value=next(iter(EXAMPLES)), label="example", scale=2)
                    load = gr.Button("Load example", elem_id="load-example", scale=1)
                mode = gr.Radio(list(MODES), value=MODES[0], label="a click adds", elem_id="mode")
                multimask = gr.Checkbox(False, label="three candidate masks (multimask output)", elem_id="multimask")
                with gr.Row():
                    undo = gr.Button("Undo", elem_id="undo")
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Row():
                    per_side = gr.Slider(
                        MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE, value=16, step=1, label="points per side"
                    )
                    everything = gr.Button("Segment everything", elem_id="everything")
                with gr.Accordion("segment-everything thresholds (SAM's defaults)", open=False):
                    iou_thresh = gr.Slider(0, 1, value=0.88, step=0.01, label="predicted IoU above")
                    stability_thresh = gr.Slider(0, 1, value=0.95, step=0.01, label="stability score at least")
                candidates = gr.Gallery(
                    label="candidates (click one to show it)",
                    columns=3,
                    height=180,
                    format="png",
                    visible=False,
                    allow_preview=False,
                    elem_id="candidates",
                )

        out = [state, image, status, candidates, png, js]
        # one queue for every event of every session (served in arrival order, one at a time: the model runs one
        # at a time anyway); every click is queued (gradio's default drops clicks made while one is pending)
        one = {"concurrency_id": "demo"}
        many = {"concurrency_id": "demo", "trigger_mode": "multiple"}
        upload.upload(handler(on_upload), [state, upload], out, **one)
        load.click(handler(on_example), [state, pick], out, **one)
        image.select(handler(on_click), [state, mode], out, **many)
        undo.click(handler(session.undo), [state], out, **many)
        clear.click(handler(session.clear), [state], out, **many)
        multimask.change(handler(session.set_multimask), [state, multimask], out, **one)
        everything.click(handler(session.everything), [state, per_side, iou_thresh, stability_thresh], out, **one)
        candidates.select(handler(on_choose), [state], out, **one)
    app.demo_out_dir = out_dir
    app.demo_owned = [owned] if owned is not None else []  # temporary folders that go with the app
    return app


def _remove_owned(app: gr.Blocks) -> None:
    for folder in getattr(app, "demo_owned", []):
        folder.cleanup()


def serve(
    backend: Backend, host: str = "127.0.0.1", port: int = 7860, block: bool = True, out_dir: str | Path | None = None
) -> gr.Blocks:
    """Builds the page and serves it on host:port (no share link, no analytics, no server-side rendering).

    The demo's files go when the server stops (Ctrl-C, SIGTERM or SIGHUP with `block=True`; `app.close()` with
    `block=False`, when the server runs in a background thread): the downloads' temporary folder (unless `out_dir`
    is given) and gradio's files (its uploads and pictures; its folder, unless GRADIO_TEMP_DIR was set, at exit).
    Events are served one at a time in arrival order (one queue, `concurrency_id` "demo"), at most `QUEUE_SIZE`
    waiting.
    """
    app = build_app(backend, out_dir)
    close = app.close

    def close_and_clean(*args: Any, **kwargs: Any) -> None:
        try:
            close(*args, **kwargs)
        finally:
            _remove_owned(app)

    app.close = close_and_clean
    app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    handlers = _stop_on_signals() if block else {}
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=not block,
            max_file_size=f"{MAX_FILE_MB}mb",
            allowed_paths=[str(app.demo_out_dir)],
            ssr_mode=False,
            quiet=not block,
            footer_links=[],
            mcp_server=False,
            enable_monitoring=False,
            pwa=False,
        )
    except BaseException:  # it did not start
        _remove_owned(app)
        raise
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
    if block:  # the server has stopped: Ctrl-C or a signal
        _remove_owned(app)
    return app


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP stop a blocking server as Ctrl-C does (gradio then closes it and `serve` cleans up);
    returns the handlers replaced. Only the main thread may set them."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    sigs = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    return {sig: signal.signal(sig, interrupt) for sig in sigs}
