"""Student training speed: ours against the official TinyViT, in the same plain PyTorch loop, in one run.

Each round times one optimisation step (forward, MSE against a target embedding, backward, AdamW step) of each
model on the same batch, interleaved; medians over rounds. BatchNorm cannot be folded while training, so the
difference comes from attention (fused SDPA), layout (channels-last, 1x1 convs as GEMMs) and fewer copies.

With --device cuda (bf16 autocast) it also times the SAM ViT-H teacher's forward pass and prints the estimated
wall time of `+experiment=distill_1pct`: the one-off teacher precompute plus 8 epochs of student training.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

SA1B_1PCT_IMAGES = 112_000  # 10 tars of ~11.2k images (data/splits)
EPOCHS = 8


def _step(encoder, opt, x, target, autocast) -> None:
    with autocast():
        out = encoder(x)
    loss = F.mse_loss(out.float(), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py train", description=__doc__)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mobile_sam

    from mobilesam import build_sam
    from tests.helpers import perturb_

    torch.manual_seed(0)
    s = args.img_size
    official = perturb_(mobile_sam.sam_model_registry["vit_t"]()).image_encoder.to(device).train()
    ours = build_sam("vit_t").image_encoder.to(device).train()
    ours.load_state_dict(official.state_dict())
    if s != 1024:
        raise SystemExit("the official TinyViT only runs at 1024 (it hard-codes a 64x64 token grid)")
    x = torch.randn(args.batch, 3, s, s, device=device)
    target = torch.randn(args.batch, 256, s // 16, s // 16, device=device)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    )
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for m in (official, ours)]
    for m, o in zip((official, ours), opts):  # warm-up
        _step(m, o, x, target, autocast)
    pairs = []
    for _ in range(args.rounds):
        times = []
        for m, o in zip((official, ours), opts):
            _sync(device)
            t = time.perf_counter()
            _step(m, o, x, target, autocast)
            _sync(device)
            times.append(time.perf_counter() - t)
        pairs.append(tuple(times))
    off = statistics.median(a for a, _ in pairs)
    own = statistics.median(b for _, b in pairs)
    ratio = statistics.median(b / a for a, b in pairs)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch} at {s}")
    print(
        f"train step: official {off * 1e3:.0f} ms ({args.batch / off:.2f} samples/s), ours {own * 1e3:.0f} ms "
        f"({args.batch / own:.2f} samples/s), step-time ratio {ratio:.2f} (median of {args.rounds})"
    )
    if device.type == "cuda":
        _estimate(args, device, args.batch / own)
    return 0


def _estimate(args: argparse.Namespace, device: torch.device, student_rate: float) -> None:
    """Times the ViT-H teacher's forward (bf16) and prints the wall time of distill_1pct."""
    from mobilesam import build_sam

    teacher = build_sam("vit_h").image_encoder.to(device).eval()
    x = torch.randn(8, 3, 1024, 1024, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        teacher(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(3):
            teacher(x)
        _sync(device)
    teacher_rate = 3 * 8 / (time.perf_counter() - t)
    pre = SA1B_1PCT_IMAGES / teacher_rate
    train = EPOCHS * SA1B_1PCT_IMAGES / student_rate
    print(f"teacher vit_h forward: {teacher_rate:.1f} images/s (bf16, batch 8)")
    print(
        f"distill_1pct estimate: precompute {pre / 3600:.2f} h + {EPOCHS} epochs {train / 3600:.2f} h = "
        f"{(pre + train) / 3600:.2f} h on this GPU (student at {student_rate:.0f} samples/s, batch {args.batch})"
    )
