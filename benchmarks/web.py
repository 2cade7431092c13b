"""The web page in headless Chromium: encode and per-click decode times beside ONNX Runtime's, and the download size.

A random (perturbed, image-dependent) vit_t at `--img-size` is exported with `--format web` (fp32 with its int8
files, and fp16), each export passing the export check. The page is served by `mobilesam web`'s server and driven
in headless Chromium (Debian's chromium and chromedriver): it opens the demo's `shapes` example, then, in
interleaved rounds with `OnnxPredictor` at the page's thread count,
- the encoder: the page's resize (Pillow's rule, in JavaScript) and encoder run in its Web Worker, as the page
  reports them, against `OnnxPredictor.embed` (PIL resize and the graph);
- the decode: one click (a positive point) to the mask at the original size, the page's decoder worker (prompt
  mapping, graph, threshold) against `OnnxPredictor.decode`.
The page's own times are used (`performance.now()` in the worker), not the WebDriver round trip. The download is
what a first visit fetches: the page, onnxruntime-web (JavaScript and WebAssembly) and the two graphs.
WebGPU is measured where headless Chromium offers an adapter (`--backend webgpu`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import timing


def _export(root: Path, img_size: int) -> dict[str, Path]:
    """fp32 (+int8) and fp16 web folders of a random image-dependent vit_t; precision -> folder."""
    import torch

    from mobilesam import build_sam
    from mobilesam.deploy import web
    from mobilesam.deploy.formats import ExportOptions
    from tests.helpers import perturb_keeping_input_

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = perturb_keeping_input_(build_sam("vit_t", img_size=img_size), seed=1).eval()
    out = {}
    for precision, quantize in (("fp32", True), ("fp16", False)):
        folder = root / precision
        if not (folder / "model" / "model.json").is_file():
            with torch.no_grad():
                seconds, _ = timing.timed(
                    web.write, model, folder, ExportOptions(precision=precision, quantize=quantize, verbose=False)
                )
            print(f"export --format web --precision {precision}{' --quantize' * quantize}: {seconds:.0f} s")
        out[precision] = folder
    return out


def _browser() -> Any:
    from tests.helpers import headless_chromium

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise SystemExit("the web benchmark needs Debian's chromium and chromium-driver (apt-get install ...)")
    browser = headless_chromium(chromium, driver)
    browser.set_script_timeout(600)
    return browser


def _wait(browser: Any, states: tuple[str, ...], timeout: float = 600) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = browser.execute_script("return window.mobilesam ? window.mobilesam.state() : {}")
        if s.get("state") in (*states, "error"):
            if s["state"] == "error":
                raise RuntimeError(f"the page failed: {s['error']}")
            return s
        time.sleep(0.05)
    raise TimeoutError(f"the page was not {states} after {timeout} s")


def _call(browser: Any, script: str, *args: Any) -> dict:
    """Awaits `script(...args)` in the page; an error, or a message the page shows, raises."""
    done = "const done = arguments[arguments.length - 1];"
    call = f"{done} ({script})(...[...arguments].slice(0, -1)).then(done, (e) => done({{error: String(e)}}))"
    out = browser.execute_async_script(call, *args)
    state = browser.execute_script("return window.mobilesam.state()")
    if "error" in out or state["error"]:
        raise RuntimeError(f"the page failed: {out.get('error') or state['error']}")
    return out


def measure(folder: Path, precision: str, backend: str, rounds: int) -> dict[str, Any]:
    """The page's and ONNX Runtime's encode and decode times (seconds per round) for one precision's files."""
    from mobilesam.demo.examples import example
    from mobilesam.deploy.onnx_runtime import OnnxPredictor
    from mobilesam.deploy.web import serve

    server = serve(folder, port=0)
    browser = _browser()
    try:
        t = time.perf_counter()
        browser.get(f"http://127.0.0.1:{server.server_port}/?backend={backend}")
        state = _wait(browser, ("ready",))
        config = json.loads((folder / "model" / "model.json").read_text())
        if precision != config["default"]:  # the page loads its default (float) model first: switch
            t = time.perf_counter()
            select = "const s = document.getElementById('precision'); s.value = arguments[0];"
            browser.execute_script(select + "s.dispatchEvent(new Event('change'))", precision)
            state = _wait(browser, ("ready",))
        if f"model {precision}," not in browser.find_element("id", "backend").text:
            raise RuntimeError(f"the page did not load its {precision} model")
        load = time.perf_counter() - t
        browser.execute_script("window.mobilesam.openUrl('examples/shapes.png')")
        _wait(browser, ("encoded",))
        threads = state["threads"]
        entry = config["models"][precision]
        graphs = [folder / "model" / entry[role]["path"] for role in ("encoder", "decoder")]
        native = OnnxPredictor(*graphs, threads=threads)
        image = example("shapes")
        emb = native.embed(image)
        point = [[150.0, 150.0]]
        page_times: dict[str, list[float]] = {"page encode": [], "page decode": []}

        def page_encode() -> None:
            t = _call(browser, "window.mobilesam.embed")
            page_times["page encode"].append((t["encode"] + t["resize"]) / 1e3)

        def page_decode() -> None:
            t = _call(browser, "window.mobilesam.segment", point, [1])
            page_times["page decode"].append(t["decode"] / 1e3)

        enc = timing.interleave({"page": page_encode, "native": lambda: native.embed(image)}, rounds)
        dec = timing.interleave({"page": page_decode, "native": lambda: native.decode(emb, point, [1])}, rounds * 3)
        return {
            "threads": threads,
            "load_s": load,
            "encode": timing.Rounds({"page": page_times["page encode"], "native": enc.times["native"]}),
            "decode": timing.Rounds({"page": page_times["page decode"], "native": dec.times["native"]}),
        }
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()


