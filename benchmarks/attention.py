"""SAM ViT attention with folded relative positions (no N x N bias) against the materialised bias, time and memory.

Random weights (perturbed so the relative-position tables matter), batch 1, fp32, CPU. Cases:
- `vit_h_global`: one global ViT-H block (at 1024: 64 x 64 tokens, 16 heads, the bias is 16 x 4096 x 4096);
- `vit_h_window`: one windowed ViT-H block (14 x 14 windows);
- `vit_b_encoder`: the whole vit_b image encoder, also with the default rule of `Attention.fold_rel_pos`
  (folded global blocks, biased windows on CPU).
Per case: each path's median time (interleaved rounds), the paired ratio to the bias path, the relative error
between the outputs, and each path's peak resident memory above the built module, in a fresh subprocess per path.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import timing

CASES = ("vit_h_global", "vit_h_window", "vit_b_encoder")
PATHS = {"folded": True, "bias": False, "default rule": None}


@torch.no_grad()
def _noise_(module: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    for name, p in module.named_parameters():
        p.add_(torch.randn(p.shape, generator=g) * (0.1 if "rel_pos" in name else 0.02))
    return module.eval()


def make(case: str, img_size: int = 1024) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module and its input for one case."""
    from mobilesam import build_sam
    from mobilesam.modeling.image_encoder import Block
    from mobilesam.variants import VIT_SIZES

    torch.manual_seed(0)
    if case == "vit_b_encoder":
        return _noise_(build_sam("vit_b", img_size=img_size).image_encoder), torch.randn(1, 3, img_size, img_size)
    dim, _, heads, _ = VIT_SIZES["vit_h"]
    grid = img_size // 16
    block = Block(dim, heads, 4.0, True, True, 0 if case == "vit_h_global" else 14, (grid, grid))
    return _noise_(block), torch.randn(1, grid, grid, dim)


def peak_above_module(case: str, path: str, img_size: int) -> dict:
    """Runs in its own process: one forward's peak resident MiB above the built module and its input."""
    from mobilesam.modeling.image_encoder import set_rel_pos_folding

    torch.set_num_threads(1)
    module, x = make(case, img_size)
    set_rel_pos_folding(module, PATHS[path])
    before = timing.peak_rss_mib()
    with torch.no_grad():
        seconds, _ = timing.timed(module, x)
    return {"seconds": seconds, "above_mib": timing.peak_rss_mib() - before}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks attention", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--quick", action="store_true", help="one global block at 256, one round: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.img_size, args.cases = 1, 256, "vit_h_global"
    from mobilesam.modeling.image_encoder import set_rel_pos_folding

    torch.set_num_threads(args.threads)
    timing.print_header(f"attention: folded relative positions against the bias, fp32, batch 1, at {args.img_size}")
    rows = []
    for case in args.cases.split(","):
        module, x = make(case, args.img_size)
        paths = list(PATHS) if case == "vit_b_encoder" else ["folded", "bias"]

        def run(path: str, m=module, x=x) -> torch.Tensor:
            set_rel_pos_folding(m, PATHS[path])
            with torch.no_grad():
                return m(x)

        rounds = timing.interleave({p: (lambda p=p: run(p)) for p in paths}, args.rounds)
        outs = rounds.outputs
        ref = outs["bias"] - (x if case != "vit_b_encoder" else 0)  # a block adds its input back
        err = float((outs["folded"] - outs["bias"]).abs().max() / ref.abs().max())
        del module, x, outs, rounds.outputs
        for p in paths:
            mem = timing.in_subprocess(f"{__name__}:peak_above_module", case=case, path=p, img_size=args.img_size)
            rows.append(
                [case, p, rounds.cell(p), timing.ratio_text(rounds.ratio(p, "bias")), f"{mem['above_mib']:.0f}"]
                + [f"{err:.1e}" if p == "folded" else ""]
            )
    head = ["case", "path", "median", "time ratio to bias", "peak MiB above the module", "rel. error folded/bias"]
    print(timing.table(head, rows))
    print(f"(median of {args.rounds} interleaved rounds; memory: one forward in a fresh process per path, 1 thread)")
    return 0
