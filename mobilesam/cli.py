"""The `mobilesam` console command: `predict`, `info`, `export`, `everything`, `demo`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch


def _floats(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"{what} {text!r} must be {n} comma-separated numbers")
    return values


def _point_set(text: str) -> list[list[float]]:
    """'x,y' or 'x,y;x,y' (several points on one object)."""
    return [_floats(p, 2, "point") for p in text.split(";")]


def _label_set(text: str) -> list[int]:
    """'1' or '1;0' (the labels of one object's points): 1 positive, 0 negative."""
    try:
        labels = [int(v) for v in text.split(";")]
    except ValueError:
        labels = []
    if not labels or any(v not in (0, 1) for v in labels):
        raise argparse.ArgumentTypeError(f"labels {text!r} must be 1 (positive) or 0 (negative), joined with ';'")
    return labels


def _box(text: str) -> list[float]:
    return _floats(text, 4, "box")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file")
    p.add_argument("--checkpoint", default="mobile_sam.pt", help="weights file (default: mobile_sam.pt)")
    p.add_argument(
        "--points",
        nargs="+",
        type=_point_set,
        default=None,
        metavar="X,Y[;X,Y]",
        help="one object per argument; several points on one object are joined with ';'",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        type=_label_set,
        default=None,
        metavar="L[;L]",
        help="labels nested like --points (1 positive, 0 negative); default all positive",
    )
    p.add_argument("--boxes", nargs="+", type=_box, default=None, metavar="X1,Y1,X2,Y2", help="one box per object")
    p.add_argument("--multimask", action="store_true", help="three masks per object")
    p.add_argument("--out", default=None, help="overlay PNG to write (default: IMAGE_masks.png beside the image)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--img-size", type=int, default=None, help="input size (default: the checkpoint's sidecar, else 1024)"
    )


def _run_predict(args: argparse.Namespace) -> int:
    from .facade import SAM

    model = SAM(args.checkpoint, device=args.device, img_size=args.img_size)
    (result,) = model.predict(
        args.image, points=args.points, labels=args.labels, bboxes=args.boxes, multimask_output=args.multimask
    )
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_masks.png")
    result.save(out)
    for i, (score, box, mask) in enumerate(zip(result.scores, result.boxes, result.masks)):
        x1, y1, x2, y2 = (int(v) for v in box)
        print(f"mask {i}: score {score:.3f}  area {int(mask.sum())} px  box [{x1}, {y1}, {x2}, {y2}]")
    print(f"overlay written to {out}")
    return 0


def _add_everything(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file")
    p.add_argument("--checkpoint", default="mobile_sam.pt", help="weights file (default: mobile_sam.pt)")
    p.add_argument("--out", default=None, help="overlay PNG to write (default: IMAGE_everything.png beside the image)")
    p.add_argument("--json", default=None, help="also write segment-anything's records here, masks as COCO RLE")
    p.add_argument("--points-per-side", type=int, default=32, help="grid of N x N point prompts (default: 32)")
    p.add_argument("--points-per-batch", type=int, default=64, help="points decoded together (default: 64)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="minimum predicted IoU (default: 0.88)")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="minimum stability score (default: 0.95)")
    p.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU for NMS (default: 0.7)")
    p.add_argument("--crop-n-layers", type=int, default=0, help="extra layers of image crops (default: 0)")
    p.add_argument(
        "--min-mask-region-area", type=int, default=0, help="remove holes and islands below this area (needs OpenCV)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--img-size", type=int, default=None, help="input size (default: the checkpoint's sidecar, else 1024)"
    )


def _run_everything(args: argparse.Namespace) -> int:
    import json
    import time

    from .everything import SamAutomaticMaskGenerator
    from .everything.regions import mask_areas
    from .facade import SAM
    from .files import atomic_write
    from .io import load_image
    from .viz import overlay, save_picture

    image = load_image(args.image)
    sam = SAM(args.checkpoint, device=args.device, img_size=args.img_size)
    generator = SamAutomaticMaskGenerator(
        sam.model,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="coco_rle" if args.json else "binary_mask",
        predictor=sam.predictor,
    )
    start = time.perf_counter()
    found = generator.generate_masks(image)
    seconds = time.perf_counter() - start

    # Large masks first, so that small ones stay visible on top
    areas = mask_areas(found.masks)
    by_area = torch.argsort(areas, descending=True, stable=True)
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_everything.png")
    picture = overlay(image, found.masks[by_area].numpy())
    save_picture(picture, out)
    print(f"{len(found)} masks in {seconds:.1f} s ({image.shape[1]}x{image.shape[0]} image, {sam.device})")
    for i in by_area[:10].tolist():
        x1, y1, x2, y2 = (int(v) for v in found.boxes[i])
        print(
            f"  area {int(areas[i])} px  predicted IoU {found.iou_preds[i]:.3f}  "
            f"stability {found.stability[i]:.3f}  box [{x1}, {y1}, {x2}, {y2}]"
        )
    if len(found) > 10:
        print(f"  ... and {len(found) - 10} smaller masks")
    if not len(found):
        print(
            f"no mask passed the thresholds: lower --pred-iou-thresh (now {args.pred_iou_thresh}) or "
            f"--stability-score-thresh (now {args.stability_score_thresh}), e.g. 0.5 and 0.7, or raise "
            f"--points-per-side (now {args.points_per_side})"
        )
    print(f"overlay written to {out}")
    if args.json:
        text = json.dumps(generator.records(found)).encode()
        atomic_write(args.json, lambda f: f.write(text))
        print(f"records written to {args.json}")
    return 0


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a mobile_sam.pt, SAM .pth or training .ckpt file")


def _run_info(args: argparse.Namespace) -> int:
    from .build import build_from
    from .checkpoint import CheckpointError, open_checkpoint
    from .files import sha256_file

    path = Path(args.checkpoint)
    ckpt = open_checkpoint(path)
    print(f"file       {path} ({path.stat().st_size / 2**20:.1f} MiB, sha256 {sha256_file(path)[:16]}...)")
    print(f"kind       {ckpt.kind}")
    print(f"keys       {len(ckpt.state_dict)}")
    print(f"variant    {ckpt.variant} (from {ckpt.variant_from})")
    print(f"img_size   {ckpt.img_size} (from {ckpt.img_size_from})")
    from .export import other_runtimes_hint

    if other_runtimes_hint(ckpt.img_size, ckpt.variant):
        print(f"note       {other_runtimes_hint(ckpt.img_size, ckpt.variant)}")
    try:
        model = build_from(ckpt)
    except CheckpointError as e:
        print(f"strict     FAILS\n{e}")
        return 1
    print("strict     loads strictly")
    for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
        n = sum(p.numel() for p in getattr(model, name).parameters())
        print(f"{name:<15}{n / 1e6:8.3f} M parameters")
    print(f"{'total':<15}{sum(p.numel() for p in model.parameters()) / 1e6:8.3f} M parameters")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    from .deploy.formats import CALIBRATION_IMAGES, FORMATS, PRECISIONS

    formats = FORMATS.values()
    p.add_argument("source", help="mobile_sam.pt, a SAM checkpoint (sam_vit_b_01ec64.pth, ...) or a training .ckpt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--onnx", action="store_true", help="also write encoder.onnx and decoder.onnx (= --format onnx)")
    p.add_argument(
        "--format",
        default="",
        metavar="F[,F]",
        help=f"deployment formats, a comma list of {', '.join(f.help() for f in formats)}; each is checked "
        "against PyTorch before it is kept",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help=f"fp16 writes *_fp16 files ({', '.join(f.name for f in formats if 'fp16' in f.precisions)}) with "
        "LayerNorm and softmax kept in fp32",
    )
    p.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="points per object the static decoders hold (every format but onnx), a box counting two (default 8)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument(
        "--quantize",
        action="store_true",
        help=f"also write the int8 files of {', '.join(f.name for f in formats if f.int8)} (alone: implies --onnx)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="int8: calibrate on the images of DIR (a folder of images, or of training shards *.tar). Without it "
        "ExecuTorch calibrates on generated images (worse int8) and ONNX writes dynamic int8; with it ONNX's int8 "
        "encoder is static (QDQ)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help=f"int8: how many calibration images (default {CALIBRATION_IMAGES})",
    )
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="input size, when the source does not say (default: its sidecar, "
        "the training checkpoint's hyper-parameters, else 1024)",
    )
    p.add_argument(
        "--single-mask", action="store_true", help="the ONNX decoder returns one mask, picked as SAM's exported one"
    )


def _run_export(args: argparse.Namespace) -> int:
    import json

    from .deploy.formats import by_suffix
    from .export import export, other_runtimes_hint
    from .files import disk_size

    written = export(
        args.source,
        args.out,
        onnx=args.onnx,
        opset=args.opset,
        quantize=args.quantize,
        img_size=args.img_size,
        single_mask=args.single_mask,
        formats=args.format,
        max_points=args.max_points,
        precision=args.precision,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
    )
    for role, path in written.items():
        fmt = by_suffix(path.suffix)
        companions = [c for c in (path.with_suffix(x) for x in (fmt.suffixes[1:] if fmt else ())) if c.exists()]
        size = sum(disk_size(p) for p in (path, *companions)) / 2**20  # OpenVINO's weights are its `.bin`
        print(f"{role:<24}{path}{''.join(f' + {c.suffix}' for c in companions)} ({size:.1f} MiB)")
    meta = json.loads(written["sidecar"].read_text())
    hint = other_runtimes_hint(meta["img_size"], meta.get("variant", "vit_t"))
    if hint:
        print(f"note: {hint}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights file (default: the newest outputs/demo/*/mobile_sam.pt, else random)",
    )
    from .deploy.formats import FORMATS

    suffixes = ", ".join(f.suffix for f in FORMATS.values())
    p.add_argument("--encoder", default=None, help=f"an exported encoder ({suffixes}; mobilesam.deploy.load_predictor)")
    p.add_argument("--decoder", default=None, help="the exported decoder that goes with --encoder")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument(
        "--img-size", type=int, default=None, help="input size (default: the checkpoint's sidecar, else 1024)"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import load_backend
    from .demo.app import serve  # ImportError names the extra (mobilesam[demo])

    backend = load_backend(args.checkpoint, args.encoder, args.decoder, device=args.device, img_size=args.img_size)
    print(f"mobilesam demo: {backend.description}; open http://{args.host}:{args.port}")
    serve(backend, host=args.host, port=args.port)
    return 0


def _add_web(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="the folder `mobilesam export SRC --format web --out DIR` wrote")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0: any free port)")


def _run_web(args: argparse.Namespace) -> int:
    from .deploy.web import make_server

    server = make_server(args.folder, port=args.port)
    url = f"http://127.0.0.1:{server.server_port}/"
    print(f"mobilesam web: open {url} (serving {args.folder}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilesam", description="MobileSAM and SAM from the command line")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "predict": ("segment prompted objects and write an overlay PNG", _add_predict, _run_predict),
        "info": ("describe a checkpoint and check that it loads strictly", _add_info, _run_info),
        "export": (
            "write the official weights file and, with --format onnx,executorch, deployable graphs",
            _add_export,
            _run_export,
        ),
        "everything": ("segment everything in an image and write an overlay PNG", _add_everything, _run_everything),
        "demo": ("serve the interactive web demo (needs mobilesam[demo])", _add_demo, _run_demo),
        "web": ("serve a --format web export on this machine, for the browser", _add_web, _run_web),
    }
    for name, (help, add, run) in commands.items():
        p = sub.add_parser(name, help=help, description=help)
        add(p)
        p.set_defaults(run=run)
    return parser


def error_line(e: BaseException) -> str:
    """What the command prints for an error: `error: ` and its message (the kind of error named where the message
    alone would not say it, e.g. a KeyError)."""
    text = str(e).strip() or type(e).__name__
    if not isinstance(e, (ValueError, OSError, RuntimeError)):
        text = f"{type(e).__name__}: {text}"
    return f"error: {text}"


QUIET_LOGGERS = ("coremltools", "cpuinfo", "absl", "tensorflow", "ai_edge_litert", "tflite_runtime", "openvino")


def quiet_third_party_loggers() -> None:
    """Runtimes' and converters' Python loggers show errors only (`--debug` leaves them as they are), TensorFlow's
    C++ logs too (TF_CPP_MIN_LOG_LEVEL, unless set). LiteRT's one C++ line ("Created TensorFlow Lite XNNPACK
    delegate") has no switch and stays."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a subcommand. Any error ends in one `error: ...` line on stderr and exit code 1 (`--debug`: the
    traceback instead)."""
    args = build_parser().parse_args(argv)
    if not args.debug:
        quiet_third_party_loggers()
    try:
        with torch.no_grad():
            return int(args.run(args) or 0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        if args.debug:
            raise
        print(error_line(e) + " (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
