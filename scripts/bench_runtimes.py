"""Every runtime that runs here, in one table: file sizes, encoder and decode latency, accuracy against PyTorch.

A random (perturbed, image-dependent) vit_t at `--img-size` is exported with `mobilesam export` once per precision
(`--format` every installed runtime, `--precision fp32|fp16`, and `--quantize` for the int8 files of ONNX and
ExecuTorch); each export passes the export check first. Then, interleaved in one run at the same thread count:
- the encoder: `embed(image)` of each runtime predictor against `SamPredictor.set_image` (resize, normalise,
  pad and the graph, end to end);
- the decode: one prompt to three masks at the original size (`decode` against `SamPredictor.predict`);
- accuracy: the embedding's relative error (L2, as the export check) and mask pixel agreement with PyTorch over
  `--prompts` prompts (points and boxes), each runtime from its own embedding (median and worst).
Core ML runs on macOS only: elsewhere its files are converted and sized, not timed.
Random weights give noise-like logits, so mask agreement is a pessimistic figure for trained weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from deploy_timing import timed
from PIL import Image

RUNTIME_NAMES = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch", "openvino": "OpenVINO", "tflite": "LiteRT"}
RUNTIME_NAMES["coreml"] = "Core ML"


def _installed(formats: list[str]) -> list[str]:
    from mobilesam.deploy.formats import FORMATS

    out = []
    for name in formats:
        try:
            FORMATS[name].writer().require()
        except ImportError as e:
            print(f"skipping {name}: {e}")
            continue
        out.append(name)
    return out


def _export(src: Path, out: Path, formats: list[str], precision: str, int8: bool) -> None:
    """One `mobilesam export` per precision, reused when its sidecar is already there."""
    from mobilesam.export import export

    if (out / "mobile_sam.json").is_file():
        return
    seconds, _ = timed(export, src, out, formats=formats, precision=precision, quantize=int8, verbose=False)
    print(f"export --format {','.join(formats)} --precision {precision}{' --quantize' * int8}: {seconds:.0f} s")


def _size(path: Path) -> float:
    """MiB on disk (an OpenVINO .xml with its .bin, an .mlpackage folder whole)."""
    from mobilesam.files import disk_size

    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (disk_size(path) + (disk_size(extra) if extra and extra.is_file() else 0)) / 2**20


def _prompts(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> list[dict]:
    """n prompts in the image's pixels: one point, then a box, alternately."""
    h, w = shape[:2]
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append({"points": [float(rng.uniform(0, w)), float(rng.uniform(0, h))], "labels": [1]})
        else:
            x0, x1 = sorted(rng.uniform(0, w, 2))
            y0, y1 = sorted(rng.uniform(0, h, 2))
            out.append({"bboxes": [float(x0), float(y0), float(x1), float(y1)]})
    return out


def _torch_decode(predictor, prompt: dict) -> np.ndarray:
    pts = np.asarray(prompt["points"], np.float32).reshape(-1, 2) if "points" in prompt else None
    labels = np.asarray(prompt["labels"]).reshape(-1) if "labels" in prompt else None
    box = np.asarray(prompt["bboxes"], np.float32).reshape(4) if "bboxes" in prompt else None
    masks, _, _ = predictor.predict(pts, labels, box, multimask_output=True)
    return masks


