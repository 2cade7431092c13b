"""The `web` format: a static folder (the page in `web/`, onnxruntime-web's runtime, the ONNX graphs) that segments
in the browser, and `serve`, which hosts it on loopback with the headers multi-threaded WASM needs.

The page's source lives in the repository's `web/` folder; onnxruntime-web comes from `web/node_modules` after
`npm ci --prefix web` (its WebAssembly is ~30 MB: not committed, not shipped in the wheel). The graphs are the ONNX
writer's (`mobilesam.deploy.onnx_export`), so the export check runs them with ONNX Runtime like `--format onnx`.

Folder written:
    index.html, style.css, js/*.js       the page (plain ES modules; the encoder and decoder run in a Web Worker)
    ort/                                 onnxruntime-web: ort.min.mjs and its WASM (WebGPU and WASM backends)
    model/encoder*.onnx, decoder*.onnx   the graphs (float by default, `_fp16`, `_int8` as asked)
    model/model.json                     img_size, each precision's files with bytes and sha256, the examples
    examples/*.png                       the demo's example images
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .formats import ExportOptions

SUFFIX = ".onnx"
PAGE_FILES = ("index.html", "style.css", "js/main.js", "js/worker.js", "js/resize.js", "js/rle.js")
ORT_PACKAGE = "node_modules/onnxruntime-web"
# ort.min.mjs runs the WebGPU and WASM backends with one WebAssembly build (JSEP)
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
MAX_IMAGE_SIDE = 4096  # the page's limit (web/js/main.js MAX_SIDE), recorded in model.json
# what multi-threaded WASM needs (SharedArrayBuffer): a cross-origin isolated page
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}


def source_dir() -> Path:
    """The page's source: `$MOBILESAM_WEB_DIR`, else the repository's `web/` beside the `mobilesam` package."""
    return Path(os.environ.get("MOBILESAM_WEB_DIR") or Path(__file__).resolve().parents[2] / "web")


def _pinned_version(src: Path) -> str:
    return json.loads((src / "package.json").read_text())["dependencies"]["onnxruntime-web"]


def require() -> Path:
    """The page's source folder, with onnxruntime-web installed at the pinned version; else an error with the fix."""
    from .onnx_export import require as require_onnx

    src = source_dir()
    missing = [f for f in (*PAGE_FILES, "package.json") if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the web page's source is not in {src} (missing {', '.join(missing)}): export --format web from a "
            "clone of the repository, or set MOBILESAM_WEB_DIR to its web/ folder"
        )
    dist = src / ORT_PACKAGE / "dist"
    absent = [f for f in ORT_FILES if not (dist / f).is_file()]
    if absent:
        raise FileNotFoundError(
            f"onnxruntime-web is not installed in {src / 'node_modules'} (missing {', '.join(absent)}): "
            f"run `npm ci --prefix {src}` (Node.js 18 or newer)"
        )
    installed = json.loads((src / ORT_PACKAGE / "package.json").read_text())["version"]
    if installed != _pinned_version(src):
        raise FileNotFoundError(
            f"{src / ORT_PACKAGE} is version {installed} but web/package.json pins {_pinned_version(src)}: "
            f"run `npm ci --prefix {src}`"
        )
    require_onnx()  # the graphs are the ONNX writer's
    return src


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy(src: Path, dst: Path) -> Path:
    """Copies `src` to `dst` atomically (a temp name, then rename) and checks the copy's size."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    if tmp.stat().st_size != src.stat().st_size:
        tmp.unlink()
        raise OSError(f"copying {src} to {dst} wrote {tmp.stat().st_size} bytes of {src.stat().st_size}: disk full?")
    os.replace(tmp, dst)
    return dst


def _write_text(path: Path, text: str) -> Path:
    """Writes `text` atomically and reads it back."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    if path.read_text() != text:
        raise OSError(f"{path} does not read back as written: check the disk")
    return path


def _examples(out: Path) -> list[str]:
    from PIL import Image

    from ..demo.examples import EXAMPLES, example

    paths = []
    for name in EXAMPLES:
        path = out / "examples" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(example(name)).save(tmp, format="PNG")
        with Image.open(tmp) as im:
            im.verify()  # reads back as a whole PNG
        os.replace(tmp, path)
        paths.append(path.relative_to(out).as_posix())
    return paths


def _model_entry(files: dict[str, Path], model_dir: Path, tag: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for role in ("encoder", "decoder"):
        p = files[f"{role}{tag}"]
        entry[role] = {"path": p.relative_to(model_dir).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)}
    entry["bytes"] = entry["encoder"]["bytes"] + entry["decoder"]["bytes"]
    return entry


