"""Deployment files that are not what they claim, for every format that runs here: one `ExportFileError` naming
the file and what is wrong. The bad files are copies of the session's exports (`exported_small`), cut or swapped
in tmp_path: no new exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobilesam.deploy import ExportFileError, load_predictor
from mobilesam.deploy.formats import FORMATS

RUNTIMES = [f.name for f in FORMATS.values() if f.predictor]


def _export(exported_small, name: str, tmp_path: Path, folder: str = "copy") -> tuple[Path, Path, Path]:
    """A copy of the format's fp32 export in tmp_path/folder: (folder, encoder, decoder)."""
    fmt = FORMATS[name]
    if not fmt.runs_here():
        pytest.skip(f"{fmt.runtime} runs on {fmt.platform_names()} only")
    out = tmp_path / folder
    shutil.copytree(exported_small(name), out)
    return out, out / f"encoder{fmt.suffix}", out / f"decoder{fmt.suffix}"


def _sidecar(folder: Path) -> Path:
    (sidecar,) = folder.glob("mobile_sam.json")
    return sidecar


@pytest.mark.parametrize("name", RUNTIMES)
def test_folder_empty_truncated_swapped(exported_small, name: str, tmp_path: Path) -> None:
    out, enc, dec = _export(exported_small, name, tmp_path)
    with pytest.raises(ExportFileError, match=f"{out} is a folder.*holds .*encoder"):
        load_predictor(out, out)
    with pytest.raises(ExportFileError, match=f"{dec} is the decoder of an export, not its encoder: .* swapped"):
        load_predictor(dec, enc)
    if FORMATS[name].suffix == ".mlpackage":
        return  # a package is a folder: the rest is about single files
    enc.rename(tmp_path / "kept")
    enc.mkdir()
    with pytest.raises(ExportFileError, match=f"{enc} is a folder, not a {name} graph file"):
        load_predictor(enc, dec)
    enc.rmdir()
    enc.write_bytes(b"")
    with pytest.raises(ExportFileError, match=f"{enc} is empty \\(0 bytes\\)"):
        load_predictor(enc, dec)
    data = (tmp_path / "kept").read_bytes()
    enc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportFileError, match=f"could not load {enc} .*truncated, damaged") as info:
        load_predictor(enc, dec)
    assert info.value.__cause__ is not None  # the runtime's own error, for --debug


@pytest.mark.parametrize("name", RUNTIMES)
def test_changed_after_export(exported_small, name: str, tmp_path: Path) -> None:
    """The sidecar's sha256 of the encoder no longer matches the file (as after replacing the file alone)."""
    out, enc, dec = _export(exported_small, name, tmp_path)
    sidecar = _sidecar(out)
    meta = json.loads(sidecar.read_text())
    meta["files"][enc.name] = "0" * 64
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ExportFileError, match=f"{enc} changed after export: .*{sidecar.name} lists"):
        load_predictor(enc, dec)


def test_onnx_encoder_replaced(exported_small, tmp_path: Path) -> None:
    """A real replacement: another loadable encoder (the int8 one) copied over encoder.onnx after export."""
    out, enc, dec = _export(exported_small, "onnx", tmp_path)
    shutil.copyfile(out / "encoder_int8.onnx", enc)
    with pytest.raises(ExportFileError, match=f"{enc} changed after export"):
        load_predictor(enc, dec)


@pytest.mark.parametrize("name", RUNTIMES)
def test_pair_of_two_exports(exported_small, name: str, tmp_path: Path) -> None:
    """The encoder of export A with the decoder of export B (same img_size): A's sidecar lists another decoder."""
    a, enc_a, _ = _export(exported_small, name, tmp_path, "a")
    b, enc_b, dec_b = _export(exported_small, name, tmp_path, "b")
    sidecar = _sidecar(a)
    meta = json.loads(sidecar.read_text())
    for key in [k for k in meta["files"] if k.startswith("decoder")]:
        meta["files"][key] = "1" * 64  # export A's own decoder: other bytes than B's
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ExportFileError, match=f"come from two different exports: {dec_b} is not among"):
        load_predictor(enc_a, dec_b)
    for p in a.iterdir():  # without sidecars, the pair is checked by role and sizes only: the same bytes load
        if p.suffix == ".json":
            p.unlink()
    (b / "mobile_sam.json").unlink()
    # an embedding of one predictor decoded by another's: refused, even for identical files
    pa, pb = load_predictor(enc_a, a / dec_b.name), load_predictor(enc_b, dec_b)
    image = np.zeros((40, 60, 3), np.uint8)
    emb = pa.embed(image)
    with pytest.raises(ValueError, match="made by another export's encoder"):
        pb.decode(emb, points=[[10, 10]])
    assert len(pa.decode(emb, points=[[10, 10]]).masks) == 1
    wrong = emb._replace(features=np.zeros((1, 256, 8, 8), np.float32), export="")
    with pytest.raises(ValueError, match=r"this embedding is \(1, 256, 8, 8\), not the \(1, 256, 16, 16\)"):
        pa.decode(wrong, points=[[10, 10]])


def test_onnx_graph_not_sam(exported_small, tmp_path: Path) -> None:
    """A valid ONNX graph that is not a SAM export."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _, enc, dec = _export(exported_small, "onnx", tmp_path)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), other)
    with pytest.raises(ExportFileError, match=f"{other} takes inputs \\['x'\\], not the encoder's"):
        load_predictor(other, dec)


def test_openvino_graph_not_sam(exported_small, tmp_path: Path) -> None:
    """A valid OpenVINO IR that is not a SAM export (no `mobilesam` rt_info)."""
    ov = pytest.importorskip("openvino")
    from openvino import opset13

    _, enc, dec = _export(exported_small, "openvino", tmp_path)
    x = opset13.parameter([256], ov.Type.f32, name="x")
    y = opset13.add(x, opset13.constant(np.arange(256, dtype=np.float32)))  # weights: a non-empty .bin
    other = tmp_path / "other.xml"
    ov.save_model(ov.Model([y], [x], "other"), other)
    with pytest.raises(ExportFileError, match=f"{other} has no `mobilesam` rt_info: it was not written by"):
        load_predictor(other, dec)
