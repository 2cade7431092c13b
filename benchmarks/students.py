"""The student zoo side by side: per student, parameters, GMACs and CPU latency of the image encoder in eager
PyTorch and ONNX Runtime, interleaved in one run with the same threads.

Random weights (latency does not depend on them). GMACs are counted by `torch.utils.flop_counter.FlopCounterMode`
(FLOPs / 2) over the image encoder at img_size; parameters are the image encoder's (TinyViT's unused ImageNet head
included, as in `mobile_sam.pt`). Both runtimes take the same SxSx3 uint8 image through `EncoderGraph` (SAM's
normalisation and padding, then the encoder). Fidelity is not measured here: with the embedded demo teacher (a
random SAM) it would rank how well each student copies a random ViT, not how well it segments.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import timing

QUICK_STUDENTS = ("tiny_vit_5m", "repvit_m0_9", "efficientvit_b0")


def gmacs(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward, in billions (FLOPs / 2 as `FlopCounterMode` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2e9


def counts(name: str, img_size: int) -> tuple[object, list[str]]:
    """(the model, [name, image-encoder parameters in millions, GMACs at img_size])."""
    from mobilesam import build_sam

    torch.manual_seed(0)
    sam = build_sam(name, img_size=img_size).eval()
    encoder = sam.image_encoder
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    macs = gmacs(encoder, torch.zeros(1, 3, img_size, img_size))
    return sam, [name, f"{params:.2f}", f"{macs:.2f}"]


def measure(name: str, img_size: int, rounds: int, warmup: int, threads: int, folder: Path) -> list[str]:
    """One student's row: name, encoder parameters (M), GMACs, eager and ONNX Runtime medians and their ratio."""
    import onnxruntime as ort

    from mobilesam.deploy.onnx_graphs import EncoderGraph, export_encoder

    sam, row = counts(name, img_size)
    path = export_encoder(sam, folder / f"{name}_encoder.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    image = np.random.default_rng(0).integers(0, 255, (img_size, img_size, 3), dtype=np.uint8)
    graph = EncoderGraph(sam).eval()
    tensor = torch.from_numpy(image)
    with torch.no_grad():
        contenders = {"eager": lambda: graph(tensor), "onnxruntime": lambda: session.run(None, {feed: image})[0]}
        r = timing.interleave(contenders, rounds, warmup=warmup)
    err = timing.rel(r.outputs["onnxruntime"], r.outputs["eager"].numpy())
    return [
        *row,
        r.cell("eager"),
        r.cell("onnxruntime"),
        timing.ratio_text(r.ratio("onnxruntime", "eager")),
        f"{err:.1e}",
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks students", description=__doc__)
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--students", default="all", help="comma-separated names of variants.STUDENTS, or all")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_STUDENTS)} at 128, one round: a smoke run")
    ap.add_argument("--counts-only", action="store_true", help="parameters and GMACs only (no timing: any load)")
    args = ap.parse_args(argv)
    from mobilesam.variants import STUDENTS, check_variant

    warmup = 1
    names = list(STUDENTS) if args.students == "all" else [s.strip() for s in args.students.split(",")]
    if args.quick:
        names, args.img_size, args.rounds = list(QUICK_STUDENTS), 128, 1
    for n in names:
        check_variant(n, "--students")
    torch.set_num_threads(args.threads)
    if args.counts_only:
        timing.print_header(f"students: image encoder parameters and GMACs at {args.img_size}")
        rows = [counts(name, args.img_size)[1] for name in names]
        print(timing.table(["student", "params (M)", "GMACs"], rows))
        return 0
    timing.print_header(
        f"students: image encoder at {args.img_size}, eager PyTorch against ONNX Runtime (random weights)"
    )
    head = ["student", "params (M)", "GMACs", "eager", "onnxruntime", "ort / eager", "rel. err"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(measure(name, args.img_size, args.rounds, warmup, args.threads, Path(tmp)))
            print(f"  {name} done", flush=True)
    print(timing.table(head, rows))
    print(f"(median of {args.rounds} interleaved rounds per student, {args.threads} threads in both runtimes)")
    return 0
