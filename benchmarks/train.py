"""Student training step: ours against the official TinyViT, in the same plain PyTorch loop, interleaved.

Each round times one optimisation step (forward, MSE against a target embedding, backward, AdamW step) of each
model on the same batch, in alternating order; medians and the paired ratio. BatchNorm cannot be folded while
training, so the difference comes from attention (fused SDPA), layout (channels-last, 1x1 convs as GEMMs) and
fewer copies. With --device cuda (bf16 autocast) it also times the SAM ViT-H teacher's forward pass and prints the
estimated wall time of `+experiment=distill_1pct`: the one-off teacher precompute plus 8 epochs of student training.
Needs the official code (`pip install mobilesam-mirror`, in the dev extra).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import warnings

import torch
import torch.nn.functional as F

from benchmarks import timing

SA1B_1PCT_IMAGES = 112_000  # 10 tars of ~11.2k images (data/splits)
EPOCHS = 8


def _step(encoder, opt, x, target, autocast) -> None:
    with autocast():
        out = encoder(x)
    loss = F.mse_loss(out.float(), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks train", description=__doc__)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batch 1, one round, no warm-up: a smoke run")
    args = ap.parse_args(argv)
    warmup = 1
    if args.quick:
        args.batch, args.rounds, warmup = 1, 1, 0
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mobile_sam

    from mobilesam import build_sam
    from tests.helpers import perturb_

    torch.manual_seed(0)
    s = 1024  # the official TinyViT only runs at 1024 (it hard-codes a 64x64 token grid)
    official = perturb_(mobile_sam.sam_model_registry["vit_t"]()).image_encoder.to(device).train()
    ours = build_sam("vit_t").image_encoder.to(device).train()
    ours.load_state_dict(official.state_dict())
    x = torch.randn(args.batch, 3, s, s, device=device)
    target = torch.randn(args.batch, 256, s // 16, s // 16, device=device)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for k, m in
            (("official", official), ("ours", ours))}  # fmt: skip
    models = {"official": official, "ours": ours}
    steps = {k: (lambda k=k: _step(models[k], opts[k], x, target, autocast)) for k in models}
    timing.print_header(
        f"train: one student step, batch {args.batch} at {s}, official TinyViT against ours", str(device)
    )
    r = timing.interleave(steps, args.rounds, warmup=warmup, sync=timing.sync_for(device))
    rows = [[k, r.cell(k), f"{r.rate(k, args.batch):.2f}", timing.ratio_text(r.ratio(k, "official"))] for k in steps]
    print(timing.table(["", "median step", "samples/s", "time ratio to official"], rows))
    print(r.note("official"))
    if device.type == "cuda":
        _estimate(args, device, r.rate("ours", args.batch))
    return 0


def _estimate(args: argparse.Namespace, device: torch.device, student_rate: float) -> None:
    """Times the ViT-H teacher's forward (bf16) and prints the wall time of distill_1pct."""
    from mobilesam import build_sam

    teacher = build_sam("vit_h").image_encoder.to(device).eval()
    x = torch.randn(8, 3, 1024, 1024, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        times = timing.repeat(lambda: teacher(x), 3, sync=timing.sync_for(device))
    teacher_rate = 8 / statistics.median(times)
    pre = SA1B_1PCT_IMAGES / teacher_rate
    train = EPOCHS * SA1B_1PCT_IMAGES / student_rate
    print(f"teacher vit_h forward: {teacher_rate:.1f} images/s (bf16, batch 8, median of 3)")
    print(
        f"distill_1pct estimate: precompute {pre / 3600:.2f} h + {EPOCHS} epochs {train / 3600:.2f} h = "
        f"{(pre + train) / 3600:.2f} h on this GPU (student at {student_rate:.0f} samples/s, batch {args.batch})"
    )
