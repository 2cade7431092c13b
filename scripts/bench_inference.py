"""Inference speed on this machine: ours against the official MobileSAM code with the same weights.

Measures (interleaved, one pair per round, median over rounds):
- the vit_t image encoder at 1024x1024;
- one point prompt's decode (prompt encoder + mask decoder, three masks);
- the upsampling of those masks to the original size with the threshold, on object-shaped logits (as trained
  weights produce) and on the noise-like logits of random weights, with the fraction of equal mask pixels;
- SamPredictor.predict end to end with random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _timed(fn, *args, **kwargs) -> float:
    return _run(fn, *args, **kwargs)[0]


def _run(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py inference", description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-rounds", type=int, default=25)
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mobilesam import SamPredictor, build_sam
    from tests.helpers import official_perturbed

    official = official_perturbed("vit_t", seed=0)
    import mobile_sam  # already imported, quietly, by official_perturbed

    ours = build_sam("vit_t")
    ours.load_state_dict(official.state_dict())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    x = torch.randn(1, 3, 1024, 1024)
    enc = []
    with torch.no_grad():
        official.image_encoder(x), ours.image_encoder(x)  # warm-up
        for _ in range(args.rounds):
            a = _timed(official.image_encoder, x)
            b = _timed(ours.image_encoder, x)
            enc.append((a, b))
    _report("image encoder 1024", enc)

    h, w = (int(v) for v in args.image.split("x"))
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
        _report(
            "decode (prompt encoder + mask decoder)",
            [(_timed(lambda: decode(official)), _timed(lambda: decode(ours))) for _ in range(n)][2:],
        )

    # 2. upsampling to the original size and thresholding, on object-shaped logits (what trained weights give)
    #    and on the random weights' noise-like logits (the sparse border path falls back to dense interpolation)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    shaped = torch.stack(
        [
            8 * (1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2)
            for cx, cy, rx, ry in [(100, 80, 50, 40), (170, 120, 25, 15), (128, 90, 90, 70)]
        ]
    )[None]
    with torch.no_grad():
        noise = decode(ours)[0]
    for name, logits in [("object-shaped", shaped), ("random-weight", noise)]:
        pairs, agree = [], []
        for _ in range(n):
            a, r = _run(lambda x: official.postprocess_masks(x, ref.input_size, (h, w)) > 0, logits)
            b, o = _run(ours.postprocess_masks, logits, own.input_size, (h, w), 0.0)
            pairs.append((a, b))
            agree.append(float((r == o).float().mean()))
        _report(f"upsample to {h}x{w} + threshold, {name} logits (3 masks)", pairs[2:])
        print(f"  masks equal on {100 * min(agree):.4f}% of pixels")

    # 3. end to end through SamPredictor.predict (random weights)
    dec, agree = [], []
    for _ in range(n):
        pt, lab = np.array([[rng.integers(0, w), rng.integers(0, h)]]), np.array([1])
        a, r = _run(ref.predict, pt, lab, multimask_output=True)
        b, o = _run(own.predict, pt, lab, multimask_output=True)
        dec.append((a, b))
        agree.append(float((r[0] == o[0]).mean()))
    _report(f"SamPredictor.predict, one point, to {h}x{w} (random weights)", dec[2:])
    print(f"  masks equal to the official ones on {100 * min(agree):.4f}% of pixels (worst prompt)")
    return 0


def _report(name: str, pairs: list[tuple[float, float]]) -> None:
    off = statistics.median(a for a, _ in pairs)
    own = statistics.median(b for _, b in pairs)
    ratio = statistics.median(b / a for a, b in pairs)
    print(f"{name}: official {off * 1e3:.1f} ms, ours {own * 1e3:.1f} ms, ratio {ratio:.2f} (median of {len(pairs)})")
