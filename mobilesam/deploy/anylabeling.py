"""`--format anylabeling`: the graphs and model config that AnyLabeling and X-AnyLabeling load as a custom model.

Both tools (`anylabeling` 0.4.43 and `x-anylabeling-cvhub`, `services/auto_labeling/sam_onnx.py`) feed the same
interface (`tool_graphs.CanvasEncoder`, `tool_graphs.ToolDecoder`): the encoder's input is float32, which AnyLabeling
feeds as float32 (it picks uint8 only for a non-float input) and X-AnyLabeling always does, so one set of files
serves both. The config is the tool's yaml (`type: segment_anything`), paths relative to its folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import write_bytes
from ..modeling import Sam

if TYPE_CHECKING:
    from .formats import ExportOptions

SUFFIX = ".onnx"
FILES = {"encoder": "anylabeling_encoder.onnx", "decoder": "anylabeling_decoder.onnx", "config": "anylabeling.yaml"}
ENCODER_INPUT = (
    "image 684x1024x3 float32 (0-255): AnyLabeling's canvas, the RGB image scaled to fit and placed top-left; "
    "resized to img_size inside the graph"
)
DECODER_INPUT = (
    "segment-anything's six inputs as AnyLabeling feeds them: point_coords in the canvas's pixels, mask_input "
    "1x1x256x256, orig_im_size (684, 1024)"
)
# The keys the tools require (`SegmentAnything.Meta.required_config_names` and `__init__`), in the order written
CONFIG_KEYS = ("type", "name", "display_name", "encoder_model_path", "decoder_model_path")
CONFIG_SIZES = {"input_size": 1024, "max_width": 1024, "max_height": 684}  # read by the tools, unused by their SAM


def require() -> None:
    """Raises ImportError naming the extra when the exporter or ONNX Runtime is missing."""
    from .onnx_export import require as onnx_require

    onnx_require()


def display_name(stamp: dict[str, Any], img_size: int) -> str:
    """The name the tool lists: `MobileSAM vit_t 256px (3fa2c1d9)` (variant, img_size, the source's sha256)."""
    sha = str(stamp.get("source_sha256", ""))[:8]
    return f"MobileSAM {stamp.get('variant', 'vit_t')} {img_size}px" + (f" ({sha})" if sha else "")


def config_text(stamp: dict[str, Any], img_size: int) -> str:
    """The tool's yaml; each value written as a JSON scalar (valid YAML), with our own keys after the tool's."""
    name = f"mobilesam_{stamp.get('variant', 'vit_t')}_{img_size}_{str(stamp.get('source_sha256', 'none'))[:8]}"
    values = {
        "type": "segment_anything",
        "name": name,
        "display_name": display_name(stamp, img_size),
        "encoder_model_path": FILES["encoder"],
        "decoder_model_path": FILES["decoder"],
        **CONFIG_SIZES,
        # ours (the tools ignore them): what the graphs were made from
        "img_size": img_size,
        **{k: v for k, v in stamp.items() if k in ("variant", "source_sha256", "mobilesam_version")},
    }
    lines = ["# AnyLabeling / X-AnyLabeling custom model: Auto Labeling > Load Custom Model > this file"]
    return "\n".join(lines + [f"{k}: {json.dumps(v)}" for k, v in values.items()]) + "\n"


def read_config(path: str | Path) -> dict[str, Any]:
    """The config's `key: value` lines (as written by `config_text`); ValueError naming what is missing."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(": ")
            values[key] = json.loads(value)
    missing = [k for k in (*CONFIG_KEYS, *CONFIG_SIZES) if k not in values]
    if missing or values.get("type") != "segment_anything":
        raise ValueError(f"{path} is not a complete AnyLabeling model config (missing {missing}); export it again")
    return values


def canvas(image: np.ndarray) -> tuple[np.ndarray, float]:
    """An HxWx3 uint8 image on the tools' 684x1024 canvas (scaled to fit, top-left), float32; and the scale.

    The tools warp with OpenCV; this uses PIL's bilinear resize (for the export check, any canvas will do).
    """
    from PIL import Image

    from .tool_graphs import CANVAS

    h, w = image.shape[:2]
    scale = min(CANVAS[0] / h, CANVAS[1] / w)
    size = (min(CANVAS[1], int(w * scale + 0.5)), min(CANVAS[0], int(h * scale + 0.5)))
    out = np.zeros((*CANVAS, 3), np.float32)
    out[: size[1], : size[0]] = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return out, scale


def _feed(image: np.ndarray) -> Any:
    """The tools' feed of an image (`tool_graphs.Feed`): the canvas, and the probe prompts in its pixels."""
    from .tool_graphs import CANVAS, decoder_feed, probe_prompts

    picture, scale = canvas(image)
    prompts = [decoder_feed(c * scale, lab, CANVAS, 0.0) for c, lab in probe_prompts(*image.shape[:2])]
    return {"image": picture}, prompts


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): the two graphs and the yaml, checked, and their description.

    Every img_size works: the encoder resizes the tool's 1024-wide canvas to img_size inside the graph and the
    decoder scales the tool's coordinates and mask input to it.
    """
    import torch

    from .tool_graphs import CANVAS, CanvasEncoder, write_graphs

    example = torch.randint(0, 256, (*CANVAS, 3)).float()
    encoder = (CanvasEncoder(model), example, "image")
    enc, dec, checked = write_graphs(model, out_dir, options, FILES, encoder, CANVAS[1], _feed)
    config = write_bytes(out_dir / FILES["config"], config_text(dict(options.stamp), model.img_size).encode())
    read_config(config)  # read back what the tool will read
    info = {
        "tools": "AnyLabeling 0.4.43, X-AnyLabeling 4.2.1 (tested): Load Custom Model > anylabeling.yaml",
        "encoder_input": ENCODER_INPUT,
        "decoder_input": DECODER_INPUT,
        **checked,
    }
    return {"encoder": enc, "decoder": dec, "config": config}, info
