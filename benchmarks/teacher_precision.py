"""Teacher precision drift (GPU): embeddings and masks of tf32, bf16 and fp16 against fp32, and their speed.

Runs the teacher (default vit_h at 1024) on decoded stored JPEGs made from --images (or generated SA-1B-like
images), in each precision, interleaved chunk by chunk (ABBA), and prints per precision:
- embedding relative error vs fp32 (max|a - b| / max|b|, worst image) and the mean relative RMS;
- mask IoU vs fp32: the teacher's own prompt encoder + mask decoder, one point at each image's centre and one
  box, decoded from each precision's embedding at full size (best-of-3 for the point), mean and worst;
- the median time per chunk, images/s and the paired time ratio to fp32.
The precompute's default stays fp32 until these numbers, from real weights, justify another (see data/README.md).
`python -m benchmarks teacher_precision --checkpoint sam_vit_h_4b8939.pth --images DIR`
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import timing


def _images(args: argparse.Namespace) -> list[torch.Tensor]:
    from data.codec import decode_jpeg, encode_jpeg
    from data.sources import decode_image, list_folder
    from data.synthetic import make_sa1b_image
    from mobilesam.transforms import resize_image

    if args.images:
        refs, _ = list_folder(args.images)
        rgbs = [decode_image(r.image.read(), r.key) for r in refs[: args.n]]
    else:
        rng = np.random.default_rng(0)
        size = (750, 1125) if args.img_size >= 512 else (args.img_size * 3 // 4, args.img_size)
        rgbs = [make_sa1b_image(rng, size, 8)[0] for _ in range(args.n)]
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
    ap = argparse.ArgumentParser(prog="python -m benchmarks teacher_precision", description=__doc__)
    ap.add_argument("--variant", default="vit_h")
    ap.add_argument("--checkpoint", default=None, help="real weights (random weights say little about drift)")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--images", default=None, help="a folder of images (default: generated)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precisions", default="tf32,bf16,fp16")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run")
    ap.add_argument("--quick", action="store_true", help="vit_t at 256 on the CPU, 2 images, bf16: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.variant, args.img_size, args.n, args.batch_size, args.precisions, args.device = (
            "vit_t", 256, 2, 2, "bf16", "cpu"
        )  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        print("teacher_precision needs a CUDA device (the CPU precompute always runs fp32); skipped")
        return 0
    from data.teacher import embed, load_teacher

    model, info = load_teacher(args.variant, args.checkpoint, args.img_size, args.device)
    images = _images(args)
    precisions = ["fp32", *args.precisions.split(",")]
    chunks = [images[k : k + args.batch_size] for k in range(0, len(images), args.batch_size)]
    timing.print_header(
        f"teacher_precision: {args.variant} ({info['checkpoint_sha256'][:12]}), img_size {args.img_size}, "
        f"{len(images)} images in chunks of {args.batch_size}",
        args.device,
    )
    # interleaved chunk by chunk, so clocks and temperature affect all alike; each chunk warms up first
    # (cuDNN/cuBLAS choose their kernels per precision)
    embs: dict[str, list[torch.Tensor]] = {p: [] for p in precisions}
    contenders = {p: (lambda chunk, p=p: embed(model, chunk, p)) for p in precisions}
    rounds = timing.interleave(
        contenders, len(chunks), warmup=1, sync=timing.sync_for(args.device), inputs=lambda r: (chunks[max(r, 0)],),
        on_round=lambda _, outs: [embs[p].append(outs[p]) for p in precisions],
    )  # fmt: skip
    ref = torch.cat(embs["fp32"])
    ref_masks = [_masks(model, ref[i], images[i].shape[1:]) for i in range(len(images))]
    rows = [["fp32", rounds.cell("fp32"), f"{rounds.rate('fp32', len(chunks[0])):.1f}", "x1.00", "", "", ""]]
    for p in precisions[1:]:
        e = torch.cat(embs[p])
        rel = max(timing.rel(e[i].float().cpu(), ref[i].float().cpu()) for i in range(len(e)))
        rms = float(((e - ref).pow(2).mean() / ref.pow(2).mean()).sqrt())
        ious = []
        for i in range(len(images)):
            m = _masks(model, e[i], images[i].shape[1:])
            inter = (m & ref_masks[i]).flatten(1).sum(1).float()
            union = (m | ref_masks[i]).flatten(1).sum(1).float().clamp_min(1)
            ious += (inter / union).tolist()
        rows.append(
            [p, rounds.cell(p), f"{rounds.rate(p, len(chunks[0])):.1f}", timing.ratio_text(rounds.ratio(p, "fp32")),
             f"{rel:.2e}", f"{rms:.2e}", f"{np.mean(ious):.4f} / {min(ious):.4f}"]
        )  # fmt: skip
    head = ["precision", "median per chunk", "images/s", "time ratio to fp32", "embedding rel. error (worst image)"]
    print(timing.table(head + ["rel. RMS", "mask IoU vs fp32: mean / worst"], rows))
    print(rounds.note("fp32"))
    return 0
