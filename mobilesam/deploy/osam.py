"""`--format osam`: the graphs in osam's SAM interface (labelme's backend), their model config, and `register`,
which makes them an osam model from the local files.

osam (`osam._models.sam.Sam`) reads the encoder's static input size S from its `x` input (1x3xSxS), resizes and
normalises the image itself and feeds the decoder segment-anything's six inputs (`tool_graphs.SquareEncoder`,
`tool_graphs.ToolDecoder`). Its model classes name their files by URL and sha256 and keep them in its blob cache
(`~/.cache/osam/models/blobs/sha256-<hex>`); `register` copies ours there, so osam never downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import sha256_file, write_json

if TYPE_CHECKING:
    from ..modeling import Sam
    from .formats import ExportOptions

SUFFIX = ".onnx"
FILES = {"encoder": "osam_encoder.onnx", "decoder": "osam_decoder.onnx", "config": "osam.json"}
ENCODER_INPUT = (
    "x 1x3xSxS float32 (S = img_size): the RGB image resized so its long side is S (PIL bilinear), normalised "
    "with SAM's pixel mean and std, zero-padded at the bottom and right"
)
DECODER_INPUT = (
    "segment-anything's six inputs as osam feeds them: point_coords in the resized image's pixels, mask_input "
    "1x1x256x256, has_mask_input -1 or 0 for no mask"
)


def require() -> None:
    """Raises ImportError naming the extra when the exporter or ONNX Runtime is missing (osam itself is not needed
    to export, only to run: `pip install osam`)."""
    from .onnx_export import require as onnx_require

    onnx_require()


def model_name(stamp: dict[str, Any], img_size: int) -> str:
    """osam's `name:tag` for the model: `mobilesam-vit_t-256:3fa2c1d9` (variant, img_size, the source's sha256)."""
    return f"mobilesam-{stamp.get('variant', 'vit_t')}-{img_size}:{str(stamp.get('source_sha256', 'latest'))[:8]}"


def square(image: np.ndarray, s: int) -> tuple[np.ndarray, tuple[int, int]]:
    """osam's encoder input for an HxWx3 uint8 image (its `Sam._encode_image`: Python's `round`, PIL bilinear)."""
    from PIL import Image

    from .runtime import normalize_pad

    h, w = image.shape[:2]
    new = (int(round(h * s / w)), s) if w > h else (s, int(round(w * s / h)))
    resized = np.asarray(Image.fromarray(image).resize(new[::-1], Image.BILINEAR))
    return normalize_pad(resized, s), new


def write(model: Sam, out_dir: Path, options: ExportOptions) -> tuple[dict[str, Path], dict[str, Any]]:
    """The format's writer (`mobilesam.deploy.formats`): the two graphs and `osam.json`, checked."""
    import torch

    from .tool_graphs import SquareEncoder, decoder_feed, probe_prompts, write_graphs

    s = model.img_size

    def feed(image: np.ndarray) -> Any:  # osam's: the padded square, prompts in the resized image's pixels
        x, (nh, nw) = square(image, s)
        h, w = image.shape[:2]
        scale = np.array([nw / w, nh / h])
        return {"x": x}, [decoder_feed(c * scale, lab, (h, w), -1.0) for c, lab in probe_prompts(h, w)]

    encoder = (SquareEncoder(model), torch.randn(1, 3, s, s), "x")
    enc, dec, checked = write_graphs(model, out_dir, options, FILES, encoder, s, feed)
    stamp = dict(options.stamp)
    config = {
        "name": model_name(stamp, s),
        "img_size": s,
        **{k: v for k, v in stamp.items() if k in ("variant", "source_sha256", "mobilesam_version")},
        "blobs": {
            role: {"file": FILES[role], "sha256": sha256_file(p)} for role, p in (("encoder", enc), ("decoder", dec))
        },
        "use": "mobilesam.deploy.osam.register(<this folder>), then osam.apis.generate(model=<name>, ...)",
    }
    path = write_json(out_dir / FILES["config"], config)
    read_config(path.parent)  # read back what `register` will read
    info = {
        "tool": "osam 0.8.1 (tested; labelme's backend): mobilesam.deploy.osam.register(folder)",
        "name": config["name"],
        "encoder_input": ENCODER_INPUT,
        "decoder_input": DECODER_INPUT,
        **checked,
    }
    return {"encoder": enc, "decoder": dec, "config": path}, info


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`osam.json` of an export folder, its graph files checked against their recorded sha256.

    Raises:
        FileNotFoundError / ValueError: naming the file and what is wrong, and the fix.
    """
    folder = Path(folder)
    path = folder / FILES["config"]
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise FileNotFoundError(f"{path} is {what}: pass the folder of `mobilesam export SRC --format osam`")
    try:
        config = json.loads(path.read_text())
        blobs = {role: (folder / b["file"], b["sha256"]) for role, b in config["blobs"].items()}
        name = config["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an osam model config written by mobilesam export ({e!r}); export again") from e
    if not isinstance(name, str) or set(blobs) != {"encoder", "decoder"}:
        raise ValueError(f"{path} names no encoder and decoder (blobs {sorted(blobs)}); export it again")
    for role, (file, sha) in blobs.items():
        if not file.is_file():
            raise FileNotFoundError(f"{file} (the osam {role}) is missing: keep {folder}'s files together")
        if sha256_file(file) != sha:
            raise ValueError(f"{file} does not match the sha256 in {path}: it changed after export; export again")
    return {**config, "paths": {role: file for role, (file, _) in blobs.items()}}


def register(folder: str | os.PathLike, name: str | None = None) -> type:
    """Makes an `--format osam` export an osam model: seeds osam's blob cache with its files and adds a model class.

    Args:
        folder: the export folder (holding `osam.json`, `osam_encoder.onnx`, `osam_decoder.onnx`).
        name: the model's osam name (`name:tag`; default the config's, e.g. `mobilesam-vit_t-256:3fa2c1d9`).

    Returns:
        The model class, registered in `osam.apis.registered_model_types` (replacing one of the same name), so
        `osam.apis.generate(osam.types.GenerateRequest(model=cls.name, image=..., prompt=...))` runs it.
    """
    try:
        import osam.apis
        from osam import types
        from osam._models.sam._models import Sam as OsamSam
    except ImportError as e:
        raise ImportError(f"registering an osam model needs osam ({e}): pip install 'osam>=0.8,<0.9'") from e
    config = read_config(folder)
    name = name or config["name"]
    if not isinstance(name, str) or not name.strip() or name.count(":") > 1:
        raise ValueError(f"name={name!r}: an osam model name is `name` or `name:tag`, e.g. {config['name']}")
    name = name if ":" in name else f"{name}:latest"
    blobs = {}
    for role, file in config["paths"].items():
        blob = types.Blob(url=Path(file).resolve().as_uri(), hash=f"sha256:{config['blobs'][role]['sha256']}")
        _seed(file, Path(blob.path))
        blobs[role] = blob
    cls = type(
        "MobileSamModel",
        (OsamSam,),
        {
            "name": name,
            "_blobs": blobs,
            "__doc__": f"MobileSAM from {Path(folder).resolve()} (img_size {config['img_size']})",
        },
    )
    osam.apis.registered_model_types[:] = [m for m in osam.apis.registered_model_types if m.name != name] + [cls]
    return cls


def _seed(src: Path, dst: Path) -> None:
    """Copies `src` to `dst` (osam's blob path) atomically, unless an identical file is there already."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name[:24]}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / "blob"
        shutil.copyfile(src, staged)
        os.replace(staged, dst)
