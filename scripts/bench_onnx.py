"""ONNX Runtime on CPU against the PyTorch path (ours), and what dynamic int8 quantisation costs in accuracy.

vit_t at 1024 with random (perturbed) weights, exported with `mobilesam.export`. Measures, interleaved (one of
each per round, median over rounds, the same thread count for PyTorch and ONNX Runtime):
- the image encoder on one resized image: PyTorch, ONNX float, ONNX int8;
- one point's decode to a mask at the original size, three masks: `SamPredictor.predict` against
  `OnnxPredictor.decode` (float and int8 decoder);
- accuracy: ONNX float against PyTorch, int8 against float (embedding relative error, mask agreement).
Random weights give noise-like logits, so mask agreement here is a pessimistic figure for trained weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from deploy_timing import rel as _rel
from deploy_timing import report as _report
from deploy_timing import timed as _timed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py onnx", description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-rounds", type=int, default=15)
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both PyTorch and ONNX Runtime")
    ap.add_argument("--dir", default=None, help="reuse (or keep) the export in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mobilesam import SamPredictor, build_sam
    from mobilesam.checkpoint import save_state_dict
    from mobilesam.export import export
    from mobilesam.onnx import OnnxPredictor
    from mobilesam.transforms import resize_image
    from tests.helpers import perturb_

    out = Path(args.dir or tempfile.mkdtemp(prefix="bench_onnx_"))
    if not (out / "encoder_int8.onnx").is_file():
        src = out / "src" / "random_mobile_sam.pt"
        save_state_dict(perturb_(build_sam("vit_t"), seed=0).state_dict(), src)
        t, _ = _timed(export, src, out, onnx=True, quantize=True)
        print(f"export with --onnx --quantize: {t:.0f} s")
    model = build_sam("vit_t", out / "mobile_sam.pt")
    onnx32 = OnnxPredictor(out / "encoder.onnx", out / "decoder.onnx", threads=args.threads)
    onnx8 = OnnxPredictor(out / "encoder_int8.onnx", out / "decoder_int8.onnx", threads=args.threads)
    for name in ("encoder", "decoder"):
        f32, i8 = (out / f"{name}{s}.onnx" for s in ("", "_int8"))
        print(f"{name}: {f32.stat().st_size / 2**20:.1f} MiB float, {i8.stat().st_size / 2**20:.1f} MiB int8")
    print(f"torch {torch.__version__}, onnxruntime {_ort_version()}, {args.threads} threads, CPU")

    h, w = (int(v) for v in args.image.split("x"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    resized = np.asarray(resize_image(image, 1024))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None]

    def torch_encoder() -> np.ndarray:
        with torch.no_grad():
            return model.image_encoder(model.preprocess(x)).numpy()

    def onnx_encoder(p: OnnxPredictor) -> np.ndarray:
        return p.encoder.run(None, {"image": resized})[0]

    # 1. image encoder
    contenders = {
        "pytorch": torch_encoder,
        "onnx": lambda: onnx_encoder(onnx32),
        "onnx_int8": lambda: onnx_encoder(onnx8),
    }
    for fn in contenders.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in contenders}
    embs = {}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            t, embs[k] = _timed(fn)
            times[k].append(t)
    _report(f"image encoder, {resized.shape[0]}x{resized.shape[1]} input", times, "pytorch")
    print(f"  embedding rel error: onnx vs pytorch {_rel(embs['onnx'], embs['pytorch']):.2e}, "
          f"int8 vs onnx {_rel(embs['onnx_int8'], embs['onnx']):.2e}")  # fmt: skip

    # 2. one point's decode to three masks at the original size
    predictor = SamPredictor(model)
    predictor.set_image(image)
    emb32, emb8 = onnx32.embed(image), onnx8.embed(image)
    times = {k: [] for k in ("pytorch", "onnx", "onnx_int8")}
    agree_onnx, agree_int8, agree_int8_end = [], [], []
    for i in range(args.decode_rounds + 2):
        pt = [int(rng.integers(0, w)), int(rng.integers(0, h))]
        ta, (ref, _, _) = _timed(predictor.predict, np.array([pt]), np.array([1]), multimask_output=True)
        tb, r32 = _timed(onnx32.decode, emb32, points=pt, multimask_output=True)
        tc, r8 = _timed(onnx8.decode, emb32, points=pt, multimask_output=True)
        if i >= 2:  # warm-up rounds
            for k, t in zip(times, (ta, tb, tc)):
                times[k].append(t)
        agree_onnx.append(float((r32.masks == ref).mean()))
        agree_int8.append(float((r8.masks == r32.masks).mean()))
        agree_int8_end.append(float((onnx8.decode(emb8, points=pt, multimask_output=True).masks == r32.masks).mean()))
    _report(f"decode one point, 3 masks at {h}x{w}", times, "pytorch")
    print(f"  masks equal, onnx vs pytorch: {100 * min(agree_onnx):.4f}% of pixels (worst prompt)")
    print(
        f"  masks equal, int8 vs float decoder (same embedding): median {100 * statistics.median(agree_int8):.2f}%, "
        f"worst {100 * min(agree_int8):.2f}%"
    )
    print(
        f"  masks equal, int8 encoder + decoder vs float: median {100 * statistics.median(agree_int8_end):.2f}%, "
        f"worst {100 * min(agree_int8_end):.2f}%"
    )
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