def main(argv: list[str]) -> int:
    from mobilesam.deploy.formats import FORMATS, PRECISIONS, check_formats, file_name

    ap = argparse.ArgumentParser(prog="benchmark.py runtimes", description=__doc__)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma list (default: every format)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, fp16")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 files (their export is the slow part)")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved encoder rounds")
    ap.add_argument("--prompts", type=int, default=20, help="prompts for decode time and mask agreement")
    ap.add_argument("--threads", type=int, default=2, help="threads for PyTorch and every runtime")
    ap.add_argument("--dir", default=None, help="reuse (or keep) the exports in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mobilesam import SamPredictor, build_sam
    from mobilesam.checkpoint import save_state_dict
    from mobilesam.deploy import load_predictor
    from mobilesam.deploy.guard import ExportCheckError, probe_images, relative_error
    from tests.helpers import perturb_keeping_input_

    formats = _installed(check_formats(args.formats))
    precisions = [p for p in args.precisions.split(",") if p]
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_runtimes_"))
    src = root / "src" / "random_mobile_sam.pt"
    if not src.is_file():
        torch.manual_seed(0)
        model = perturb_keeping_input_(build_sam("vit_t", img_size=args.img_size), seed=1)
        save_state_dict(model.state_dict(), src, meta={"img_size": args.img_size, "variant": "vit_t"})

    rows = []  # (format, precision, encoder path, decoder path)
    for precision in precisions:
        fmts = [f for f in formats if precision in FORMATS[f].precisions]
        int8 = precision == "fp32" and not args.no_int8 and any(FORMATS[f].int8 for f in fmts)
        out = root / precision
        try:
            # --quantize needs every format to have int8: the ones without go in their own export
            with_int8 = [f for f in fmts if FORMATS[f].int8] if int8 else fmts
            _export(src, out, with_int8, precision, int8)
            rest = [f for f in fmts if f not in with_int8]
            if rest:
                _export(src, out / "float_only", rest, precision, False)
        except ExportCheckError as e:
            print(f"export check refused {precision}: {e}")
            continue
        for f in fmts:
            folder = out if f in with_int8 else out / "float_only"
            suffix = FORMATS[f].writer().SUFFIX
            tags = [(precision, "")] + ([("int8", "_int8")] if int8 and FORMATS[f].int8 else [])
            for p, tag in tags:
                enc, dec = (folder / file_name(role + tag, suffix, precision) for role in ("encoder", "decoder"))
                rows.append((f, p, enc, dec))

    reference = SamPredictor(build_sam("vit_t", src).eval())
    predictors = {}
    for f, p, enc, dec in rows:
        if FORMATS[f].runs_here():
            predictors[(f, p)] = load_predictor(enc, dec, threads=args.threads)

    h, w = (int(v) for v in args.image.split("x"))
    image = np.asarray(Image.fromarray(probe_images()[0]).resize((w, h), Image.BILINEAR))  # discs on gradients
    print(f"torch {torch.__version__}, {args.threads} threads, CPU, vit_t at {args.img_size}, {h}x{w} image")

    # 1. encoders, interleaved
    def torch_embed() -> np.ndarray:
        with torch.no_grad():
            reference.set_image(image)
        return reference.features.numpy()

    contenders = {("pytorch", "fp32"): torch_embed, **{k: (lambda p=p: p.embed(image)) for k, p in predictors.items()}}
    for fn in contenders.values():
        fn()  # warm-up
    enc_times: dict = {k: [] for k in contenders}
    embeddings: dict = {}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            t, embeddings[k] = timed(fn)
            enc_times[k].append(t)
    torch_features = embeddings.pop(("pytorch", "fp32"))

    # 2. decodes and masks, interleaved prompt by prompt
    prompts = _prompts(np.random.default_rng(0), image.shape, args.prompts + 2)
    dec_times: dict = {k: [] for k in contenders}
    agreement: dict = {k: [] for k in predictors}
    for i, prompt in enumerate(prompts):
        t, want = timed(_torch_decode, reference, prompt)
        if i >= 2:  # the first two warm up
            dec_times[("pytorch", "fp32")].append(t)
        for k, p in predictors.items():
            t, got = timed(p.decode, embeddings[k], multimask_output=True, **prompt)
            if i >= 2:
                dec_times[k].append(t)
                agreement[k].append(float((got.masks == want).mean()))

    def ratio(times: dict, k) -> float:
        return statistics.median(a / b for a, b in zip(times[k], times[("pytorch", "fp32")]))

    print()
    print(
        "| runtime | precision | encoder MiB | decoder MiB | encoder ms (x PyTorch) | decode ms (x PyTorch) "
        "| embedding rel. error | masks equal: median / worst |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base_enc = statistics.median(enc_times[("pytorch", "fp32")]) * 1e3
    base_dec = statistics.median(dec_times[("pytorch", "fp32")]) * 1e3
    print(f"| PyTorch (eager) | fp32 | | | {base_enc:.0f} | {base_dec:.1f} | | |")
    for f, p, enc, dec in rows:
        sizes = f"| {RUNTIME_NAMES[f]} | {p} | {_size(enc):.1f} | {_size(dec):.1f} "
        k = (f, p)
        if k not in predictors:
            print(sizes + "| converted, not run here (needs macOS) | | | |")
            continue
        e_ms, d_ms = statistics.median(enc_times[k]) * 1e3, statistics.median(dec_times[k]) * 1e3
        err = relative_error(embeddings[k].features, torch_features)
        agree = agreement[k]
        print(
            sizes + f"| {e_ms:.0f} (x{ratio(enc_times, k):.2f}) | {d_ms:.1f} (x{ratio(dec_times, k):.2f}) "
            f"| {err:.1e} | {100 * statistics.median(agree):.2f}% / {100 * min(agree):.2f}% |"
        )
    print(
        f"\nmedians of {args.rounds} encoder rounds and {args.prompts} decodes (one point or one box, 3 masks at "
        f"{h}x{w}); ratios are per-round medians against PyTorch in the same round"
    )
    return 0
