"""Segment everything: our generator against the official MobileSAM one, same weights, same thresholds.

First the two parts that changed, each against its official counterpart: decoding 64 point prompts, and the
stability scores and boxes of 64 (`--points`) object-shaped masks (trained weights give those; random weights
give noise).
Then, for each grid size and threshold setting, the two generators run interleaved on the same image and their
masks are compared: the counts, and the lowest IoU of an official mask with our mask from the same point prompt.

Random weights predict IoUs of about -0.4..0.3 and logits within +-1, so SAM's default thresholds keep no mask;
that setting measures the decoding and the filters. The "open" setting keeps about half the candidates (no NMS:
random masks all span the image), which measures the upsampling and the output of many (noise-like) masks.
Needs the official code (`pip install mobilesam-mirror`, in the dev extra).
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch

from benchmarks import timing

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


def _parts(official, ours, size: tuple[int, int], rounds: int, n: int, warmup: int) -> list[list[str]]:
    """Rows for the two parts: n point decodes, and stability + boxes of n object-shaped masks."""
    from mobile_sam.utils.amg import batched_mask_to_box, calculate_stability_score

    from mobilesam.everything.mask_stats import LogitUpsampler
    from mobilesam.many_prompts import decode
    from mobilesam.transforms import preprocess_shape
    from tests.helpers import object_logits

    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 64, 64, generator=g)
    coords, labels = torch.rand(n, 1, 2, generator=g) * 1024, torch.ones(n, 1, dtype=torch.int)

    def official_decode():
        pe = official.prompt_encoder
        sparse, dense = pe((coords, labels), None, None)
        return official.mask_decoder(features, pe.get_dense_pe(), sparse, dense, True)

    logits = object_logits(n, 40.0, 0)
    input_size = preprocess_shape(*size, 1024)
    up = LogitUpsampler(ours, input_size, size)

    def official_stats():
        full = official.postprocess_masks(logits[:, None], input_size, size)[:, 0]
        return calculate_stability_score(full, 0.0, 1.0), batched_mask_to_box(full > 0)

    def our_stats():
        counts, boxes = up.stats(logits, (1.0, -1.0), 0.0)
        return counts[:, 0].int() / counts[:, 1].int(), boxes

    rows = []
    with torch.no_grad():
        dec = timing.interleave(
            {"official": official_decode, "ours": partial(decode, ours, features, coords, labels)}, rounds, warmup
        )
        err = timing.rel(dec.outputs["ours"][0], dec.outputs["official"][0])
        rows.append([f"decode {n} points, 3 masks each", dec.cell("official"), dec.cell("ours"),
                     timing.ratio_text(dec.ratio("ours", "official")), f"logits rel. error {err:.1e}"])  # fmt: skip
        st = timing.interleave({"official": official_stats, "ours": our_stats}, rounds, warmup)
    (ref_stab, ref_box), (stab, box) = st.outputs["official"], st.outputs["ours"]
    stab_err = float((ref_stab - stab).nan_to_num(0.0).abs().max())  # nan: an empty mask, 0 / 0 on both sides
    same = "boxes equal" if torch.equal(ref_box.float(), box) else "boxes DIFFERENT"
    rows.append([f"stability + box of {n} object-shaped masks at {size[0]}x{size[1]}", st.cell("official"),
                 st.cell("ours"), timing.ratio_text(st.ratio("ours", "official")),
                 f"{same}, stability max diff {stab_err:.1e}"])  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks everything", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="810x1080", help="HxW of the generated test image (default 810x1080)")
    ap.add_argument("--grids", default="16,32", help="points per side, comma-separated (default 16,32)")
    ap.add_argument("--settings", default="default,open", help=f"threshold settings from {list(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds per grid and setting (default 1)")
    ap.add_argument("--parts-rounds", type=int, default=5, help="rounds of the decoder and mask-statistics timings")
    ap.add_argument("--points", type=int, default=64, help="prompts and masks of the parts timings")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="a 4x4 grid on a small image, one round: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.image, args.grids, args.settings, args.rounds, args.parts_rounds, args.points = (
            "96x128",
            "4",
            "open",
            1,
            1,
            4,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    from mobilesam import SamAutomaticMaskGenerator, build_sam
    from tests.helpers import official_perturbed, scene

    official = official_perturbed("vit_t", seed=0).to(args.device)
    import mobile_sam  # already imported, quietly, by official_perturbed

    ours = build_sam("vit_t").to(args.device)
    ours.load_state_dict(official.state_dict())
    h, w = timing.image_size(args.image)
    img = scene(h, w)
    timing.print_header(f"everything: ours against the official generator, random vit_t, image {h}x{w}", args.device)
    head = ["", "official median", "ours median", "time ratio ours/official", "masks"]
    rows = (
        _parts(official, ours, (h, w), args.parts_rounds, args.points, 0 if args.quick else 1)
        if args.parts_rounds
        else []
    )
    sync = timing.sync_for(args.device)
    for grid in (int(g) for g in args.grids.split(",") if g):
        for name in args.settings.split(","):
            opts = {"points_per_side": grid, **SETTINGS[name]}
            gens = {
                "official": partial(mobile_sam.SamAutomaticMaskGenerator(official, **opts).generate, img),
                "ours": partial(SamAutomaticMaskGenerator(ours, **opts).generate, img),
            }
            r = timing.interleave(gens, args.rounds, warmup=0, sync=sync)
            ref, got = r.outputs["official"], r.outputs["ours"]
            masks = f"official {len(ref)}, ours {len(got)}, lowest IoU {agreement(ref, got):.4f}"
            ratio = timing.ratio_text(r.ratio("ours", "official"))
            rows.append(
                [f"{grid}x{grid} grid, {name}", r.cell("official", unit="s"), r.cell("ours", unit="s"), ratio, masks]
            )
    print(timing.table(head, rows))
    print(f"(parts: median of {args.parts_rounds} interleaved rounds; generators: {args.rounds}, no warm-up)")
    return 0
