"""`--format anylabeling` and `--format osam` run in the tools' own code: osam's `generate` (a test extra beside the
project) and AnyLabeling's and X-AnyLabeling's `SegmentAnything` (each in its own environment, `TOOL_PYTHONS`),
headless, on an image with a point and a box prompt, against `OnnxPredictor` on the same image.

Agreement thresholds, and why they are not 100%: the image is 684x1024, the tools' canvas, so AnyLabeling's warp
is the identity and osam's resize is ours; what is left is the graphs' own resize (antialiased bilinear inside the
AnyLabeling encoder at img_size 256 against PIL's before ours) and the rounding of mask upscaling: a point prompt
agrees on >= 99.9% of pixels. A box differs more (>= 95%) for a reason that is the tools' own: both append a
padding point after a box, which SAM's predictor (and `OnnxPredictor`) does not; fed without it our decoder gives
`OnnxPredictor`'s mask exactly. On other images the tools' own resizing lowers the agreement: AnyLabeling warps
every image into the canvas with OpenCV (no antialiasing, no half-pixel centres), and an image that is not 3:2 fills
only part of the canvas, so the model sees it smaller than img_size; osam rounds sizes with Python's `round`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
# Each tool in its own environment (their opencv/PyQt6 pins clash with ours, and both install `anylabeling`)
TOOL_PYTHONS = {
    "anylabeling": ("MOBILESAM_ANYLABELING_PYTHON", ".venv/tools/anylabeling", "anylabeling==0.4.43"),
    "x-anylabeling": ("MOBILESAM_X_ANYLABELING_PYTHON", ".venv/tools/x-anylabeling", "x-anylabeling-cvhub[cpu]"),
}
SIZE = (684, 1024)  # the tools' canvas
POINT = [320.0, 342.0]
BOX = [160.0, 140.0, 640.0, 600.0]
POINT_AGREEMENT, BOX_AGREEMENT = 0.999, 0.95  # measured: 1.0 and 0.972 for all three tools


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from tests.helpers import scene

    path = tmp_path_factory.mktemp("tool_image") / "scene.png"
    Image.fromarray(scene(*SIZE)).save(path)
    return path


@pytest.fixture(scope="module")
def reference(exported_small, image_file: Path) -> dict[str, np.ndarray]:
    """`OnnxPredictor`'s masks for the point and the box (the main ONNX export of the same checkpoint)."""
    from PIL import Image

    from mobilesam.onnx import OnnxPredictor

    out = exported_small("onnx")
    predictor = OnnxPredictor(out / "encoder.onnx", out / "decoder.onnx")
    image = np.asarray(Image.open(image_file).convert("RGB"))
    return {
        "point": predictor.predict(image, points=POINT, labels=[1])[0].masks[0],
        "box": predictor.predict(image, bboxes=BOX)[0].masks[0],
    }


def test_anylabeling_export_writes_the_tools_config(exported_small, small_checkpoint):
    import onnxruntime as ort

    from mobilesam.deploy.anylabeling import FILES, read_config
    from mobilesam.files import sha256_file

    out = exported_small("x-anylabeling")  # the alias: one set of files serves both tools
    config = read_config(out / FILES["config"])
    sha = sha256_file(small_checkpoint)
    assert config["type"] == "segment_anything" and config["display_name"] == f"MobileSAM vit_t 256px ({sha[:8]})"
    assert (config["encoder_model_path"], config["decoder_model_path"]) == (FILES["encoder"], FILES["decoder"])
    assert (config["input_size"], config["max_width"], config["max_height"], config["img_size"]) == (
        1024,
        1024,
        684,
        256,
    )
    assert config["source_sha256"] == sha
    sidecar = json.loads((out / "mobile_sam.json").read_text())
    assert {p: sha256_file(out / p) for p in FILES.values()} == {p: sidecar["files"][p] for p in FILES.values()}
    assert sidecar["anylabeling"]["check"]["embedding_rel_error"] < 1e-3
    encoder = ort.InferenceSession(str(out / FILES["encoder"]))
    (x,) = encoder.get_inputs()
    assert (x.name, x.shape, x.type) == ("image", [684, 1024, 3], "tensor(float)")  # float: both tools feed it
    # a canvas of another size is refused by name and size (ONNX Runtime checks the static input), never cropped
    with pytest.raises(Exception, match=r"(?s)Got invalid dimensions for input: image .*Got: 700 Expected: 684"):
        encoder.run(None, {"image": np.zeros((700, 1024, 3), np.float32)})


def test_osam_export_runs_in_osams_generate(exported_small, image_file, reference, tmp_path, monkeypatch):
    pytest.importorskip("osam", reason="pip install 'osam>=0.8,<0.9' (a test extra)")
    import osam.apis
    import osam.types
    from PIL import Image

    from mobilesam.deploy.osam import FILES, register

    monkeypatch.setenv("HOME", str(tmp_path))  # osam's blob cache lives under ~/.cache/osam
    monkeypatch.setattr(osam.apis, "registered_model_types", list(osam.apis.registered_model_types))
    out = exported_small("osam")
    cls = register(out)
    assert cls.name.startswith("mobilesam-vit_t-256:") and cls in osam.apis.registered_model_types
    blob = cls._blobs["encoder"]
    assert Path(blob.path).read_bytes() == (out / FILES["encoder"]).read_bytes()  # seeded: osam downloads nothing

    image = np.asarray(Image.open(image_file).convert("RGB"))
    prompts = {
        "point": osam.types.Prompt(points=np.array([POINT]), point_labels=np.array([1])),
        "box": osam.types.Prompt(points=np.array([BOX[:2], BOX[2:]]), point_labels=np.array([2, 3])),
    }
    agreement = {}
    for name, prompt in prompts.items():
        response = osam.apis.generate(osam.types.GenerateRequest(model=cls.name, image=image, prompt=prompt))
        (annotation,) = response.annotations
        mask = np.zeros(SIZE, bool)  # osam returns the mask cropped to its box
        b = annotation.bounding_box
        mask[b.ymin : b.ymax + 1, b.xmin : b.xmax + 1] = annotation.mask
        agreement[name] = float((mask == reference[name]).mean())
    assert agreement["point"] >= POINT_AGREEMENT and agreement["box"] >= BOX_AGREEMENT, agreement


