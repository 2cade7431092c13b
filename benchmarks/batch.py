"""Images per second of `SAM.predict` over a list of images: batches of N images per encoder call against one.

Random vit_t weights, 810x1080 images, one point each; the batch sizes interleaved round by round (ABBA); the
median time per image and its paired ratio to the first batch size. With `--encoder F --decoder F` (files of
`mobilesam export`) the same for that runtime's predictor (`load_predictor(...).predict(images, batch_size=N)`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks import timing


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks batch", description=__doc__)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--image", default="810x1080", help="HxW of each image")
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=1024, help="of the random PyTorch model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", default=None, help="an exported encoder (.onnx, .pte, .xml, .tflite)")
    ap.add_argument("--decoder", default=None, help="the decoder of the same export")
    ap.add_argument("--quick", action="store_true", help="2 small images at 256, one round: a smoke run")
    args = ap.parse_args(argv)
    warmup = 1
    if args.quick:
        args.images, args.image, args.batch_sizes, args.rounds, args.img_size, warmup = 2, "96x128", "1,2", 1, 256, 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.encoder:
        from mobilesam.deploy import load_predictor

        sam = load_predictor(args.encoder, args.decoder, threads=args.threads)
        what = f"{type(sam).__name__} ({Path(args.encoder).name})"
    else:
        from mobilesam import SAM

        sam = SAM(None, device=args.device, img_size=args.img_size)
        what = f"random vit_t at {args.img_size}, PyTorch on {args.device}"
    h, w = timing.image_size(args.image)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    point = [w // 2, h // 2]
    names = {b: f"batch_size={b}" for b in sizes}
    contenders = {names[b]: (lambda b=b: sam.predict(images, points=point, batch_size=b)) for b in sizes}
    sync = timing.sync_for(args.device)
    timing.print_header(f"batch: {what}, {args.images} images of {h}x{w}, one point each", args.device)
    rounds = timing.interleave(contenders, args.rounds, warmup=warmup, sync=sync)
    base = names[sizes[0]]
    rows = []
    for b in sizes:
        per_image = rounds.median(names[b]) / args.images
        row = [
            names[b],
            timing.seconds(per_image),
            f"{1 / per_image:.2f}",
            timing.ratio_text(rounds.ratio(names[b], base)),
        ]
        rows.append(row)
    print(timing.table(["", "median per image", "images/s", f"time ratio to {base}"], rows))
    print(rounds.note(base))
    return 0