def download_bytes(folder: Path, precision: str) -> int:
    """What a first visit fetches for `precision`: every file of the folder but the other precisions' graphs and the
    examples."""
    config = json.loads((folder / "model" / "model.json").read_text())
    graphs = {m[r]["path"] for m in config["models"].values() for r in ("encoder", "decoder")}
    mine = {config["models"][precision][r]["path"] for r in ("encoder", "decoder")}
    total = 0
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] != "examples" and not (rel.parts[0] == "model" and rel.name in graphs - mine):
            total += p.stat().st_size
    return total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks web", description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved encoder rounds (decode: three times as many)")
    ap.add_argument("--backend", default="wasm", choices=("wasm", "webgpu"))
    ap.add_argument("--precisions", default="fp32,fp16,int8", help="comma list of fp32, fp16, int8")
    ap.add_argument("--dir", default=None, help="reuse (or keep) the exports in this folder")
    ap.add_argument("--quick", action="store_true", help="256, fp32 only, 2 rounds: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.img_size, args.rounds, args.precisions = 256, 2, "fp32"
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    if bad:
        raise SystemExit(f"--precisions {bad}: choose from fp32, fp16, int8")
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="bench_web_")
    root = Path(args.dir or tmp.name)
    try:
        folders = _export(root, args.img_size)
        timing.print_header(
            f"MobileSAM web page (onnxruntime-web, {args.backend}) vs ONNX Runtime, img_size {args.img_size}"
        )
        rows = []
        for precision in precisions:
            folder = folders["fp16" if precision == "fp16" else "fp32"]
            r = measure(folder, precision, args.backend, args.rounds)
            mib = download_bytes(folder, precision) / 2**20
            rows.append(
                [
                    precision,
                    f"{mib:.1f} MiB",
                    r["encode"].cell("page", "native"),
                    r["encode"].cell("native"),
                    r["decode"].cell("page", "native"),
                    r["decode"].cell("native"),
                    f"{r['load_s']:.1f} s",
                    r["threads"],
                ]
            )
            print(f"{precision}: " + ", ".join(map(str, rows[-1][1:])), flush=True)  # in case a later one fails
        head = ["precision", "download", f"page encode ({args.backend})", "ONNX Runtime encode"]
        head += [f"page decode ({args.backend})", "ONNX Runtime decode", "page load", "threads"]
        print(timing.table(head, rows))
        n = args.rounds
        print(
            f"(medians of {n} encoder and {3 * n} decode rounds, interleaved; ratios paired per round against ONNX "
            "Runtime native; image 480x360; the page's times are its Web Workers' own)"
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
