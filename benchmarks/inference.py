"""Inference speed: ours against the official MobileSAM code with the same weights, part by part.

Interleaved (ABBA rounds, medians, paired ratios), random (perturbed) vit_t weights:
- the vit_t image encoder at 1024x1024;
- one point prompt's decode (prompt encoder + mask decoder, three masks);
- the upsampling of those masks to the original size with the threshold, on object-shaped logits (as trained
  weights produce) and on the noise-like logits of random weights, with the fraction of equal mask pixels;
- `SamPredictor.predict` end to end, one random point per round.
Needs the official code (`pip install mobilesam-mirror`, in the dev extra).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import timing


def _object_logits() -> torch.Tensor:
    """Three smooth, object-shaped 256x256 mask logits (1 x 3 x 256 x 256), as trained weights give."""
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    blobs = [(100, 80, 50, 40), (170, 120, 25, 15), (128, 90, 90, 70)]
    return torch.stack([8 * (1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2) for cx, cy, rx, ry in blobs])[None]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks inference", description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-rounds", type=int, default=25)
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="one round of each part on a small image: a smoke run")
    args = ap.parse_args(argv)
    warmup = 2
    if args.quick:
        args.rounds, args.decode_rounds, args.image, warmup = 1, 1, "300x450", 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from mobilesam import SamPredictor, build_sam
    from tests.helpers import official_perturbed

    official = official_perturbed("vit_t", seed=0)
    import mobile_sam  # already imported, quietly, by official_perturbed

    ours = build_sam("vit_t")
    ours.load_state_dict(official.state_dict())
    h, w = timing.image_size(args.image)
    timing.print_header(f"inference: ours against the official MobileSAM code, random vit_t, a {h}x{w} image")
    rows = []

    def row(name: str, r: timing.Rounds, extra: str = "") -> None:
        rows.append([name, r.cell("official"), r.cell("ours"), timing.ratio_text(r.ratio("ours", "official")), extra])

    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        enc = {"official": lambda: official.image_encoder(x), "ours": lambda: ours.image_encoder(x)}
        row("vit_t image encoder, 1024x1024", timing.interleave(enc, args.rounds, warmup=min(warmup, 1)))

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    ref, own = mobile_sam.SamPredictor(official), SamPredictor(ours)
    ref.set_image(img)
    own.set_image(img)
    emb = ref.features
    n = args.decode_rounds

    # 1. prompt encoder + mask decoder, one point, three masks
    pts = (torch.tensor([[[500.0, 300.0]]]), torch.tensor([[1]]))

    def decode(m):
        s, d = m.prompt_encoder(pts, None, None)
        return m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), s, d, True)

    with torch.no_grad():
        dec = {"official": lambda: decode(official), "ours": lambda: decode(ours)}
        row("one-point decode (prompt encoder + mask decoder)", timing.interleave(dec, n, warmup=warmup))
        noise = decode(ours)[0]

    # 2. upsampling to the original size and thresholding, on object-shaped logits (what trained weights give)
    #    and on the random weights' noise-like logits (the sparse border path falls back to dense interpolation)
    for name, logits in [("object-shaped", _object_logits()), ("random-weight", noise)]:
        agree = []
        up = {
            "official": lambda lg=logits: official.postprocess_masks(lg, ref.input_size, (h, w)) > 0,
            "ours": lambda lg=logits: ours.postprocess_masks(lg, own.input_size, (h, w), 0.0),
        }
        on_round = lambda _, o, a=agree: a.append(float((o["official"] == o["ours"]).float().mean()))  # noqa: E731
        r = timing.interleave(up, n, warmup=warmup, on_round=on_round)
        row(f"upsample 3 masks to {h}x{w} + threshold, {name} logits", r, f"{100 * min(agree):.4f}%")

    # 3. end to end through SamPredictor.predict (random weights), a new point each round
    points = [(np.array([[rng.integers(0, w), rng.integers(0, h)]]), np.array([1])) for _ in range(n + warmup)]
    agree = []
    pred = {
        "official": lambda pt, lab: ref.predict(pt, lab, multimask_output=True)[0],
        "ours": lambda pt, lab: own.predict(pt, lab, multimask_output=True)[0],
    }
    on_round = lambda _, o: agree.append(float((o["official"] == o["ours"]).mean()))  # noqa: E731
    r = timing.interleave(pred, n, warmup=warmup, inputs=lambda i: points[i + warmup], on_round=on_round)
    row(f"`SamPredictor.predict`, one point, to {h}x{w} (end to end)", r, f"{100 * min(agree):.4f}% (worst prompt)")
    print(timing.table(["", "official median", "ours median", "time ratio ours/official", "masks equal"], rows))
    print(f"(medians of {args.rounds} encoder and {n} decode rounds, interleaved; ratios paired per round)")
    return 0
