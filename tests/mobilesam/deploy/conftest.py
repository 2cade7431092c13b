"""Fixtures of the deploy tests: every export format written once per test session and shared by every module."""

from __future__ import annotations

from pathlib import Path

import pytest

# fp32 exports that also write their int8 files (`--quantize`; ExecuTorch's int8 PTQ is not exercised here)
QUANTIZED = ("onnx",)


@pytest.fixture(scope="session")
def model(small_checkpoint: Path):
    """The model of `small_checkpoint` (random vit_t at 256), in eval mode: PyTorch's side of every comparison."""
    from mobilesam import build_sam

    return build_sam("vit_t", small_checkpoint).eval()


@pytest.fixture(scope="session")
def exported_small(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """`exported_small("litert", "fp16")` -> the folder `mobilesam export --format litert --precision fp16` wrote for
    `small_checkpoint`. Each format and precision is exported once per session (exports are the slow part of these
    tests) through the CLI; the fp32 export of a `QUANTIZED` format holds its int8 files too (precision "int8" names
    that folder). A format whose runtime is not installed skips the test, naming its extra (`formats.FORMATS`)."""
    from mobilesam.cli import main
    from mobilesam.deploy.formats import get_format

    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, precision: str = "fp32") -> Path:
        fmt = get_format(name)
        reason = f"{fmt.runtime} is not installed: pip install 'mobilesam[{fmt.extra}]'"
        pytest.importorskip(fmt.runtime_module, reason=reason)
        precision = "fp32" if precision == "int8" else precision
        key = (fmt.name, precision)
        if key not in cache:
            quantize = precision == "fp32" and fmt.name in QUANTIZED
            out = tmp_path_factory.mktemp(f"export_{fmt.name}_{precision}")
            args = ["export", str(small_checkpoint), "--out", str(out), "--format", fmt.name, "--precision", precision]
            assert main(args + ["--quantize"] * quantize) == 0
            cache[key] = out
        return cache[key]

    return get
