"""SAM ViT attention with folded relative positions (no N x N bias) against the materialised bias, side by side.

`python scripts/benchmark.py attention [--rounds 3] [--threads 2]`: random weights (perturbed so the
relative-position tables matter), batch 1, fp32, CPU. Cases:
- `vit_h_global`: one global ViT-H block at 1024 (64 x 64 tokens, 16 heads: the bias is 16 x 4096 x 4096);
- `vit_h_window`: one windowed ViT-H block at 1024 (25 windows of 14 x 14);
- `vit_b_encoder`: the whole vit_b image encoder at 1024.
Prints per case the median time of each path (interleaved round by round; for the encoder also the default
rule of `Attention.fold_rel_pos`: folded global blocks, biased windows on CPU), their ratio, the relative error
between the outputs (DESIGN.md's max|a - b| / max|b|), and each path's peak resident memory above the model's,
measured in a fresh subprocess per path (ru_maxrss after one forward minus before it).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilesam import build_sam  # noqa: E402
from mobilesam.modeling.image_encoder import Block, set_rel_pos_folding  # noqa: E402
from mobilesam.variants import VIT_SIZES  # noqa: E402

CASES = ("vit_h_global", "vit_h_window", "vit_b_encoder")


@torch.no_grad()
def _noise_(module: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    for name, p in module.named_parameters():
        p.add_(torch.randn(p.shape, generator=g) * (0.1 if "rel_pos" in name else 0.02))
    return module.eval()


def make(case: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module and its input for one case."""
    torch.manual_seed(0)
    if case == "vit_b_encoder":
        return _noise_(build_sam("vit_b", img_size=1024).image_encoder), torch.randn(1, 3, 1024, 1024)
    dim, _, heads, _ = VIT_SIZES["vit_h"]
    block = Block(dim, heads, 4.0, True, True, 0 if case == "vit_h_global" else 14, (64, 64))
    return _noise_(block), torch.randn(1, 64, 64, dim)


def _rss_mib() -> float:
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork + exec
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (no /proc)


def peak_memory(case: str, fold: bool | None) -> float:
    """Peak resident MiB of one forward above the built module and input, in a fresh process."""
    code = (
        "import sys; sys.path.insert(0, 'scripts'); import torch, bench_attention as b; torch.set_num_threads(1)\n"
        f"m, x = b.make({case!r}); b.set_rel_pos_folding(m, {fold}); before = b._rss_mib()\n"
        "with torch.no_grad(): m(x)\n"
        "print(b._rss_mib() - before)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py attention", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, batch 1, median of {args.rounds} rounds")
    for case in args.cases.split(","):
        module, x = make(case)
        modes = (True, False, None) if case == "vit_b_encoder" else (True, False)  # None: the default rule
        times: dict[bool | None, list[float]] = {mode: [] for mode in modes}
        outs = {}
        with torch.no_grad():
            for r in range(args.rounds + 1):  # round 0 warms up
                for fold in modes if r % 2 else modes[::-1]:
                    set_rel_pos_folding(module, fold)
                    t = time.perf_counter()
                    outs[fold] = module(x)
                    if r:
                        times[fold].append(time.perf_counter() - t)
        ref = outs[False] - (x if case != "vit_b_encoder" else 0)
        err = float((outs[True] - outs[False]).abs().max() / ref.abs().max())
        del module, x, outs
        mem = {fold: peak_memory(case, fold) for fold in modes}
        med = {fold: statistics.median(times[fold]) for fold in modes}
        ratio = statistics.median(a / b for a, b in zip(times[True], times[False]))
        line = (
            f"{case}: folded {med[True] * 1e3:.0f} ms, bias {med[False] * 1e3:.0f} ms, ratio {ratio:.2f}; "
            f"peak memory folded {mem[True]:.0f} MiB, bias {mem[False]:.0f} MiB; rel. error {err:.1e}"
        )
        if None in modes:
            rule = statistics.median(a / b for a, b in zip(times[None], times[False]))
            line += f"; default rule {med[None] * 1e3:.0f} ms ({rule:.2f} of bias), peak {mem[None]:.0f} MiB"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
