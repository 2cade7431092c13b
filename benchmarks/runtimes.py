"""Every runtime that runs here, in one table: file sizes, encoder and decode latency, accuracy against PyTorch.

A random (perturbed, image-dependent) vit_t at `--img-size` is exported with `mobilesam export` once per precision
(`--format` every installed runtime, `--precision fp32|fp16`, and `--quantize` for the int8 files of ONNX and
ExecuTorch); each export passes the export check first. Then, interleaved in one run at the same thread count:
- the encoder: `embed(image)` of each runtime predictor against `SamPredictor.set_image` (resize, normalise,
  pad and the graph, end to end);
- the decode: one prompt to three masks at the original size (`decode` against `SamPredictor.predict`);
- accuracy: the embedding's relative error (L2, as the export check) and mask pixel agreement with PyTorch over
  `--prompts` prompts (points and boxes), each runtime from its own embedding (median and worst).
With int8 files, a second table sets each int8 pair against its own runtime's float pair (sizes, encoder time,
embedding error, masks of the int8 decoder alone and of both). `--parts` splits a decode in two: the static
runtimes' decoder graphs and the numpy upscaling of their masks, beside PyTorch's decoder and `postprocess_masks`
(and times the numpy normalise-and-pad of the encoder input). Core ML runs on macOS only: elsewhere its files are
converted and sized, not timed. Random weights give noise-like logits, so mask agreement is a pessimistic figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmarks import timing
from mobilesam.deploy.formats import FORMATS

if TYPE_CHECKING:
    from mobilesam import SamPredictor

RUNTIME_NAMES = {name: f.runtime for name, f in FORMATS.items()}  # the format table's (LiteRT is `litert`)
TORCH = "PyTorch (eager) fp32"


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
    seconds, _ = timing.timed(export, src, out, formats=formats, precision=precision, quantize=int8, verbose=False)
    print(f"export --format {','.join(formats)} --precision {precision}{' --quantize' * int8}: {seconds:.0f} s")


def _exports(args: argparse.Namespace, root: Path, src: Path) -> list[tuple[str, str, Path, Path]]:
    """Exports every installed format and precision; (format, precision, encoder, decoder) of each pair."""
    from mobilesam.deploy.formats import FORMATS, check_formats, file_name
    from mobilesam.deploy.guard import ExportCheckError

    formats = _installed(check_formats(args.formats))
    rows = []
    for precision in [p for p in args.precisions.split(",") if p]:
        fmts = [f for f in formats if precision in FORMATS[f].precisions]
        int8 = precision == "fp32" and not args.no_int8 and any(FORMATS[f].int8 for f in fmts)
        out = root / precision
        # --quantize needs every format to have int8: the ones without go in their own export
        with_int8 = [f for f in fmts if FORMATS[f].int8] if int8 else fmts
        try:
            _export(src, out, with_int8, precision, int8)
            if rest := [f for f in fmts if f not in with_int8]:
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
    return rows


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


def _int8_table(pairs: list, predictors: dict, enc: timing.Rounds, embeddings: dict, prompts: list) -> None:
    """Each int8 pair against its own runtime's float pair: sizes, encoder time, embedding error, mask agreement."""
    from mobilesam.deploy.guard import relative_error

    rows = []
    for f, (f_enc, f_dec), (i_enc, i_dec) in pairs:
        flt, i8 = predictors[f"{RUNTIME_NAMES[f]} fp32"], predictors[f"{RUNTIME_NAMES[f]} int8"]
        e_flt, e_i8 = embeddings[f"{RUNTIME_NAMES[f]} fp32"], embeddings[f"{RUNTIME_NAMES[f]} int8"]
        alone, both = [], []
        e_any = e_flt._replace(export="")  # the float embedding, on purpose, into the int8 decoder (same img_size)
        for prompt in prompts:
            want = flt.decode(e_flt, multimask_output=True, **prompt).masks
            alone.append(float((i8.decode(e_any, multimask_output=True, **prompt).masks == want).mean()))
            both.append(float((i8.decode(e_i8, multimask_output=True, **prompt).masks == want).mean()))
        ratio = enc.ratio(f"{RUNTIME_NAMES[f]} int8", f"{RUNTIME_NAMES[f]} fp32")
        rows.append(
            [RUNTIME_NAMES[f], f"{_size(f_enc):.1f} / {_size(i_enc):.1f}", f"{_size(f_dec):.1f} / {_size(i_dec):.1f}",
             timing.ratio_text(ratio), f"{relative_error(e_i8.features, e_flt.features):.1e}",
             f"{100 * statistics.median(alone):.2f}% / {100 * min(alone):.2f}%",
             f"{100 * statistics.median(both):.2f}% / {100 * min(both):.2f}%"]
        )  # fmt: skip
    head = ["runtime", "encoder MiB float / int8", "decoder MiB float / int8", "int8 encoder time ratio to float"]
    head += ["embedding rel. error to float", "masks equal, int8 decoder alone: median / worst"]
    print("\n" + timing.table(head + ["masks equal, int8 encoder + decoder: median / worst"], rows))


