"""The format table drives everything that lists formats: `load_predictor`, the export's checks, the CLI's help and
its aliases, the platform rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mobilesam
from mobilesam.cli import main
from mobilesam.deploy import load_predictor
from mobilesam.deploy.formats import (
    ALIASES,
    FORMATS,
    ExportOptions,
    by_suffix,
    check_formats,
    check_options,
    get_format,
)
from mobilesam.deploy.runtime import RuntimePredictor


def test_every_row_names_its_writer_predictor_and_files():
    suffixes = [f.suffix for f in FORMATS.values() if f.predictor]
    assert list(FORMATS) == ["onnx", "executorch", "openvino", "litert", "coreml", "anylabeling", "osam", "web"]
    assert len(set(suffixes)) == len(suffixes)  # the suffix picks the runtime
    for f in FORMATS.values():
        writer = f.writer()
        assert callable(writer.require) and callable(writer.write) and writer.SUFFIX == f.suffix, f.name
        if not f.predictor:  # a tool or the browser runs its files (test_annotation_tools.py, test_web.py)
            assert by_suffix(f.suffix) is not f, f.name
            assert f.precisions == (("fp32", "fp16") if f.name == "web" else ("fp32",)), f.name
            continue
        assert by_suffix(f.suffix) is f and by_suffix(f.suffix.upper()) is f
        cls = f.predictor_class()  # numpy, Pillow and the runtime's own import only when built
        assert issubclass(cls, RuntimePredictor) and cls.__name__ in mobilesam.deploy.__all__, f.name
        assert set(f.precisions) <= {"fp32", "fp16"} and "fp32" in f.precisions, f.name
    assert by_suffix(".engine") is None


def test_one_name_per_format_and_aliases_resolve_to_it():
    assert ALIASES["tflite"] == "litert" and get_format(" TFLite ") is FORMATS["litert"]
    assert check_formats("tflite,litert,onnx") == ["litert", "onnx"]  # one format, named once
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['tensorrt'\]: choose from "):
        check_formats("tflite,tensorrt")
    with pytest.raises(ValueError, match=r"--format litert has no int8 export"):
        check_options(["tflite"], ExportOptions(quantize=True))


def test_cli_help_lists_the_table(capsys):
    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in FORMATS.values():
        assert f.help() in text, f.help()
    assert "litert (.tflite, LiteRT; also tflite)" in text
    assert "coreml (.mlpackage, Core ML; runs on macOS and iOS only)" in text
    half = ", ".join(f.name for f in FORMATS.values() if "fp16" in f.precisions)
    int8 = ", ".join(f.name for f in FORMATS.values() if f.int8)
    assert f"fp16 writes *_fp16 files ({half})" in text and f"int8 files of {int8}" in text


def test_cli_takes_the_alias_and_names_the_known_formats(small_checkpoint, tmp_path, capsys):
    """`--format tflite` is `--format litert` (refused here for `--quantize` under its one name, before any work);
    an unknown format lists the known ones."""
    out = tmp_path / "out"
    assert main(["export", str(small_checkpoint), "--out", str(out), "--format", "tflite", "--quantize"]) == 1
    assert "error: --format litert has no int8 export" in capsys.readouterr().err
    assert main(["export", str(small_checkpoint), "--out", str(out), "--format", "tensorrt"]) == 1
    err = capsys.readouterr().err
    assert f"unknown export format(s) ['tensorrt']: choose from {', '.join(FORMATS)}" in err
    assert not out.exists()


@pytest.mark.parametrize("name", [name for name, f in FORMATS.items() if f.predictor])
def test_load_predictor_builds_the_rows_predictor(name, tmp_path):
    """Missing files of each format reach that format's predictor, which names the export that writes them; a format
    that does not run here is refused by the table's platform rule first."""
    f = FORMATS[name]
    pytest.importorskip(f.runtime_module, reason=f"pip install 'mobilesam[{f.extra}]'")
    enc, dec = tmp_path / f"encoder{f.suffix}", tmp_path / f"decoder{f.suffix}"
    if f.runs_here():
        with pytest.raises(FileNotFoundError, match=f"--format {name}"):
            load_predictor(enc, dec)
    else:
        with pytest.raises(RuntimeError, match=f"{f.runtime} models run on .* only .*copy .*{enc.name} and"):
            load_predictor(enc, dec)


def test_the_platform_rule_is_the_tables(monkeypatch, tmp_path):
    coreml = FORMATS["coreml"]
    monkeypatch.setattr(sys, "platform", "linux")
    assert not coreml.runs_here() and FORMATS["onnx"].runs_here()
    with pytest.raises(RuntimeError) as e:
        coreml.require_platform(tmp_path / "encoder.mlpackage", tmp_path / "decoder.mlpackage")
    message = str(e.value)
    assert message.startswith("Core ML models run on macOS and iOS only (this is linux): copy ")
    assert message.endswith("to a Mac, or export another format here (--format onnx, executorch, openvino, litert)")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert coreml.runs_here()
    coreml.require_platform(tmp_path / "encoder.mlpackage")  # no error
    # nothing else in the package decides where a runtime runs
    root = Path(mobilesam.__file__).parent
    deciding = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if '"darwin"' in p.read_text())
    assert deciding == ["deploy/formats.py"]
