"""The student zoo side by side: parameters, GMACs, encoder latency in every runtime, training throughput, fidelity.

Per student (`mobilesam.variants.STUDENTS`), in three parts (`--parts`):
- latency: the image encoder's parameters, GMACs (`torch.utils.flop_counter.FlopCounterMode`, FLOPs / 2) and CPU
  latency of embedding one SxS uint8 image in eager PyTorch (`SamPredictor.set_image`) and in every runtime that
  runs here (`--runtimes`: ONNX Runtime, ExecuTorch/XNNPACK, OpenVINO, LiteRT; default those installed), each
  written by its deploy writer and run by its predictor's `embed` (the runtime's own normalise and pad), interleaved
  in one run with the same threads. Random weights: latency does not depend on them. A runtime whose export or
  run fails for a student is a cell saying why. "rel. err" is the worst runtime embedding against eager PyTorch.
- train: images/s of one CPU distillation step of the image encoder (forward, MSE against a fixed target,
  backward, AdamW step) at `--train-size` and `--train-batch`, each student in its own process (its peak memory).
- fidelity: each student distilled for the same `--epochs` of the embedded demo recipe (`python train.py
  model/student=NAME`: the demo shards at img_size 256, made by the demo teacher), then the run's validation on the
  held-out shards: embedding MSE and the mask-agreement mIoU against the teacher's masks. The demo teacher is a
  RANDOM SAM ViT-B, so this ranks how well each student copies that teacher in a short schedule, not how well it
  segments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import timing

QUICK_STUDENTS = ("tiny_vit_5m", "repvit_m0_9", "efficientvit_b0")
PARTS = ("latency", "train", "fidelity")
FIDELITY_NOTE = (
    "fidelity comes from the embedded demo teacher, a RANDOM SAM ViT-B: it ranks how well each student copies that "
    "teacher in a short schedule, not segmentation quality"
)


def gmacs(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward, in billions (FLOPs / 2 as `FlopCounterMode` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2e9


def counts(name: str, img_size: int) -> tuple[Any, list[str]]:
    """(the model, [name, image-encoder parameters in millions, GMACs at img_size])."""
    from mobilesam import build_sam

    torch.manual_seed(0)
    sam = build_sam(name, img_size=img_size).eval()
    encoder = sam.image_encoder
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    macs = gmacs(encoder, torch.zeros(1, 3, img_size, img_size))
    return sam, [name, f"{params:.2f}", f"{macs:.2f}"]


def runtimes(names: str) -> list[str]:
    """`--runtimes` (a comma list of formats, "all" or "none") -> the formats with a predictor that runs here and
    whose writer's packages are installed (the others are named and skipped)."""
    from benchmarks.runtimes import _installed
    from mobilesam.deploy.formats import FORMATS, check_formats

    here = [n for n, f in FORMATS.items() if f.predictor and f.runs_here()]
    if names in ("all", ""):
        return _installed(here)
    if names == "none":
        return []
    picked = check_formats(names)
    if off := [n for n in picked if n not in here]:
        raise ValueError(f"--runtimes {','.join(off)}: no runtime predictor runs here; choose from {','.join(here)}")
    return _installed(picked)


def failure(e: BaseException) -> str:
    """A table cell saying why a runtime failed: its error's type and first line (no '|')."""
    lines = str(e).strip().splitlines() or [""]
    text = lines[0][:140].replace("|", "/")
    return f"failed: {type(e).__name__}" + (f": {text}" if text else "")


def exported(sam: Any, out: Path, fmt: str) -> dict[str, Path]:
    """The encoder and decoder that the format's deploy writer wrote into `out` (seeded random weights, so files
    already there from an earlier run with `--dir` are the same and are reused)."""
    from mobilesam.deploy.formats import FORMATS, ExportOptions, file_name

    files = {role: out / file_name(role, FORMATS[fmt].suffix) for role in ("encoder", "decoder")}
    if not all(p.exists() for p in files.values()):
        files, _ = FORMATS[fmt].writer().write(sam, out, ExportOptions(verbose=False))
    return files