def _parts(predictors: dict, embeddings: dict, image: np.ndarray, rounds: int, reference: SamPredictor) -> None:
    """The two halves of a decode, each static runtime's graph and the numpy upscaling of its 3 masks to the photo's
    size, beside PyTorch's (prompt encoder + mask decoder; `postprocess_masks`); and the numpy normalise + pad
    their encoders' input needs."""
    from mobilesam.deploy.runtime import MASK_THRESHOLD, normalize_pad, upscale_masks
    from mobilesam.transforms import resize_image

    static = {k: p for k, p in predictors.items() if hasattr(p, "max_points")}
    if not static:
        return
    rows = []
    point = np.array([[image.shape[1] * 0.4, image.shape[0] * 0.25]])
    for k, p in static.items():
        coords = np.zeros((1, p.max_points, 2), np.float32)
        labels = np.full((1, p.max_points), -1.0, np.float32)
        coords[0, 0], labels[0, 0] = p.transform.apply_coords(point, image.shape[:2])[0], 1
        feats = embeddings[k].features
        graph = timing.repeat(lambda p=p, f=feats, c=coords, lab=labels: p._decode(f, c, lab), rounds)
        rows.append([f"{k}: decoder graph", timing.seconds(statistics.median(graph))])
    p = next(iter(static.values()))
    low = np.asarray(p._decode(embeddings[next(iter(static))].features, coords, labels)[0], np.float32)[0, 1:]
    up = timing.repeat(lambda: upscale_masks(low, p.img_size, image.shape[:2], MASK_THRESHOLD), rounds)
    rows.append(
        [f"numpy upscaling of 3 masks to {image.shape[0]}x{image.shape[1]}", timing.seconds(statistics.median(up))]
    )
    with torch.no_grad():
        sam = reference.model
        pts = torch.as_tensor(reference.transform.apply_coords(point, image.shape[:2]), dtype=torch.float32)[None]
        prompt = (pts, torch.ones(1, 1, dtype=torch.int64))

        def torch_decoder() -> torch.Tensor:
            sparse, dense = sam.prompt_encoder(prompt, None, None)
            return sam.mask_decoder(reference.features, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)[0]

        dec = timing.repeat(torch_decoder, rounds)
        low_t = torch_decoder()
        post = timing.repeat(
            lambda: sam.postprocess_masks(low_t, reference.input_size, reference.original_size, MASK_THRESHOLD), rounds
        )
    rows.append(["PyTorch: prompt encoder + mask decoder", timing.seconds(statistics.median(dec))])
    rows.append(["PyTorch: postprocess_masks (3 masks)", timing.seconds(statistics.median(post))])
    resized = np.asarray(resize_image(image, p.img_size))
    pad = timing.repeat(lambda: normalize_pad(resized, p.img_size), rounds)
    rows.append(["numpy normalise + pad of the encoder input", timing.seconds(statistics.median(pad))])
    print("\n" + timing.table(["the parts of a decode (one point to 3 masks)", f"median of {rounds}"], rows))


