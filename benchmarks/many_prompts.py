"""Many box prompts on one photo through `SAM.predict`: chunked factored decoding against the one-batch decoder.

Random vit_t weights at 1024, an 810x1080 photo, random boxes. Each (path, box count) runs in a fresh subprocess
per round, the paths alternating round by round (ABBA), and reports the time of the predict call (image encoding
included) and the process's peak resident memory (VmHWM: model, image and everything the call allocated):
- after: `SAM.predict` as it is now (4 prompt sets at a time, bool masks per chunk);
- before: the previous facade's path, `SamPredictor.predict_torch` over all boxes at once, then `masks_to_boxes`.
The before path at 500 boxes needs ~12.6 GiB, more than a shared machine may use: it runs at --before-boxes and
both paths are compared there (time, memory, the fraction of equal mask pixels); the after path also runs at
--boxes.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from benchmarks import timing


def predict(path: str, n: int, threads: int, img_size: int, save: str) -> dict:
    """Runs in its own process: one predict call over n random boxes by `path`, timed; the masks saved bit-packed."""
    import torch

    from mobilesam import SAM
    from mobilesam.mask_ops import masks_to_boxes

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (810, 1080, 3), dtype=np.uint8)
    img[200:600, 300:800] = (220, 180, 40)
    xy = rng.uniform(0, [1000, 750], (n, 2))
    wh = rng.uniform(20, 300, (n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [1079, 809])], 1).round()
    torch.manual_seed(0)
    sam = SAM(None, device="cpu", img_size=img_size)

    def before() -> torch.Tensor:
        p = sam.predictor
        p.set_image(img)
        tb = torch.as_tensor(p.transform.apply_boxes(boxes, img.shape[:2]), dtype=torch.float)
        masks, iou, _ = p.predict_torch(None, None, tb, multimask_output=False)
        masks = masks.flatten(0, 1).cpu()
        masks_to_boxes(masks)
        return masks

    def after() -> torch.Tensor:
        return sam.predict(img, bboxes=boxes.tolist())[0].masks

    seconds, masks = timing.timed(after if path == "after" else before)
    if save:
        np.save(save, np.packbits(masks.numpy(), axis=-1))
    return {"seconds": seconds, "masks": list(masks.shape)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks many_prompts", description=__doc__)
    ap.add_argument("--boxes", type=int, default=500)
    ap.add_argument("--before-boxes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="4 boxes at 256, one round (2 subprocesses): a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.boxes = args.before_boxes = 4
        args.rounds, args.img_size = 1, 256
    import torch

    torch.set_num_threads(args.threads)  # for the header: each child sets the same
    timing.print_header(
        f"many_prompts: random vit_t at {args.img_size}, an 810x1080 photo, a fresh process per path and round"
    )
    func = f"{__name__}:predict"
    n = args.before_boxes
    with tempfile.TemporaryDirectory() as tmp:
        common = {"threads": args.threads, "img_size": args.img_size}
        sides = {
            f"after, {n} boxes": (func, {"path": "after", "n": n, "save": f"{tmp}/after.npy"} | common),
            f"before, {n} boxes": (func, {"path": "before", "n": n, "save": f"{tmp}/before.npy"} | common),
        }
        if args.boxes != n:
            sides[f"after, {args.boxes} boxes"] = (func, {"path": "after", "n": args.boxes, "save": ""} | common)
        rounds = timing.isolated(sides, args.rounds)
        a, b = np.load(f"{tmp}/after.npy"), np.load(f"{tmp}/before.npy")
        same = 1 - np.unpackbits(a ^ b).sum() / (a.size * 8)
    base = f"after, {n} boxes"
    rows = [
        [k, rounds.cell(k, unit="s"), timing.ratio_text(rounds.ratio(k, base)), f"{rounds.peak(k) / 1024:.2f}"]
        for k in sides
    ]
    print(timing.table(["path", "median (predict call)", f"time ratio to {base}", "peak resident GiB"], rows))
    print(rounds.note(base) + f"; masks of the two paths at {n} boxes equal on {same:.6%} of pixels")
    return 0
