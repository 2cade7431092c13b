"""Teacher precision drift (GPU): embeddings and masks of tf32, bf16 and fp16 against fp32, and their speed.

`python scripts/benchmark.py teacher_precision --checkpoint sam_vit_h_4b8939.pth --images DIR` runs the
teacher (default vit_h at 1024) on decoded stored JPEGs made from DIR (or generated SA-1B-like images), in
each precision, interleaved round by round, and prints per precision:
- embedding relative error vs fp32 (DESIGN.md's max|a - b| / max|b|, worst image) and the mean relative RMS;
- mask IoU vs fp32: the teacher's own prompt encoder + mask decoder, one point at each image's centre and one
  box, decoded from each precision's embedding at full size (best-of-3 for the point), mean and worst;
- images/s per precision and its ratio to fp32.
The precompute's default stays fp32 until these numbers, from real weights, justify another (see data/README.md).
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

from data.codec import decode_jpeg, encode_jpeg  # noqa: E402
from data.sources import list_folder  # noqa: E402
from data.synthetic import make_sa1b_image  # noqa: E402
from data.teacher import embed, load_teacher  # noqa: E402
from mobilesam.transforms import resize_image  # noqa: E402


def _images(args: argparse.Namespace) -> list[torch.Tensor]:
    if args.images:
        from data.sources import decode_image

        refs, _ = list_folder(args.images)
        rgbs = [decode_image(r.image.read(), r.key) for r in refs[: args.n]]
    else:
        rng = np.random.default_rng(0)
        rgbs = [make_sa1b_image(rng, (750, 1125), 8)[0] for _ in range(args.n)]
    return [decode_jpeg(encode_jpeg(resize_image(x, args.img_size), 95)) for x in rgbs]


@torch.no_grad()
def _masks(model, emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Point (best of 3) and box masks at the input size (2 x h x w bool)."""
    h, w = size
    pe = model.prompt_encoder.get_dense_pe()
    pts = (torch.tensor([[[w / 2, h / 2]]], device=emb.device), torch.tensor([[1]], device=emb.device))
    box = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], device=emb.device)
    out = []
    for prompt, multi in (((pts, None), True), ((None, box), False)):
        sparse, dense = model.prompt_encoder(prompt[0], prompt[1], None)
        low, iou = model.mask_decoder(emb[None], pe, sparse, dense, multi)
        best = low[0, int(iou[0].argmax())] if multi else low[0, 0]
        out.append(model.postprocess_masks(best[None, None], (h, w), (h, w))[0, 0] > 0)
    return torch.stack(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py teacher_precision", description=__doc__)
    ap.add_argument("--variant", default="vit_h")
    ap.add_argument("--checkpoint", default=None, help="real weights (random weights say little about drift)")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--images", default=None, help="a folder of images (default: generated)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precisions", default="tf32,bf16,fp16")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run of this script")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("teacher_precision needs a CUDA device (the CPU precompute always runs fp32); skipped")
        return 0
    sync = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    model, info = load_teacher(args.variant, args.checkpoint, args.img_size, args.device)
    images = _images(args)
    precisions = ["fp32", *args.precisions.split(",")]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{args.variant} ({info['checkpoint_sha256'][:12]}), img_size {args.img_size}, {len(images)} images, "
        f"{device_name}"
    )
    embs = {p: [] for p in precisions}
    times = {p: [] for p in precisions}
    for k in range(0, len(images), args.batch_size):
        chunk = images[k : k + args.batch_size]
        for p in precisions:  # interleaved, so clocks and temperature affect all alike
            embed(model, chunk, p)  # warm-up (cuDNN/cuBLAS choice per precision)
            sync()
            t = time.perf_counter()
            e = embed(model, chunk, p)
            sync()
            times[p].append(len(chunk) / (time.perf_counter() - t))
            embs[p].append(e)
    ref = torch.cat(embs["fp32"])
    ref_masks = [_masks(model, ref[i], images[i].shape[1:]) for i in range(len(images))]
    for p in precisions[1:]:
        e = torch.cat(embs[p])
        rel = max(float((e[i] - ref[i]).abs().max() / ref[i].abs().max()) for i in range(len(e)))
        rms = float(((e - ref).pow(2).mean() / ref.pow(2).mean()).sqrt())
        ious = []
        for i in range(len(images)):
            m = _masks(model, e[i], images[i].shape[1:])
            inter = (m & ref_masks[i]).flatten(1).sum(1).float()
            union = (m | ref_masks[i]).flatten(1).sum(1).float().clamp_min(1)
            ious += (inter / union).tolist()
        speed = statistics.median(times[p]) / statistics.median(times["fp32"])
        print(
            f"{p}: embedding rel err {rel:.2e} (worst image), rel RMS {rms:.2e}; mask IoU vs fp32 mean "
            f"{np.mean(ious):.4f}, worst {min(ious):.4f}; {statistics.median(times[p]):.1f} img/s, {speed:.2f}x fp32"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
