"""Segment-everything speed: our generator against the official MobileSAM one, same weights, same thresholds.

First the two parts that changed, each against its official counterpart: decoding 64 point prompts, and the
stability scores and boxes of 64 object-shaped masks (trained weights give those; random weights give noise).
Then, for each grid size and threshold setting, the two generators run in turn on the same image (one pair per round;
the medians and the median ratio are reported) and their masks are compared: the counts, and the IoU of each
official mask with our mask from the same point prompt (the lowest is reported).

Random weights predict IoUs of about -0.4..0.3 and logits within +-1, so SAM's default thresholds keep no mask;
that setting measures the decoding and the filters. The "open" setting keeps about half the candidates (no NMS:
random masks all span the image), which measures the upsampling and the output of many (noise-like) masks.

    python scripts/benchmark.py everything --image 810x1080 --grids 16,32 --settings default,open
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch

SETTINGS = {
    "default": {},
    "open": {
        "pred_iou_thresh": 0.02,
        "stability_score_offset": 0.1,
        "stability_score_thresh": 0.02,
        "box_nms_thresh": 1.0,
    },
}


def agreement(ref: list[dict], got: list[dict]) -> float:
    """Lowest IoU of an official mask with the best of our masks from the same point prompt (1.0 if none)."""
    by_point: dict[tuple, list[np.ndarray]] = {}
    for r in got:
        by_point.setdefault(tuple(r["point_coords"][0]), []).append(r["segmentation"])
    worst = 1.0
    for r in ref:
        a = r["segmentation"]
        best = 0.0
        for b in by_point.get(tuple(r["point_coords"][0]), []):
            union = np.count_nonzero(a | b)
            best = max(best, np.count_nonzero(a & b) / union if union else 1.0)
        worst = min(worst, best)
    return worst


def interleaved(a, b, rounds: int) -> tuple[list[tuple[float, float]], tuple]:
    """Runs a() then b() `rounds` times: the (seconds a, seconds b) of each round, and the last two results."""
    pairs = []
    for _ in range(rounds):
        t = time.perf_counter()
        ra = a()
        ta = time.perf_counter() - t
        t = time.perf_counter()
        rb = b()
        pairs.append((ta, time.perf_counter() - t))
    return pairs, (ra, rb)


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Median time of each side and the median of the per-round ratios b / a."""
    return (
        statistics.median(a for a, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(b / a for a, b in pairs),
    )


def _bench_stats(official, ours, size: tuple[int, int], rounds: int) -> None:
    """Stability scores and boxes of 64 object-shaped masks: the official full-resolution way against ours."""
    from mobile_sam.utils.amg import batched_mask_to_box, calculate_stability_score

    from mobilesam.everything.mask_stats import LogitUpsampler
    from mobilesam.transforms import preprocess_shape
    from tests.helpers import object_logits

    logits = object_logits(64, 40.0, 0)
    input_size = preprocess_shape(*size, 1024)
    up = LogitUpsampler(ours, input_size, size)

    def reference():
        full = official.postprocess_masks(logits[:, None], input_size, size)[:, 0]
        return calculate_stability_score(full, 0.0, 1.0), batched_mask_to_box(full > 0)

    def own():
        counts, boxes = up.stats(logits, (1.0, -1.0), 0.0)
        return counts[:, 0].int() / counts[:, 1].int(), boxes

    with torch.no_grad():
        pairs, ((ref_stab, ref_box), (stab, box)) = interleaved(reference, own, rounds)
    stab_err = float((ref_stab - stab).nan_to_num(0.0).abs().max())  # nan: an empty mask, 0 / 0 on both sides
    off, own_t, ratio = medians(pairs)
    print(
        f"stability + box of 64 object-shaped masks at {size[0]}x{size[1]}: official {off * 1e3:.0f} ms, "
        f"ours {own_t * 1e3:.0f} ms, ratio {ratio:.2f} (median of {rounds}); boxes "
        f"{'equal' if torch.equal(ref_box.float(), box) else 'DIFFERENT'}, stability max diff {stab_err:.1e}",
        flush=True,
    )


def _bench_decode(official, ours, rounds: int) -> None:
    """Decoding 64 point prompts on one image embedding: the official mask decoder against `many_prompts`."""
    from mobilesam.many_prompts import decode

    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 64, 64, generator=g)
    coords, labels = torch.rand(64, 1, 2, generator=g) * 1024, torch.ones(64, 1, dtype=torch.int)

    def reference():
        pe = official.prompt_encoder
        sparse, dense = pe((coords, labels), None, None)
        return official.mask_decoder(features, pe.get_dense_pe(), sparse, dense, True)

    with torch.no_grad():
        grid_decode = partial(decode, ours, features, coords, labels)
        pairs, ((ref_masks, _), (masks, _)) = interleaved(reference, grid_decode, rounds)
    err = float((masks - ref_masks).abs().max() / ref_masks.abs().max())
    off, own, ratio = medians(pairs)
    print(
        f"decode 64 points, 3 masks each: official {off * 1e3:.0f} ms, ours {own * 1e3:.0f} ms, ratio {ratio:.2f} "
        f"(median of {rounds}); mask logits relative error {err:.1e}",
        flush=True,
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py everything", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="810x1080", help="HxW of the generated test image (default 810x1080)")
    ap.add_argument("--grids", default="16,32", help="points per side, comma-separated (default 16,32)")
    ap.add_argument("--settings", default="default,open", help=f"threshold settings from {list(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=1, help="official/ours pairs per setting (default 1)")
    ap.add_argument("--parts-rounds", type=int, default=5, help="rounds of the decoder and mask-statistics timings")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mobilesam import SamAutomaticMaskGenerator, SamPredictor, build_sam
    from tests.helpers import official_perturbed, scene

    official = official_perturbed("vit_t", seed=0).to(args.device)
    import mobile_sam  # already imported, quietly, by official_perturbed

    ours = build_sam("vit_t").to(args.device)
    ours.load_state_dict(official.state_dict())
    h, w = (int(v) for v in args.image.split("x"))
    img = scene(h, w)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, image {h}x{w}, random weights")
    with torch.no_grad():  # warm-up: first calls pay one-time costs
        mobile_sam.SamPredictor(official).set_image(img[:64, :64])
        SamPredictor(ours).set_image(img[:64, :64])

    if args.parts_rounds:
        _bench_decode(official, ours, args.parts_rounds)
        _bench_stats(official, ours, (h, w), args.parts_rounds)
    for grid in (int(g) for g in args.grids.split(",") if g):
        for name in args.settings.split(","):
            opts = {"points_per_side": grid, **SETTINGS[name]}
            ref_gen = mobile_sam.SamAutomaticMaskGenerator(official, **opts)
            our_gen = SamAutomaticMaskGenerator(ours, **opts)
            pairs, (ref, got) = interleaved(partial(ref_gen.generate, img), partial(our_gen.generate, img), args.rounds)
            off, own, ratio = medians(pairs)
            print(
                f"{grid}x{grid} grid, {name} thresholds: official {off:.1f} s, ours {own:.1f} s, ratio {ratio:.2f} "
                f"(median of {len(pairs)}); masks official {len(ref)}, ours {len(got)}, "
                f"lowest IoU {agreement(ref, got):.4f}",
                flush=True,
            )
    return 0