def write(model: Any, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): the ONNX writer's graphs into `out_dir/model`, the page and
    its runtime around them (`assemble`), then the export check of every pair (`mobilesam.deploy.guard`).

    Returns:
        Role ("encoder", "decoder", with --quantize "encoder_int8", "decoder_int8") -> path of the graphs in
        `out_dir/model`, and the sidecar's description (the ONNX writer's, the runtime's version, the download size
        of each precision: page + runtime + graphs, and the check's figures).
    """
    from .onnx_export import write as write_onnx

    require()
    files, info = write_onnx(model, Path(out_dir) / "model", options)
    page = assemble(out_dir, files, int(model.img_size), options.precision, options.single_mask)
    return files, {**info, **page, "check": _check(model, files, options.precision)}


def assemble(
    out_dir: str | os.PathLike,
    files: dict[str, Path],
    img_size: int,
    precision: str = "fp32",
    single_mask: bool = False,
) -> dict[str, Any]:
    """Puts the page, onnxruntime-web and the examples around ONNX graphs already in `out_dir/model`, and writes
    `model/model.json` (img_size, each precision's files with bytes and sha256); the folder is checked after.

    Args:
        out_dir: the web folder.
        files: role -> ONNX file in `out_dir/model` ("encoder", "decoder", optionally "encoder_int8", "decoder_int8").
        img_size: the graphs' input size.
        precision: the float graphs' precision ("fp32" or "fp16").
        single_mask: the decoder was exported with `--single-mask`.

    Returns:
        The sidecar's description of the page: its runtime's version and the download size of each precision.
    """
    src = require()
    out = Path(out_dir)
    model_dir = out / "model"
    for f in PAGE_FILES:
        _copy(src / f, out / f)
    dist = src / ORT_PACKAGE / "dist"
    for f in ORT_FILES:
        _copy(dist / f, out / "ort" / f)
    models = {precision: _model_entry(files, model_dir, "")}
    if "encoder_int8" in files:
        models["int8"] = _model_entry(files, model_dir, "_int8")
    config = {
        "format": "mobilesam-web",
        "version": 1,
        "img_size": img_size,
        "default": precision,
        "models": models,
        "examples": _examples(out),
        "onnxruntime_web": _pinned_version(src),
        "max_image_side": MAX_IMAGE_SIDE,
        "num_masks": 1 if single_mask else 4,
    }
    _write_text(model_dir / "model.json", json.dumps(config, indent=1) + "\n")
    check_folder(out)
    shell = sum((out / f).stat().st_size for f in PAGE_FILES) + sum((out / "ort" / f).stat().st_size for f in ORT_FILES)
    return {
        "page": "index.html",
        "onnxruntime_web": config["onnxruntime_web"],
        "download_bytes": {p: shell + m["bytes"] for p, m in models.items()},
        "serve": "mobilesam web DIR (COOP/COEP headers for multi-threaded WASM)",
    }


def _check(model: Any, files: dict[str, Path], precision: str) -> dict[str, Any]:
    """The export check (`mobilesam.deploy.guard`) of every pair the page may load, run with ONNX Runtime: the
    page feeds them exactly as `OnnxPredictor` does (the browser test holds the page to it)."""
    from .formats import pairs
    from .guard import check_export, reference
    from .onnx_runtime import OnnxPredictor

    ref = reference(model)
    checks = {}
    for p, enc, dec in pairs(files, precision):
        label = f"{enc.name} + {dec.name}"
        checks[label] = check_export(label, OnnxPredictor(enc, dec), ref, p)
    return checks


def check_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """A web folder's model.json, after checking that the page, the runtime and every model file it lists are
    there with their recorded sizes (sha256 is checked by the page itself). Raises naming the first problem."""
    root = Path(folder)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"{root} {what}: pass the folder `mobilesam export SRC --format web --out DIR` wrote")
    config_path = root / "model" / "model.json"
    missing = [f for f in (*PAGE_FILES, *(f"ort/{f}" for f in ORT_FILES)) if not (root / f).is_file()]
    if not config_path.is_file():
        missing.append("model/model.json")
    if missing:
        raise FileNotFoundError(
            f"{root} is not a complete web export (missing {', '.join(missing)}): write it with "
            "`mobilesam export SRC --format web --out DIR`"
        )
    try:
        config = json.loads(config_path.read_text())
        entries = [(p, r, config["models"][p][r]) for p in config["models"] for r in ("encoder", "decoder")]
        int(config["img_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path} is not a web export's model.json ({e!r}): export the folder again") from e
    for precision, role, entry in entries:
        path = root / "model" / entry["path"]
        size = path.stat().st_size if path.is_file() else None
        if size != entry["bytes"]:
            found = "missing" if size is None else f"{size} bytes"
            raise ValueError(
                f"{path} ({precision} {role}) is {found}, model.json records {entry['bytes']} bytes: export again"
            )
    return config


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with cross-origin isolation headers, JavaScript and WebAssembly MIME types, no caching."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass  # one line per file would bury the address; errors reach the page


def make_server(folder: str | os.PathLike, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server (not yet serving) for a web export on http://127.0.0.1:`port`/ (0: a free port; its `server_port`
    says which), after checking the folder (`check_folder`) and the port."""
    check_folder(folder)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: choose a port from 1 to 65535 (or 0 for any free port)")
    handler = functools.partial(_Handler, directory=str(Path(folder).resolve()))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise OSError(f"cannot serve on 127.0.0.1:{port} ({e.strerror or e}): pick another port with --port") from e
    server.daemon_threads = True
    return server


def serve(folder: str | os.PathLike, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """Serves a web export on loopback in a daemon thread (`make_server`); `.shutdown()` stops it."""
    server = make_server(folder, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