def latency(
    name: str, img_size: int, formats: list[str], rounds: int, threads: int, folder: Path, warmup: int = 1
) -> list[str]:
    """One student's row: name, parameters (M), GMACs, eager median, each runtime's median (ratio to eager) or why
    it failed, and the worst runtime embedding's relative error to eager PyTorch."""
    from mobilesam import SamPredictor
    from mobilesam.deploy import load_predictor

    sam, row = counts(name, img_size)
    image = np.random.default_rng(0).integers(0, 255, (img_size, img_size, 3), dtype=np.uint8)
    reference = SamPredictor(sam)

    def eager() -> np.ndarray:
        with torch.no_grad():
            reference.set_image(image)
        return reference.features.numpy()

    want = eager()
    contenders: dict[str, Callable[[], Any]] = {"eager": eager}
    cells, errors = {}, []
    for f in formats:
        try:  # the format's deploy writer (encoder and decoder), then its runtime predictor
            files = exported(sam, folder / f"{name}_{img_size}" / f, f)
            predictor = load_predictor(files["encoder"], files["decoder"], threads=threads)
            errors.append(timing.rel(predictor.embed(image).features, want))
            contenders[f] = lambda p=predictor: p.embed(image).features
        except Exception as e:  # one runtime failing for one student is a cell, not the end of the table
            cells[f] = failure(e)
    r = timing.interleave(contenders, rounds, warmup=warmup)
    runs = [cells[f] if f in cells else r.cell(f, "eager") for f in formats]
    return [*row, r.cell("eager"), *runs, f"{max(errors):.1e}" if errors else ""]


