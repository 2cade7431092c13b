"""Images per second of `SAM.predict` over a list of images, one encoder batch per image against batches of N.

`python scripts/benchmark.py batch [--images 8] [--batch-sizes 1,4,8] [--rounds 3]`: random vit_t weights at
1024, 810x1080 images, one point each; batch sizes interleaved round by round; median images/s and the ratio of
each batch size to batch_size=1 (paired rounds). With `--encoder F --decoder F` (files of `mobilesam export`) the
same for that runtime's predictor (`load_predictor(...).predict(images, batch_size=N)`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilesam import SAM  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py batch", description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", default=None, help="an exported encoder (.onnx, .pte, .xml, .tflite)")
    ap.add_argument("--decoder", default=None, help="the decoder of the same export")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.encoder:
        from mobilesam.deploy import load_predictor

        sam = load_predictor(args.encoder, args.decoder, threads=args.threads)
        args.device = f"{type(sam).__name__} ({Path(args.encoder).name})"
    else:
        sam = SAM(None, device=args.device, img_size=1024)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (810, 1080, 3), dtype=np.uint8) for _ in range(args.images)]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    print(f"random vit_t at 1024, {args.images} images of 810x1080, {args.device}, {args.threads} threads")
    for r in range(args.rounds + 1):  # round 0 warms up
        for b in sizes if r % 2 else sizes[::-1]:
            t = time.perf_counter()
            sam.predict(images, points=[540, 400], batch_size=b)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:
                rates[b].append(args.images / (time.perf_counter() - t))
    base = rates[sizes[0]]
    for b in sizes:
        ratio = statistics.median(x / y for x, y in zip(rates[b], base))
        print(f"batch_size={b}: {statistics.median(rates[b]):.2f} images/s, {ratio:.2f}x batch_size={sizes[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