def test_osam_register_refuses_what_it_cannot_load(exported_small, tmp_path, monkeypatch):
    pytest.importorskip("osam", reason="pip install 'osam>=0.8,<0.9' (a test extra)")
    import shutil

    from mobilesam.deploy.osam import FILES, register

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"osam.json is missing: pass the folder of `mobilesam export SRC"):
        register(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(exported_small("osam"), copy, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(ValueError, match=r"name='a:b:c': an osam model name is `name` or `name:tag`"):
        register(copy, name="a:b:c")
    with open(copy / FILES["decoder"], "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"osam_decoder.onnx does not match the sha256 in .*osam.json: it changed"):
        register(copy)


def test_tool_formats_refuse_what_they_do_not_have():
    from mobilesam.deploy.formats import ExportOptions, check_formats, check_options

    assert check_formats("x-anylabeling,osam,anylabeling") == ["anylabeling", "osam"]
    with pytest.raises(ValueError, match=r"--format osam has no fp16 export \(it has fp32\)"):
        check_options(["osam"], ExportOptions(precision="fp16"))
    with pytest.raises(ValueError, match=r"--format anylabeling has no int8 export"):
        check_options(["anylabeling"], ExportOptions(quantize=True))


def _tool_python(tool: str) -> Path:
    variable, default, package = TOOL_PYTHONS[tool]
    python = Path(os.environ.get(variable) or ROOT / default / "bin" / "python")
    if not python.exists():
        pytest.skip(
            f"{tool} needs its own environment (its opencv and PyQt6 pins clash with ours; AnyLabeling and "
            f"X-AnyLabeling both install `anylabeling`): python3 -m venv {default} && {default}/bin/pip install "
            f"'{package}' (or set {variable})"
        )
    return python


@pytest.mark.parametrize("tool", list(TOOL_PYTHONS))
def test_anylabeling_runs_the_export_in_the_tools_own_model_class(
    tool, exported_small, image_file, reference, tmp_path
):
    from mobilesam.deploy.anylabeling import FILES

    python = _tool_python(tool)
    out = exported_small("anylabeling")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}  # the tools write rc files in ~
    masks = tmp_path / "masks.npz"
    args = [str(out / FILES["config"]), str(image_file), str(masks), "--point", *map(str, POINT), "--box"]
    done = subprocess.run(
        [str(python), str(ROOT / "scripts" / "annotation_tool_masks.py"), *args, *map(str, BOX)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["tool"] == {"anylabeling": "anylabeling", "x-anylabeling": "x-anylabeling-cvhub"}[tool]
    assert summary["shape"] == list(SIZE) and min(summary["polygons"].values()) >= 1  # the tool drew shapes
    got = np.load(masks)
    agreement = {name: float((got[name] == reference[name]).mean()) for name in ("point", "box")}
    assert agreement["point"] >= POINT_AGREEMENT and agreement["box"] >= BOX_AGREEMENT, agreement


def test_the_tool_script_refuses_a_folder(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "annotation_tool_masks.py"), str(tmp_path), "x.png", "o.npz"]
        + ["--point", "1", "1", "--box", "0", "0", "2", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and f"model config {tmp_path} is a folder: pass a file" in done.stderr


def test_onnx_encoder_refuses_an_image_it_would_crop(exported_small, tmp_path):
    """The `--format onnx` encoder (img_size 256) carries `onnx_guard`'s size check: a resized image runs, and
    AnyLabeling's 684x1024 canvas (which the graph would crop to its top-left 256x256) or any long side but 256 fails
    naming the rule. Without the check (the guard's nodes cut out) the same graph crops silently."""
    import onnx
    import onnxruntime as ort

    from mobilesam.deploy.onnx_guard import GUARD_PREFIX

    src = exported_small("onnx") / "encoder.onnx"
    model = onnx.load(src)
    rule = "image_long_side_must_be_256__resize_the_image_so_its_long_side_is_256"
    assert sum(n.name == rule for n in model.graph.node) == 1
    # the same graph without the check: the guard's reshape becomes an identity, its helper nodes go
    for node in model.graph.node:
        if node.name == rule:
            node.op_type, node.name = "Identity", "unchecked"
            del node.input[1:]
    keep = [n for n in model.graph.node if not n.name.startswith(GUARD_PREFIX)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    unchecked = tmp_path / "unchecked.onnx"
    onnx.save(model, unchecked)
    guarded, plain = (ort.InferenceSession(str(p)) for p in (src, unchecked))
    image = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    assert np.array_equal(guarded.run(None, {"image": image})[0], plain.run(None, {"image": image})[0])
    for shape in ((684, 1024, 3), (100, 200, 3), (256, 300, 3)):
        with pytest.raises(Exception, match=rf"(?s)Reshape node\. Name:'{rule}'.*Input shape:\{{{shape[0]},"):
            guarded.run(None, {"image": np.zeros(shape, np.uint8)})
    assert plain.run(None, {"image": np.zeros((684, 1024, 3), np.uint8)})[0].shape == (1, 256, 16, 16)  # cropped
