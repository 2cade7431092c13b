"""Int8 side by side: float, PTQ as before, the better PTQ (and QAT): size, latency, embedding error, masks, mIoU.

On a trained student (default: the newest `make demo` student, outputs/demo/*/mobile_sam.pt) and its shards: the
held-out shards (the last `--val-fraction` of them, as training holds them out) give the images, their stored
teacher embeddings and the protocol's prompts; calibration reads the first shards (those trained on). Rows:

- `float`: the fp32 ExecuTorch encoder (XNNPACK);
- `PTQ int8, as before`: every layer XNNPACK's quantizer takes in int8, calibrated on 4 generated images;
- `PTQ int8, better`: calibrated on real shard images, layer norms float (`quantize.keep_float_for`);
- `QAT int8`: each `encoder_int8.pte` given with `--qat [LABEL=]PATH` (repeatable; LABEL names the row).

Columns: file size, encoder latency (ExecuTorch, interleaved rounds, the same threads) and its ratio to float,
relative embedding error (||a - b|| / ||b||, the export check's) against the float model and against the teacher,
mask agreement with the float model's masks (every protocol prompt: point, two points, box, decoded by the same
float decoder so that only the encoder differs; median and worst), and mIoU against the teacher (`protocol`).
`--sensitivity` prints instead what int8 costs per block (`quantize.sensitivity`).
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import timing

DEMO = "outputs/demo/*/mobile_sam.pt"


def default_checkpoint() -> str:
    found = sorted(glob.glob(str(timing.ROOT / DEMO)))
    if not found:
        raise SystemExit(f"no trained demo student ({DEMO}): run `make demo` first, or pass --checkpoint")
    return found[-1]


def default_shards(checkpoint: str) -> Path:
    """The shards the checkpoint was trained on (its sidecar's manifest), else the demo's at its img_size."""
    sidecar = Path(checkpoint).with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    manifest = meta.get("data", {}).get("manifest")
    if manifest and Path(manifest).is_file():
        return Path(manifest).parent
    return timing.ROOT / f"outputs/data/demo/shards_{meta.get('img_size', 256)}"


def held_out(shards: Path, val_fraction: float, limit: int) -> list[dict]:
    """The held-out shards' records (image, stored teacher embedding, protocol prompts), at most `limit`."""
    from evaluation.records import ShardSource

    source = ShardSource(shards, val_fraction=val_fraction)
    out = []
    for raw in source.items():
        out.append(source.load(raw, None))
        if len(out) == limit:
            break
    return out


def encoder_input(rec: dict, img_size: int) -> torch.Tensor:
    """1x3xSxS normalised, zero-padded input of a record (as training and evaluation feed the encoder)."""
    from mobilesam.transforms import normalize

    h, w = rec["size"]
    image = torch.zeros(1, 3, img_size, img_size, dtype=torch.uint8)
    image[0, :, :h, :w] = rec["image"]
    return normalize(image, torch.tensor([[h, w]]))


def programs(
    model: torch.nn.Module, shards: Path, calibration_images: int, before: bool = True
) -> dict[str, tuple[bytes, dict]]:
    """name -> (.pte bytes, portable heavy ops) for float, PTQ as before (unless `before` is False) and the better
    PTQ."""
    from mobilesam.deploy.calibration import generated_images, read_calibration
    from mobilesam.deploy.executorch import CALIBRATION_IMAGES, lower, portable_heavy_ops
    from mobilesam.deploy.lowering import DECOMPOSITIONS, INT8_DECOMPOSITIONS, xnnpack_encoder
    from mobilesam.deploy.quantize import keep_float_for, ptq

    s = model.img_size
    enc = xnnpack_encoder(model.image_encoder)
    ex = (torch.zeros(1, 3, s, s),)
    real = read_calibration(shards, s, calibration_images)
    print(f"# calibration of the better PTQ: {real.source}")
    graphs = {"float": (enc, DECOMPOSITIONS)}
    if before:
        old = ptq(enc, ex, [(x,) for x in generated_images(s, CALIBRATION_IMAGES)])
        graphs["PTQ int8, as before"] = (old, INT8_DECOMPOSITIONS)
    graphs |= {
        "PTQ int8, better": (
            ptq(enc, ex, [(x,) for x in real.images], keep_float=keep_float_for(enc)),
            INT8_DECOMPOSITIONS,
        ),
    }
    out = {}
    for name, (module, table) in graphs.items():
        data, info = lower(module, ex, {}, False, table)
        out[name] = (data, portable_heavy_ops(info))
    return out


def quality(model: torch.nn.Module, records: list[dict], embed: dict) -> dict[str, dict[str, float]]:
    """Per row: embedding errors against float and teacher, mask agreement with float, mIoU against the teacher."""
    from mobilesam.protocol import PROMPT_TYPES, Decoder, build_prompts, image_ious, protocol_masks

    s = model.img_size
    dec = Decoder(model.prompt_encoder, model.mask_decoder)  # the demo student's decoder is its teacher's
    rows: dict[str, dict[str, list]] = {name: {"ef": [], "et": [], "agree": [], "iou": []} for name in embed}
    for rec in records:
        x = encoder_input(rec, s)
        teacher = rec["embedding"][None].float()
        size = (int(rec["size"][0]), int(rec["size"][1]))
        prompts = build_prompts(rec["points"], rec["boxes"], rec["low"], rec["key"], rec["mask_ids"].tolist(), s)
        embs = {name: fn(x) for name, fn in embed.items()}
        ref = {k: protocol_masks(dec, embs["float"], prompts, k, size, s) for k in PROMPT_TYPES}
        for name, emb in embs.items():
            r = rows[name]
            r["ef"].append(float((emb - embs["float"]).norm() / embs["float"].norm()))
            r["et"].append(float((emb - teacher).norm() / teacher.norm()))
            for k in PROMPT_TYPES:
                m = protocol_masks(dec, emb, prompts, k, size, s)
                r["agree"] += (m == ref[k]).float().flatten(1).mean(1).tolist()
            ious = image_ious(dec, emb, prompts, size, s, dec, teacher)["vs_teacher"]
            r["iou"] += torch.cat([ious[k] for k in PROMPT_TYPES]).tolist()
    return {
        name: {
            "error_float": float(np.median(r["ef"])),
            "error_teacher": float(np.median(r["et"])),
            "masks_median": float(np.median(r["agree"])),
            "masks_worst": float(min(r["agree"])),
            "miou_teacher": float(np.mean(r["iou"])),
            "prompts": len(r["agree"]),
        }
        for name, r in rows.items()
    }


def run_table(args: argparse.Namespace, model: torch.nn.Module, shards: Path, records: list[dict]) -> None:
    from executorch.runtime import Runtime

    s = model.img_size
    built = programs(model, shards, args.calibration_images, before=not args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, (data, left) in built.items():
            paths[name] = Path(tmp) / f"{len(paths)}.pte"
            paths[name].write_bytes(data)
            print(f"# {name}: heavy ops left to portable kernels: {left or 'none'}")
        for item in args.qat:
            label, _, path = item.rpartition("=")
            paths[f"QAT int8, {label}" if label else "QAT int8"] = Path(path)
        methods = {name: Runtime.get().load_program(p).load_method("forward") for name, p in paths.items()}
        sizes = {name: p.stat().st_size / 2**20 for name, p in paths.items()}

        def embed_with(method):  # noqa: ANN001, ANN202
            return lambda x: method.execute([x])[0].clone()

        figures = quality(model, records, {name: embed_with(m) for name, m in methods.items()})
        x = encoder_input(records[0], s)
        rounds = timing.interleave(
            {name: (lambda m=m: m.execute([x])) for name, m in methods.items()}, args.rounds, warmup=1
        )
    timing.print_header(
        f"quantization: ExecuTorch (XNNPACK) encoder of {args.checkpoint} at "
        f"img_size {s}; {len(records)} held-out images of {shards}, {figures['float']['prompts']} prompts"
    )
    head = [
        "encoder",
        "file MiB",
        "latency (median)",
        "error vs float",
        "error vs teacher",
        "masks = float (median / worst)",
        "mIoU vs teacher",
    ]
    rows = []
    for name, f in figures.items():
        rows.append(
            [
                name,
                f"{sizes[name]:.2f}",
                rounds.cell(name, "float"),
                f"{f['error_float']:.4f}",
                f"{f['error_teacher']:.4f}",
                f"{f['masks_median']:.2%} / {f['masks_worst']:.2%}",
                f"{f['miou_teacher']:.4f}",
            ]
        )
    print(timing.table(head, rows))
    print(rounds.note("float"))


def run_sensitivity(args: argparse.Namespace, model: torch.nn.Module, shards: Path, records: list[dict]) -> None:
    from mobilesam.deploy.calibration import read_calibration
    from mobilesam.deploy.quantize import report_rows, sensitivity

    s = model.img_size
    images = [encoder_input(r, s) for r in records]
    calibration = read_calibration(shards, s, args.calibration_images)
    units = args.units.split(",") if args.units else None
    everything, costs = sensitivity(model, images, calibration.images, units=units, progress=print)
    timing.print_header(
        f"quantization --sensitivity: what int8 costs per block, {args.checkpoint} "
        f"at img_size {s}; {len(images)} held-out images; calibration: {calibration.source}"
    )
    print(
        f"all int8: embedding error {everything['error']:.4f} (worst {everything['error_worst']:.4f}), masks "
        f"{everything['masks']:.2%} / {everything['masks_worst']:.2%} (median / worst)"
    )
    head = ["block", "error, it alone int8", "masks", "error, all but it int8", "masks (median / worst)", "saves"]
    print(timing.table(head, report_rows(costs, everything)))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks quantization", description=__doc__)
    ap.add_argument("--checkpoint", default=None, help=f"a trained student (default: the newest {DEMO})")
    ap.add_argument("--shards", default=None, help="its shards (default: the sidecar's manifest folder)")
    ap.add_argument(
        "--qat",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="a quantization-aware int8 encoder .pte to add as a row (repeat for several; LABEL names the row)",
    )
    ap.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of the shards (as in training)")
    ap.add_argument("--images", type=int, default=10, help="held-out images, at most")
    ap.add_argument("--calibration-images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sensitivity", action="store_true", help="the per-block report instead of the table")
    ap.add_argument("--units", default="", help="--sensitivity: a comma list of encoder blocks (default: every one)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: a small random TinyViT at 64 on 4 generated images, no 'as before' row, 2 rounds",
    )
    args = ap.parse_args(argv)
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    from mobilesam import build_sam

    torch.set_num_threads(args.threads)
    _unsafe_reset_threadpool(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            model, shards = quick_setup(Path(tmp))
            args.checkpoint, args.val_fraction, args.rounds, args.calibration_images = "a random TinyViT", 0.5, 2, 2
        else:
            args.checkpoint = args.checkpoint or default_checkpoint()
            model = build_sam("vit_t", args.checkpoint).eval()
            shards = Path(args.shards) if args.shards else default_shards(args.checkpoint)
        records = held_out(shards, args.val_fraction, args.images)
        with torch.no_grad():
            (run_sensitivity if args.sensitivity else run_table)(args, model, shards, records)
    return 0


def quick_setup(tmp: Path) -> tuple[torch.nn.Module, Path]:
    """A small random TinyViT in SAM at 64 and 4 generated images in 2 shards (a random vit_t their teacher)."""
    from data.demo import ensure_demo_shards
    from mobilesam import build_sam
    from mobilesam.modeling.tiny_vit import TinyViT

    shards = ensure_demo_shards(tmp / "shards", 1, 4, image_size=(48, 64), img_size=64, shard_size=2)
    torch.manual_seed(0)
    model = build_sam("vit_t", img_size=64)
    model.image_encoder = TinyViT(64, embed_dims=(32, 64, 96, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    return model.eval(), shards
