"""Prediction demo: segments two objects in a generated scene and writes an overlay PNG.

Uses `mobile_sam.pt` from the repo root when it is there; otherwise random weights (the masks are then
meaningless, but every step of the pipeline runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilesam import SAM  # noqa: E402


def scene(h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.normal(90, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 200) ** 2 + (xx - 220) ** 2 < 90**2] = [220, 60, 50]
    img[300:420, 380:600] = [40, 160, 230]
    return img


def main() -> int:
    ckpt = Path("mobile_sam.pt")
    model = SAM(ckpt if ckpt.exists() else None, img_size=None if ckpt.exists() else 512)
    print(f"weights: {ckpt if ckpt.exists() else 'random (put mobile_sam.pt in the repo root for real masks)'}")
    (result,) = model.predict(scene(), points=[[220, 200], [490, 360]], labels=[1, 1])
    out = Path("demo_out") / "demo_overlay.png"
    result.save(out)
    for i, (s, b) in enumerate(zip(result.scores, result.boxes)):
        print(f"object {i}: predicted IoU {s:.3f}, box {[int(v) for v in b]}")
    print(f"overlay: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