def train_step(
    name: str,
    img_size: int,
    batch: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    compile_: bool = False,
    channels_last: bool = False,
) -> Callable[[], torch.Tensor]:
    """One distillation step of a student's image encoder as a callable: forward (autocast to `dtype` if given),
    MSE against a fixed Bx256x(S/16)x(S/16) target, backward, AdamW step; it returns the loss (before the step).
    Random weights and inputs, seeded."""
    from mobilesam import build_sam

    device = torch.device(device)
    torch.manual_seed(0)
    enc = build_sam(name, img_size=img_size).image_encoder.to(device).train()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if channels_last:
        enc, x = enc.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    step_enc = torch.compile(enc) if compile_ else enc
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    target = torch.randn(batch, 256, img_size // 16, img_size // 16, device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.mse_loss(step_enc(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def train_rate(name: str, img_size: int, batch: int, iters: int, threads: int) -> dict[str, float]:
    """CPU training steps of one student: {"seconds": median step, "images_per_s"} after one warm-up step (run in
    its own process by `timing.in_subprocess`, which adds the process's peak memory)."""
    torch.set_num_threads(threads)
    times = timing.repeat(train_step(name, img_size, batch), iters, warmup=1)
    return {"seconds": statistics.median(times), "images_per_s": batch / statistics.median(times)}


def throughput(name: str, img_size: int, batch: int, iters: int, threads: int) -> list[str]:
    """One student's row: name, images/s, median step, peak resident memory of its process (GiB)."""
    try:
        out = timing.in_subprocess(
            "benchmarks.students:train_rate", name=name, img_size=img_size, batch=batch, iters=iters, threads=threads
        )
    except Exception as e:  # out of memory at this size, ...: a cell
        return [name, failure(e), "", ""]
    return [name, f"{out['images_per_s']:.2f}", timing.seconds(out["seconds"]), f"{out['peak_mib'] / 1024:.1f}"]


def fidelity(name: str, epochs: int, out_dir: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    """One student's row after `epochs` of the embedded demo recipe (`python train.py model/student=NAME`, validated
    once at the end on the held-out shards): name, steps, training seconds, val/mse, val/miou point / box."""
    from hydra import compose, initialize_config_dir

    from train.run import run

    base = [
        f"model/student={name}",
        f"paths.root_dir={timing.ROOT}",
        f"paths.output_dir={out_dir / name}",
        f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={epochs}",
        "trainer.enable_progress_bar=false",
        "predict_after=false",
        "~callbacks.mask_pictures",
    ]
    log = io.StringIO()
    try:
        with initialize_config_dir(config_dir=str(timing.ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=base + list(overrides))
        t = time.perf_counter()
        with contextlib.redirect_stdout(log):
            result = run(cfg)
        seconds = time.perf_counter() - t
    except Exception as e:
        print(log.getvalue()[-2000:])
        return [name, failure(e), "", "", "", "", ""]
    m = result["metrics"]
    steps = re.search(r"(\d+) steps", log.getvalue())  # the run's summary: "done in 0.3 min, 48 steps"
    miou = [f"{m[k]:.4f}" if k in m else "" for k in ("val/miou_point", "val/miou_two_points", "val/miou_box")]
    return [name, steps.group(1) if steps else "", timing.seconds(seconds, "s"), f"{m['val/mse']:.4g}", *miou]


def progress(row: list[str]) -> list[str]:
    """Prints a finished row at once (a long sweep stopped early keeps what it measured) and returns it."""
    print("  done: " + ", ".join(row), flush=True)
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks students", description=__doc__)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--students", default="all", help="comma-separated names of variants.STUDENTS, or all")
    ap.add_argument("--runtimes", default="all", help="comma list of formats (onnx, executorch, ...), all or none")
    ap.add_argument("--img-size", type=int, default=1024, help="latency and counts")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="PyTorch's and every runtime's")
    ap.add_argument("--dir", default=None, help="keep the latency exports here and reuse them in a later run")
    ap.add_argument("--train-size", type=int, default=1024, help="img_size of the training step")
    ap.add_argument("--train-batch", type=int, default=1)
    ap.add_argument("--train-iters", type=int, default=3, help="timed training steps (after one warm-up)")
    ap.add_argument("--epochs", type=int, default=6, help="fidelity: epochs of the demo recipe (8 steps each)")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_STUDENTS)}: ONNX at 128, one round, "
                    f"training {QUICK_STUDENTS[-1]} at 64; no fidelity (a smoke run)")  # fmt: skip
    ap.add_argument("--counts-only", action="store_true", help="parameters and GMACs only (no timing: any load)")
    args = ap.parse_args(argv)
    from mobilesam.variants import STUDENTS, check_variant

    names = list(STUDENTS) if args.students == "all" else [s.strip() for s in args.students.split(",")]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.quick:
        names, args.img_size, args.rounds, args.runtimes = list(QUICK_STUDENTS), 128, 1, "onnx"
        args.train_size, args.train_batch, args.train_iters = 64, 1, 1
        parts = [p for p in parts if p != "fidelity"]
    for n in names:
        check_variant(n, "--students")
    if bad := [p for p in parts if p not in PARTS]:
        raise ValueError(f"--parts {','.join(bad)}: choose from {','.join(PARTS)}")
    torch.set_num_threads(args.threads)
    if args.counts_only:
        timing.print_header(f"students: image encoder parameters and GMACs at {args.img_size}")
        print(timing.table(["student", "params (M)", "GMACs"], [counts(name, args.img_size)[1] for name in names]))
        return 0
    if "latency" in parts:
        formats = runtimes(args.runtimes)
        from benchmarks.runtimes import RUNTIME_NAMES

        timing.print_header(f"students: image encoder at {args.img_size}, eager PyTorch and {len(formats)} runtimes")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.dir or tmp)
            for name in names:
                rows.append(progress(latency(name, args.img_size, formats, args.rounds, args.threads, folder)))
        head = ["student", "params (M)", "GMACs", "eager", *(RUNTIME_NAMES[f] for f in formats), "rel. err"]
        print(timing.table(head, rows))
        print(f"(median of {args.rounds} interleaved rounds per student, {args.threads} thread(s) everywhere; "
              "ratios paired per round against eager; random weights)")  # fmt: skip
    if "train" in parts:
        timing.print_header(f"students: CPU training step at {args.train_size}, batch {args.train_batch}")
        some = names[-1:] if args.quick else names  # --quick: one process start, not three
        rows = [
            progress(throughput(n, args.train_size, args.train_batch, args.train_iters, args.threads)) for n in some
        ]
        print(timing.table(["student", "images/s", "median step", "peak GiB"], rows))
        print(f"(median of {args.train_iters} steps after one warm-up: forward, MSE, backward, AdamW; fp32; "
              "each student in its own process)")  # fmt: skip
    if "fidelity" in parts:
        timing.print_header(f"students: fidelity after {args.epochs} epochs of the demo recipe (img_size 256)")
        with tempfile.TemporaryDirectory() as tmp:
            rows = [progress(fidelity(n, args.epochs, Path(tmp))) for n in names]
        print(
            timing.table(["student", "steps", "train time", "val/mse", "mIoU point", "mIoU 2 points", "mIoU box"], rows)
        )
        print(f"({FIDELITY_NOTE})")
    return 0
