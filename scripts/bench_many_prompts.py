"""Many box prompts on one photo through `SAM.predict`: chunked factored decoding against the one-batch decoder.

`python scripts/benchmark.py many_prompts [--boxes 500] [--before-boxes 100] [--rounds 3]`: random vit_t weights
at 1024, an 810x1080 photo, random boxes. Each (path, box count) runs in a fresh subprocess, alternating paths
round by round, and reports the time of the predict call (image encoding included) and the process's peak
resident memory (VmHWM: model, image and everything the call allocated):
- after: `SAM.predict` as it is now (`many_prompts.predict_many`: 4 prompt sets at a time, bool masks per chunk);
- before: the previous facade's path, `SamPredictor.predict_torch` over all boxes at once, then `masks_to_boxes`.
The before path at 500 boxes needs ~12.6 GiB, more than this shared machine may use: it runs at --before-boxes
and both paths are compared there; the after path also runs at --boxes. Masks of both paths are compared at
--before-boxes (fraction of equal pixels).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np, torch
sys.path.insert(0, {root!r})
from mobilesam import SAM
from mobilesam.mask_ops import masks_to_boxes
torch.set_num_threads({threads})
path, n = {path!r}, {n}
rng = np.random.default_rng(0)
img = rng.integers(0, 255, (810, 1080, 3), dtype=np.uint8)
img[200:600, 300:800] = (220, 180, 40)
xy = rng.uniform(0, [1000, 750], (n, 2))
wh = rng.uniform(20, 300, (n, 2))
boxes = np.concatenate([xy, np.minimum(xy + wh, [1079, 809])], 1).round()
torch.manual_seed(0)
sam = SAM(None, device="cpu", img_size=1024)
t = time.perf_counter()
if path == "after":
    (r,) = sam.predict(img, bboxes=boxes.tolist())
    masks, scores = r.masks, r.scores
else:
    p = sam.predictor
    p.set_image(img)
    tb = torch.as_tensor(p.transform.apply_boxes(boxes, img.shape[:2]), dtype=torch.float)
    masks, iou, _ = p.predict_torch(None, None, tb, multimask_output=False)
    masks = masks.flatten(0, 1).cpu()
    scores, _ = iou.flatten().cpu(), masks_to_boxes(masks)
dt = time.perf_counter() - t
hwm = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0] / 2**20
if {save!r}:
    np.save({save!r}, np.packbits(masks.numpy(), axis=-1))
print(json.dumps({{"s": dt, "peak_gib": hwm, "masks": list(masks.shape)}}))
"""


def run(path: str, n: int, threads: int, save: str = "") -> dict:
    code = CHILD.format(root=str(ROOT), threads=threads, path=path, n=n, save=save)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{path} with {n} boxes failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py many_prompts", description=__doc__)
    ap.add_argument("--boxes", type=int, default=500)
    ap.add_argument("--before-boxes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import tempfile

    import numpy as np

    print(f"random vit_t at 1024, 810x1080 photo, {args.threads} threads, median of {args.rounds} rounds")
    res: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = [("after", args.before_boxes), ("before", args.before_boxes)]
            for path, n in (order if r % 2 == 0 else order[::-1]) + [("after", args.boxes)]:
                save = f"{tmp}/{path}.npy" if r == 0 and n == args.before_boxes else ""
                out = run(path, n, args.threads, save)
                res.setdefault((path, n), []).append(out)
                print(f"round {r + 1}: {path} {n} boxes: {out['s']:.1f} s, peak {out['peak_gib']:.2f} GiB")
        a, b = np.load(f"{tmp}/after.npy"), np.load(f"{tmp}/before.npy")
        same = 1 - np.unpackbits(a ^ b).sum() / (a.size * 8)
    for (path, n), outs in sorted(res.items()):
        t, m = statistics.median(o["s"] for o in outs), max(o["peak_gib"] for o in outs)
        print(f"{path} {n} boxes: {t:.1f} s, peak resident {m:.2f} GiB")
    n = args.before_boxes
    ratio = statistics.median(b["s"] / a["s"] for a, b in zip(res[("after", n)], res[("before", n)]))  # rounds paired
    print(f"speed-up at {n} boxes (before / after, paired rounds): {ratio:.1f}x; masks equal on {same:.6%} of pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
