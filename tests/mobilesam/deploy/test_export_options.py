"""Export options out of range, or that no asked-for format takes, are refused in one line before any work
(`formats.check_options`): nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilesam.cli import main
from mobilesam.deploy.formats import MAX_POINTS, ExportOptions, check_options

CASES = [
    (["--format", "litert", "--max-points", "0"], "--max-points 0 is out of range: choose an integer from 2 to 64"),
    (["--format", "litert", "--max-points", "1"], "--max-points 1 is out of range"),
    (["--format", "openvino", "--max-points", str(MAX_POINTS + 1)], f"--max-points {MAX_POINTS + 1} is out of range"),
    (["--format", "onnx", "--opset", "17"], "opset 17 is not available: choose 18 to"),
    (["--format", "onnx", "--opset", "0"], "opset 0 is not available"),
    (["--format", "litert", "--opset", "18"], "--opset applies to --format onnx only, not litert"),
    (["--format", "openvino", "--single-mask"], "--single-mask applies to --format onnx only, not openvino"),
    (["--format", "onnx", "--img-size", "100"], "--img-size=100 must be a positive multiple of 16"),
    (["--format", "onnx", "--img-size", "0"], "--img-size=0 must be a positive multiple of 16"),
    (["--format", "executorch", "--precision", "fp16"], "--format executorch has no fp16 export"),
    (["--format", "openvino", "--quantize"], "--format openvino has no int8 export: drop --quantize"),
    (["--format", "onnx,nonsense"], "unknown export format(s) ['nonsense']"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[2:]) or a[1] for a, _ in CASES])
def test_cli_refuses_before_any_work(small_checkpoint, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    assert main(["export", str(small_checkpoint), "--out", str(out), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()  # nothing written, not even the folder


def test_check_options_types() -> None:
    """What the Python API may pass that the CLI's parser would not: floats, booleans, a precision not in the list."""
    for bad in (2.5, True, None):
        with pytest.raises(ValueError, match=f"--max-points {bad!r} is out of range"):
            check_options(["litert"], ExportOptions(max_points=bad))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision='int4': choose from fp32, fp16"):
        check_options(["onnx"], ExportOptions(precision="int4"))
    check_options(["litert"], ExportOptions(max_points=2))  # the bounds themselves are accepted
    check_options(["litert"], ExportOptions(max_points=MAX_POINTS, img_size=256))


def test_export_api_keeps_max_points_zero(small_checkpoint, tmp_path: Path) -> None:
    """`export(max_points=0)` is refused, not silently the default 8."""
    from mobilesam.export import export

    with pytest.raises(ValueError, match="--max-points 0 is out of range"):
        export(small_checkpoint, tmp_path / "out", formats=["litert"], max_points=0)
    assert not (tmp_path / "out").exists()
