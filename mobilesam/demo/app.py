"""The demo's web page (Gradio): upload or pick an image, click to segment, download the masks."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

# Before gradio is imported: no usage statistics, no version check, nothing sent anywhere
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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


def build_app(backend: Backend, out_dir: str | Path | None = None) -> gr.Blocks:
    """The page for one backend; downloads go to `out_dir` (default: a fresh temporary folder).

    Every event goes through `DemoSession` and `guarded`: bad input becomes a message in the page.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mobilesam_demo_"))
    session = DemoSession(backend, out_dir)

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
        return session.load(state, example(name), f"example '{name}'")

    def on_click(state: SessionState, mode: str, evt: gr.SelectData) -> SessionState:
        x, y = evt.index
        return session.click(state, float(x), float(y), mode)

    def on_choose(state: SessionState, evt: gr.SelectData) -> SessionState:
        return session.choose(state, int(evt.index))

    with gr.Blocks(title="MobileSAM demo", analytics_enabled=False) as app:
        state = gr.State(None, time_to_live=3600)  # an idle session's image and masks go after an hour
        gr.Markdown(INTRO)
        if backend.random_weights:
            gr.Markdown(
                "⚠️ **Random weights**: no checkpoint was given and no `outputs/demo/*/mobile_sam.pt` was found, "
                "so the model is randomly initialised and its masks mean nothing. Start it with "
                "`mobilesam demo --checkpoint mobile_sam.pt`.",
                elem_id="random-weights",
            )
        with gr.Row():
            with gr.Column(scale=3):
                image = gr.Image(
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
                status = gr.Markdown(session.status(SessionState()), elem_id="status")
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
        upload.upload(handler(on_upload), [state, upload], out)
        load.click(handler(on_example), [state, pick], out)
        image.select(handler(on_click), [state, mode], out)
        undo.click(handler(session.undo), [state], out)
        clear.click(handler(session.clear), [state], out)
        multimask.change(handler(session.set_multimask), [state, multimask], out)
        everything.click(handler(session.everything), [state, per_side, iou_thresh, stability_thresh], out)
        candidates.select(handler(on_choose), [state], out)
    app.demo_out_dir = out_dir
    return app


def serve(
    backend: Backend, host: str = "127.0.0.1", port: int = 7860, block: bool = True, out_dir: str | Path | None = None
) -> gr.Blocks:
    """Builds the page and serves it on host:port (no share link, no analytics, no server-side rendering).

    With `block=False` the server runs in a background thread and the app is returned (`app.close()` stops it).
    """
    app = build_app(backend, out_dir)
    app.queue(default_concurrency_limit=2)
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
    return app