def main(argv: list[str]) -> int:
    from mobilesam.deploy.formats import FORMATS, PRECISIONS

    ap = argparse.ArgumentParser(prog="python -m benchmarks runtimes", description=__doc__)
    runnable = ",".join(name for name, f in FORMATS.items() if f.predictor)  # annotation tools and web: no predictor
    ap.add_argument("--formats", default=runnable, help="comma list (default: every format with a runtime predictor)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, fp16")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 files (their export is the slow part)")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved encoder rounds")
    ap.add_argument("--prompts", type=int, default=20, help="prompts for decode time and mask agreement")
    ap.add_argument("--threads", type=int, default=2, help="threads for PyTorch and every runtime")
    ap.add_argument("--parts", action="store_true", help="also time the static decoder graphs alone")
    ap.add_argument("--dir", default=None, help="reuse (or keep) the exports in this folder")
    ap.add_argument("--quick", action="store_true", help="ONNX fp32 at 256, one round, 2 prompts: a smoke run")
    args = ap.parse_args(argv)
    warmup = 2
    if args.quick:
        args.formats, args.precisions, args.no_int8, args.img_size, args.image = "onnx", "fp32", True, 256, "150x225"
        args.rounds, args.prompts, warmup = 1, 2, 0
    torch.set_num_threads(args.threads)

    from PIL import Image

    from mobilesam import SamPredictor, build_sam
    from mobilesam.checkpoint import save_state_dict
    from mobilesam.deploy import load_predictor
    from mobilesam.deploy.guard import probe_images, relative_error
    from tests.helpers import perturb_keeping_input_

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_runtimes_"))
    src = root / "src" / "random_mobile_sam.pt"
    if not src.is_file():
        torch.manual_seed(0)
        model = perturb_keeping_input_(build_sam("vit_t", img_size=args.img_size), seed=1)
        save_state_dict(model.state_dict(), src, meta={"img_size": args.img_size, "variant": "vit_t"})
    rows = _exports(args, root, src)

    reference = SamPredictor(build_sam("vit_t", src).eval())
    label = {(f, p): f"{RUNTIME_NAMES[f]} {p}" for f, p, _, _ in rows}
    predictors = {
        label[f, p]: load_predictor(enc, dec, threads=args.threads) for f, p, enc, dec in rows if FORMATS[f].runs_here()
    }
    h, w = timing.image_size(args.image)
    image = np.asarray(Image.fromarray(probe_images()[0]).resize((w, h), Image.BILINEAR))  # discs on gradients
    timing.print_header(f"runtimes: random vit_t at {args.img_size}, a {h}x{w} image, CPU")

    # 1. encoders, interleaved
    def torch_embed() -> np.ndarray:
        with torch.no_grad():
            reference.set_image(image)
        return reference.features.numpy()

    contenders = {TORCH: torch_embed, **{k: (lambda p=p: p.embed(image)) for k, p in predictors.items()}}
    enc = timing.interleave(contenders, args.rounds, warmup=min(warmup, 1))
    embeddings = dict(enc.outputs)
    torch_features = embeddings.pop(TORCH)

    # 2. decodes and masks, interleaved prompt by prompt, each runtime from its own embedding
    prompts = _prompts(np.random.default_rng(0), image.shape, args.prompts + warmup)
    agreement: dict = {k: [] for k in predictors}

    def compare(_: int, outs: dict) -> None:
        for k in predictors:
            agreement[k].append(float((outs[k] == outs[TORCH]).mean()))

    decoders = {TORCH: lambda prompt: _torch_decode(reference, prompt)}
    for k, p in predictors.items():
        decoders[k] = lambda prompt, p=p, e=embeddings[k]: p.decode(e, multimask_output=True, **prompt).masks
    dec = timing.interleave(decoders, args.prompts, warmup, inputs=lambda r: (prompts[r + warmup],), on_round=compare)

    base = [f"{enc.cell(TORCH)} (x1.00)", f"{dec.cell(TORCH)} (x1.00)"]
    table = [[TORCH.rsplit(" ", 1)[0], "fp32", "", "", *base, "", ""]]
    for f, p, e_path, d_path in rows:
        k = label[f, p]
        sizes = [RUNTIME_NAMES[f], p, f"{_size(e_path):.1f}", f"{_size(d_path):.1f}"]
        if k not in predictors:
            table.append(sizes + ["converted, not run here (needs macOS)", "", "", ""])
            continue
        agree, err = agreement[k], relative_error(embeddings[k].features, torch_features)
        table.append(
            sizes + [enc.cell(k, TORCH), dec.cell(k, TORCH), f"{err:.1e}"]
            + [f"{100 * statistics.median(agree):.2f}% / {100 * min(agree):.2f}%"]
        )  # fmt: skip
    head = ["runtime", "precision", "encoder MiB", "decoder MiB", "encoder median (ratio)", "decode median (ratio)"]
    print(timing.table(head + ["embedding rel. error", "masks equal: median / worst"], table))
    print(
        f"(medians of {args.rounds} encoder rounds and {args.prompts} decodes, one point or one box to 3 masks at "
        f"{h}x{w}; ratios paired per round against PyTorch)"
    )
    paths = {(f, p): (e, d) for f, p, e, d in rows}
    int8 = [(f, paths[f, "fp32"], paths[f, "int8"]) for f, p, _, _ in rows if p == "int8" and label[f, p] in predictors]
    if int8:
        _int8_table(int8, predictors, enc, embeddings, prompts[warmup:])
    if args.parts:
        _parts(predictors, embeddings, image, max(args.prompts, 1), reference)
    return 0
