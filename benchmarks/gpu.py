"""One GPU check: measured rates of every GPU-bound part, and the `distill_1pct` wall time built from them.

`python -m benchmarks gpu [--budget 480]` on one CUDA GPU (H100/H200: ~5 min) prints, each from measured
rates (random weights: speed does not depend on them; drift does a little, rerun `teacher_precision` with the
real checkpoint for the recorded number):
- teacher (vit_h at 1024) images/s in fp32, tf32 and bf16, each with the folded relative positions and with the
  materialised bias; bf16 drift against fp32 on the embedding (relative error) and on masks (IoU, one box each);
- student (vit_t at 1024) training step images/s in bf16: compile off/on, channels-last off/on;
- loader samples/s (SA-1B-like shards, masks 0 and 16 from the stored low-resolution member) with N workers;
- a stage-2 step (student forward + 16 boxes through the prompt encoder and mask decoder + both losses + backward);
- each student of the zoo (`mobilesam.variants.STUDENTS`, last, after the estimate's parts): its bf16 distillation
  step at 1024 in images/s and the step's peak GPU memory (`zoo_<name>`; --quick: efficientvit_b0 only);
- the `distill_1pct` estimate: precompute + 8 epochs of stage 1 + 2 epochs of stage 2 over 112k images.
Each part runs in its own try/except: a failure is printed and the rest goes on. Without CUDA it says so and exits
0. `--quick` runs the same code on the CPU at tiny sizes (a smoke test of the code paths, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import timing
from mobilesam import build_sam
from mobilesam.modeling.image_encoder import set_rel_pos_folding

N_IMAGES = 112_000  # the 1% split (data/splits/sa1b_train_1pct.txt)


class Ctx:
    """Sizes of one run (full on CUDA, tiny with --quick) and the rates measured so far."""

    def __init__(self, quick: bool, device: torch.device, budget: float) -> None:
        self.quick, self.device, self.t0, self.budget = quick, device, time.perf_counter(), budget
        self.img = 64 if quick else 1024
        self.teacher = "vit_b" if quick else "vit_h"
        self.batch = 1 if quick else 8
        self.teacher_batch = 1 if quick else 4
        self.iters = 1 if quick else 5
        self.rates: dict[str, float] = {}

    def timed(self, fn, n_items: int) -> float:
        """Items/s of `fn()`: one warm-up call (not with --quick), then the median over `iters` calls."""
        times = timing.repeat(fn, self.iters, warmup=0 if self.quick else 1, sync=timing.sync_for(self.device))
        return n_items / statistics.median(times)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def part_teacher(c: Ctx) -> None:
    from data.teacher import embed, precision_context

    torch.manual_seed(0)
    model = build_sam(c.teacher, img_size=c.img).to(c.device).eval()
    if c.quick:  # one windowed and one global block: the same code paths, a sixth of the time
        blocks = model.image_encoder.blocks
        model.image_encoder.blocks = torch.nn.ModuleList([blocks[0], blocks[2]])
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, c.img, c.img * 3 // 4), dtype=torch.uint8, generator=g)] * c.teacher_batch
    embs = {}
    for precision in ("fp32", "tf32", "bf16"):
        for fold in (True, False):
            set_rel_pos_folding(model, fold)
            rate = c.timed(lambda p=precision: embed(model, images, p), len(images))
            name = f"teacher_{precision}_{'folded' if fold else 'bias'}"
            c.rates[name] = rate
            print(f"{name}: {rate:.2f} images/s")
        embs[precision] = embed(model, images[:1], precision)
    set_rel_pos_folding(model, None)
    for precision in ("tf32", "bf16"):
        a, b = embs[precision], embs["fp32"]
        err = float((a - b).abs().max() / b.abs().max())
        with torch.no_grad(), precision_context("fp32", c.device):
            box = torch.tensor([[c.img / 4, c.img / 4, c.img * 0.7, c.img * 0.6]], device=c.device)
            masks = []
            for e in (a, b):
                sparse, dense = model.prompt_encoder(None, box, None)
                low, _ = model.mask_decoder(e, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
                masks.append(low > 0)
        inter, union = float((masks[0] & masks[1]).sum()), float((masks[0] | masks[1]).sum())
        print(f"{precision} drift vs fp32: embedding rel. error {err:.2e}, box-mask IoU {inter / max(union, 1):.4f}")


def _student_rate(c: Ctx, compile_: bool, channels_last: bool) -> float:
    """Images/s of one bf16 distillation step (forward, MSE, backward, AdamW) of the vit_t encoder."""
    from benchmarks.students import train_step

    return c.timed(train_step("vit_t", c.img, c.batch, c.device, torch.bfloat16, compile_, channels_last), c.batch)


def part_student(c: Ctx) -> None:
    for compile_ in (False, True):
        for channels_last in (False, True):
            name = f"student_bf16{'_compile' if compile_ else ''}{'_channels_last' if channels_last else ''}"
            if c.left() < 60 and not c.quick:
                print(f"{name}: skipped (budget)")
                continue
            if compile_ and c.quick:  # torch.compile on the CPU takes minutes: a smoke test skips it
                print(f"{name}: skipped (--quick)")
                continue
            try:
                c.rates[name] = _student_rate(c, compile_, channels_last)
                print(f"{name}: {c.rates[name]:.1f} images/s (batch {c.batch})")
            except Exception as e:  # compile may fail where the rest works
                print(f"{name}: FAILED: {type(e).__name__}: {e}")


def part_students(c: Ctx) -> None:
    """Each student of the zoo: images/s of its bf16 distillation step and the step's peak GPU memory."""
    from benchmarks.students import QUICK_STUDENTS, train_step
    from mobilesam.variants import STUDENTS

    cuda = c.device.type == "cuda"
    for name in QUICK_STUDENTS[-1:] if c.quick else STUDENTS:  # --quick: one timm student, the code path only
        if c.left() < 20 and not c.quick:
            print(f"zoo_{name}: skipped (budget)")
            continue
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            c.rates[f"zoo_{name}"] = c.timed(train_step(name, c.img, c.batch, c.device, torch.bfloat16), c.batch)
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a on the CPU"
            print(f"zoo_{name}: {c.rates[f'zoo_{name}']:.3g} images/s (batch {c.batch}, bf16), peak memory {peak}")
        except Exception as e:  # one student out of memory must not hide the others
            print(f"zoo_{name}: FAILED: {type(e).__name__}: {e}")
        finally:
            if cuda:
                torch.cuda.empty_cache()


