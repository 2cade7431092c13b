"""ExecuTorch (XNNPACK) against eager PyTorch (ours) and ONNX Runtime on CPU, and what int8 PTQ costs.

vit_t at 1024 with random (perturbed) weights, exported with `mobilesam.export` (`--format onnx,executorch`, and
with `--int8` the int8 .pte files). Measured interleaved (one of each per round, medians, the same thread
count for every runtime):
- the image encoder on one image at 1024: PyTorch, ExecuTorch, ONNX Runtime (and ExecuTorch int8);
- one point's decode to three masks at the original size: `SamPredictor.predict`, `ExecuTorchPredictor.decode`,
  `OnnxPredictor.decode`;
- int8 against float: embedding relative error, mask agreement over 20 prompts, file sizes, speed ratio.
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


def _interleave(contenders: dict, rounds: int) -> tuple[dict[str, list[float]], dict]:
    for fn in contenders.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outs = {}
    for _ in range(rounds):
        for k, fn in contenders.items():
            t, outs[k] = _timed(fn)
            times[k].append(t)
    return times, outs


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py executorch", description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--decode-rounds", type=int, default=15)
    ap.add_argument("--prompts", type=int, default=20, help="prompts for the int8 mask agreement")
    ap.add_argument("--image", default="1500x2250", help="HxW of the test image (SA-1B's typical size)")
    ap.add_argument("--threads", type=int, default=2, help="threads for PyTorch, ExecuTorch and ONNX Runtime")
    ap.add_argument("--int8", action="store_true", help="also export int8 programs and print their table (slow)")
    ap.add_argument("--dir", default=None, help="reuse (or keep) the export in this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mobilesam import SamPredictor, build_sam
    from mobilesam.checkpoint import save_state_dict
    from mobilesam.deploy import ExecuTorchPredictor
    from mobilesam.export import export
    from mobilesam.exported import normalize_pad
    from mobilesam.onnx import OnnxPredictor
    from mobilesam.transforms import resize_image
    from tests.helpers import perturb_

    int8 = args.int8
    out = Path(args.dir or tempfile.mkdtemp(prefix="bench_executorch_"))
    if not (out / "decoder.pte").is_file() or (int8 and not (out / "decoder_int8.pte").is_file()):
        src = out / "src" / "random_mobile_sam.pt"
        save_state_dict(perturb_(build_sam("vit_t"), seed=0).state_dict(), src)
        t, _ = _timed(export, src, out, formats=["executorch"], quantize=int8)
        print(f"export --format executorch{' --quantize' if int8 else ''}: {t:.0f} s")
    if not (out / "decoder.onnx").is_file():
        t, _ = _timed(export, out / "mobile_sam.pt", out / "onnx", formats=["onnx"])
        for name in ("encoder.onnx", "decoder.onnx"):
            (out / "onnx" / name).replace(out / name)
    model = build_sam("vit_t", out / "mobile_sam.pt")
    et32 = ExecuTorchPredictor(out / "encoder.pte", out / "decoder.pte", threads=args.threads)
    et8 = None
    if int8:
        et8 = ExecuTorchPredictor(out / "encoder_int8.pte", out / "decoder_int8.pte", threads=args.threads)
    ort = OnnxPredictor(out / "encoder.onnx", out / "decoder.onnx", threads=args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU, random weights")

    h, w = (int(v) for v in args.image.split("x"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    resized = np.asarray(resize_image(image, 1024))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None]
    padded = torch.from_numpy(normalize_pad(resized, 1024))

    def torch_encoder() -> np.ndarray:
        with torch.no_grad():
            return model.image_encoder(model.preprocess(x)).numpy()

    # 1. image encoder (the ExecuTorch input is the normalised padded image; the numpy normalisation is timed in
    # the predictor's `embed`, not here, as ONNX's in-graph normalisation is part of its time)
    contenders = {
        "pytorch": torch_encoder,
        "executorch": lambda: et32.encoder.execute([padded])[0].numpy(),
        "onnx": lambda: ort.encoder.run(None, {"image": resized})[0],
    }
    if et8:
        contenders["executorch_int8"] = lambda: et8.encoder.execute([padded])[0].numpy()
    times, embs = _interleave(contenders, args.rounds)
    _report(f"image encoder, {resized.shape[0]}x{resized.shape[1]} image in the 1024 frame", times, "pytorch")
    enc_times = times
    print(
        f"  embedding rel error vs pytorch: executorch {_rel(embs['executorch'], embs['pytorch']):.2e}, "
        f"onnx {_rel(embs['onnx'], embs['pytorch']):.2e}"
    )
    t_norm = statistics.median(_timed(normalize_pad, resized, 1024)[0] for _ in range(5))
    print(f"  numpy normalise + pad for the ExecuTorch input: {t_norm * 1e3:.1f} ms")

    # 2. one point's decode to three masks at the original size
    predictor = SamPredictor(model)
    predictor.set_image(image)
    emb_et, emb_ort = et32.embed(image), ort.embed(image)
    times = {k: [] for k in ("pytorch", "executorch", "onnx")}
    agree = []
    for i in range(args.decode_rounds + 2):
        pt = [int(rng.integers(0, w)), int(rng.integers(0, h))]
        ta, (ref, _, _) = _timed(predictor.predict, np.array([pt]), np.array([1]), multimask_output=True)
        tb, r_et = _timed(et32.decode, emb_et, points=pt, multimask_output=True)
        tc, _ = _timed(ort.decode, emb_ort, points=pt, multimask_output=True)
        if i >= 2:
            for k, t in zip(times, (ta, tb, tc)):
                times[k].append(t)
        agree.append(float((r_et.masks == ref).mean()))
    _report(f"decode one point, 3 masks at {h}x{w}", times, "pytorch")
    print(f"  masks equal, executorch vs pytorch: {100 * min(agree):.4f}% of pixels (worst prompt)")
    t_graph = []
    for _ in range(args.decode_rounds):
        c, lab = np.zeros((1, et32.max_points, 2), np.float32), np.full((1, et32.max_points), -1.0, np.float32)
        lab[0, 0] = 1
        t_graph.append(_timed(et32.decoder.execute, [torch.from_numpy(emb_et.features), torch.from_numpy(c),
                                                     torch.from_numpy(lab)])[0])  # fmt: skip
    print(f"  of which the decoder program alone: {statistics.median(t_graph) * 1e3:.1f} ms")

    if not et8:
        return 0
    # 3. int8 against float
    emb8 = et8.embed(image)
    agree_dec, agree_end = [], []
    for _ in range(args.prompts):
        pt = [int(rng.integers(0, w)), int(rng.integers(0, h))]
        r32 = et32.decode(emb_et, points=pt)
        agree_dec.append(float((et8.decode(emb_et, points=pt).masks == r32.masks).mean()))
        agree_end.append(float((et8.decode(emb8, points=pt).masks == r32.masks).mean()))
    ratio = statistics.median(a / b for a, b in zip(enc_times["executorch_int8"], enc_times["executorch"]))
    print("int8 (XNNPACK static PTQ, 4 generated calibration images) against float ExecuTorch:")
    print(f"  embedding rel error {_rel(emb8.features, emb_et.features):.2e}; encoder time x{ratio:.2f}")
    print(
        f"  masks equal over {args.prompts} one-point prompts: int8 decoder alone median "
        f"{100 * statistics.median(agree_dec):.2f}% (worst {100 * min(agree_dec):.2f}%), int8 encoder + decoder "
        f"median {100 * statistics.median(agree_end):.2f}% (worst {100 * min(agree_end):.2f}%)"
    )
    for name in ("encoder", "decoder"):
        f32, i8 = (out / f"{name}{s}.pte" for s in ("", "_int8"))
        print(f"  {name}: {f32.stat().st_size / 2**20:.1f} MiB float, {i8.stat().st_size / 2**20:.1f} MiB int8")
    return 0
