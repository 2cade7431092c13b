"""Runs AnyLabeling's or X-AnyLabeling's own SAM model class, headless, on an image with a point and a box prompt
and saves its masks: the check that `mobilesam export --format anylabeling` files work in the tool.

The tools cannot share the project's environment (their opencv and PyQt6 pins, and both install the package
`anylabeling`), so this script imports nothing of the project: run it with the tool's own Python.

    python3 -m venv .venv/tools/anylabeling && .venv/tools/anylabeling/bin/pip install anylabeling==0.4.43
    .venv/tools/anylabeling/bin/python scripts/annotation_tool_masks.py OUT/anylabeling.yaml photo.png masks.npz \
        --point 120 90 --box 40 30 200 160

Prints a JSON line (the tool, its version, the mask sizes and each prompt's polygon count from the tool's own
`predict_shapes`) and writes masks.npz with `point` and `box`, HxW bool, the tool's first mask (the one it draws).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata
from pathlib import Path


def _marks(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The tool's prompt marks (`SegmentAnythingONNX.get_input_points` reads these)."""
    x, y = args.point
    return {
        "point": [{"type": "point", "data": [x, y], "label": 1}],
        "box": [{"type": "rectangle", "data": list(args.box)}],
    }


NO_TOOL = "this Python has no AnyLabeling ({}): run the script with the tool's own environment's python"


def tool_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """The arguments of the scripts run in a tool's environment: the exported yaml, an image, the output, a point."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("config", type=Path, help="the exported anylabeling.yaml")
    ap.add_argument("image", type=Path, help="an RGB image file (PNG or JPEG)")
    ap.add_argument("out", type=Path, help=out_help)
    ap.add_argument("--point", type=float, nargs=2, required=True, metavar=("X", "Y"))
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, a missing or folder config or image refused in one line; Qt set to its offscreen platform."""
    args = ap.parse_args(argv)
    for path, what in ((args.config, "model config"), (args.image, "image")):
        if not path.is_file():
            ap.error(f"{what} {path} is {'a folder' if path.is_dir() else 'missing'}: pass a file")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return args


def main(argv: list[str] | None = None) -> int:
    ap = tool_parser(__doc__.split("\n\n")[0], "where to write the masks (.npz)")
    ap.add_argument("--box", type=float, nargs=4, required=True, metavar=("X1", "Y1", "X2", "Y2"))
    args = parse(ap, argv)

    import numpy as np
    import yaml
    from PyQt6.QtGui import QImage

    try:
        from anylabeling.services.auto_labeling.segment_anything import SegmentAnything
        from anylabeling.views.labeling.utils.opencv import qt_img_to_rgb_cv_img
    except ImportError as e:
        ap.error(NO_TOOL.format(e))
    tool = next((d for d in ("x-anylabeling-cvhub", "anylabeling") if _installed(d)), "unknown")

    import anylabeling.config

    if getattr(anylabeling.config, "current_config_file", "") is None:
        anylabeling.config.current_config_file = "{}"  # X-AnyLabeling's app sets its rc file here: the defaults
    # As the tool's ModelManager.load_custom_model does: the yaml as a dict, with the file it came from
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    config["config_file"] = str(args.config.resolve())
    model = SegmentAnything(config, on_message=lambda message: None)

    image = QImage(str(args.image))
    if image.isNull():
        ap.error(f"Qt cannot read {args.image} as an image")
    cv_image = qt_img_to_rgb_cv_img(image, str(args.image))
    embedding = model.model.encode(cv_image)
    masks, polygons = {}, {}
    for name, marks in _marks(args).items():
        logits = model.model.predict_masks(embedding, marks)  # 1 x 4 x H x W, warped back to the image
        masks[name] = np.asarray(logits)[0, 0] > 0
        model.set_auto_labeling_marks(marks)
        polygons[name] = len(model.predict_shapes(image, str(args.image)).shapes)
    np.savez_compressed(args.out, **masks)
    summary = {
        "tool": tool,
        "version": metadata.version(tool) if tool != "unknown" else None,
        "shape": list(masks["point"].shape),
        "polygons": polygons,
        "encoder_input": model.model.encoder_session.get_inputs()[0].type if model.model.encoder_session else None,
    }
    print(json.dumps(summary))
    return 0


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