def _make_shards(root: Path, img: int, n: int) -> list:
    import webdataset as wds

    from data.codec import decode_jpeg, encode_embedding, encode_jpeg
    from data.low_res import LOW_RES_KEY, encode_low_res
    from data.stream import Shard
    from data.synthetic import make_sa1b_image
    from mobilesam.transforms import resize_image

    rng = np.random.default_rng(0)
    size = (96, 144) if img <= 256 else (1500, 2250)
    base, anns = make_sa1b_image(rng, size, 30 if img <= 256 else 100)
    shards, per = [], max(1, n // 4)
    for s in range(0, n, per):
        path = root / f"shard-{s:04d}.tar"
        with wds.TarWriter(str(path), encoder=False) as w:
            for i in range(s, min(n, s + per)):
                jpg = encode_jpeg(resize_image(np.roll(base, 37 * i, axis=1), img), 95)
                h, wd = decode_jpeg(jpg).shape[1:]
                meta = {"orig_size": list(size), "size": [h, wd], "key": f"sa_{i}", "annotations": anns}
                emb = torch.from_numpy(rng.standard_normal((256, img // 16, img // 16), dtype=np.float32))
                sample = {"__key__": f"sa_{i}", "jpg": jpg, "json": json.dumps(meta).encode()}
                sample[LOW_RES_KEY] = encode_low_res(anns, (h, wd), img)
                w.write(sample | encode_embedding(emb, "float16"))
        shards.append(Shard(str(path), min(n, s + per) - s))
    return shards


def part_loader(c: Ctx, workers: int) -> None:
    from torch.utils.data import DataLoader

    from data.batch import SampleDecoder
    from data.stream import ShardStream

    n = 8 if c.quick else 64
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        shards = _make_shards(Path(tmp), c.img, n)
        print(f"loader: {n} SA-1B-like samples written in {time.perf_counter() - t:.0f} s")
        for masks in (0, 16):
            stream = ShardStream(shards, SampleDecoder(c.img, "float16", masks), c.batch, shuffle_buffer=16)
            w = 0 if c.quick else workers
            loader = DataLoader(stream, batch_size=None, num_workers=w, pin_memory=c.device.type == "cuda")
            rates = []
            for epoch in range(3):  # epoch 0 warms up
                stream.set_epoch(epoch)
                t, k = timing.timed(lambda loader=loader: sum(len(b["key"]) for b in loader))
                if epoch:
                    rates.append(k / t)
            name = f"loader_masks{masks}"
            c.rates[name] = statistics.median(rates)
            print(f"{name}: {c.rates[name]:.1f} samples/s with {w} workers (epochs of {n}, worker start-up included)")


def part_stage2(c: Ctx) -> None:
    torch.manual_seed(0)
    sam = build_sam("vit_t", img_size=c.img).to(c.device)
    sam.image_encoder.train()
    opt = torch.optim.AdamW(sam.image_encoder.parameters(), lr=1e-4)
    x = torch.randn(c.batch, 3, c.img, c.img, device=c.device)
    target = torch.randn(c.batch, 256, c.img // 16, c.img // 16, device=c.device)
    n_masks, low = 16, c.img // 4
    boxes = torch.tensor([[c.img / 8, c.img / 8, c.img / 2, c.img / 2]], device=c.device).repeat(n_masks, 1)
    gt = torch.rand(c.batch, n_masks, 1, low, low, device=c.device) > 0.5

    def step() -> None:
        with torch.autocast(c.device.type, dtype=torch.bfloat16):
            emb = sam.image_encoder(x)
            loss = F.mse_loss(emb.float(), target)
            pe = sam.prompt_encoder.get_dense_pe()
            for i in range(c.batch):
                sparse, dense = sam.prompt_encoder(None, boxes, None)
                logits, _ = sam.mask_decoder(emb[i : i + 1], pe, sparse, dense, False)
                loss = loss + F.binary_cross_entropy_with_logits(logits.float(), gt[i].float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    c.rates["stage2"] = c.timed(step, c.batch)
    print(f"stage2 step (student + {n_masks} boxes per image through the decoder): {c.rates['stage2']:.1f} images/s")


def estimate(c: Ctx) -> None:
    r = c.rates
    teacher = max((v for k, v in r.items() if k.startswith("teacher_bf16")), default=None)
    student = max((v for k, v in r.items() if k.startswith("student")), default=None)
    if teacher is None or student is None:
        print(f"distill_1pct estimate: not possible (missing rates: {sorted(r)})")
        return
    stage1 = min(student, r.get("loader_masks0", float("inf")))
    stage2 = min(r.get("stage2", float("inf")), r.get("loader_masks16", float("inf")))
    pre_h, s1_h = N_IMAGES / teacher / 3600, 8 * N_IMAGES / stage1 / 3600
    s2_h = 2 * N_IMAGES / stage2 / 3600 if stage2 != float("inf") else float("nan")
    print(
        f"distill_1pct estimate ({N_IMAGES} images): teacher precompute {pre_h:.2f} h (bf16, {teacher:.1f} img/s), "
        f"stage 1 x8 epochs {s1_h:.2f} h ({stage1:.1f} img/s), stage 2 x2 epochs {s2_h:.2f} h ({stage2:.1f} img/s); "
        f"total {pre_h + s1_h + s2_h:.2f} h"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: exercises the code paths only")
    ap.add_argument("--workers", type=int, default=8, help="loader workers")
    ap.add_argument("--budget", type=float, default=480, help="seconds; later parts are skipped when it runs out")
    args = ap.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run it on a GPU machine; --quick smoke-tests the code on CPU)")
        return 0
    device = torch.device("cpu" if args.quick else "cuda")
    c = Ctx(args.quick, device, args.budget)
    what = "" if device.type == "cuda" else " (--quick on the CPU: a smoke run, not a measurement)"
    timing.print_header(f"gpu: rates of the GPU-bound parts, img_size {c.img}, teacher {c.teacher}{what}", str(device))
    parts = [
        ("teacher", lambda: part_teacher(c)),
        ("student", lambda: part_student(c)),
        ("loader", lambda: part_loader(c, args.workers)),
        ("stage2", lambda: part_stage2(c)),
        ("students", lambda: part_students(c)),
    ]
    failed = []
    for part, fn in parts:
        if c.left() <= 0:
            print(f"{part}: skipped (budget of {args.budget:.0f} s spent)")
            continue
        try:
            fn()
        except Exception as e:  # report and go on: one broken part must not hide the others' numbers
            failed.append(part)
            print(f"{part}: FAILED: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    estimate(c)
    print(timing.table(["part", "rate (median of the timed calls)"], [[k, f"{v:.2f} /s"] for k, v in c.rates.items()]))
    print(f"done in {time.perf_counter() - c.t0:.0f} s" + (f"; failed parts: {failed}" if failed else ""))
    return 0
