"""The README's snippets run as written: its python blocks and `mobilesam` command lines, on a tiny random model."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLE = REPO / "docs" / "example.jpg"
EXAMPLE_HW = (480, 720)  # docs/example.jpg, the image every snippet reads


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` in a markdown text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def commands(text: str, program: str = "mobilesam") -> list[list[str]]:
    """The command lines of the bash blocks that start with `program`, comments removed, split as the shell would."""
    found = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():  # continuation lines joined
            words = shlex.split(line, comments=True)
            if words and words[0] == program:
                found.append(words[1:])
    return found


PYTHON = blocks(README.read_text(), "python")
COMMANDS = commands(README.read_text())


@pytest.fixture
def repo_root(tmp_path: Path, small_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder laid out as the README expects of the repository root: `mobile_sam.pt` (here a random vit_t at
    img_size 256 with its sidecar) and `docs/example.jpg`; the working directory while a snippet runs."""
    shutil.copy(small_checkpoint, tmp_path / "mobile_sam.pt")
    shutil.copy(small_checkpoint.with_suffix(".json"), tmp_path / "mobile_sam.json")
    (tmp_path / "docs").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "docs" / EXAMPLE.name)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    return tmp_path


def run_cli(args: list[str]) -> None:
    from mobilesam.cli import main

    assert main(args) == 0, f"mobilesam {shlex.join(args)} failed"


def run_snippet(code: str, index: int) -> dict:
    namespace: dict = {"__name__": f"readme_snippet_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    return namespace


def test_readme_stays_a_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "README.md is a front door: move detail to a page under docs/"
    assert len(PYTHON) == 3 and len(COMMANDS) >= 5, "update this test's checks for the README's snippets"
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_facade_snippet(repo_root: Path) -> None:
    (code,) = [c for c in PYTHON if "SAM(" in c]
    ns = run_snippet(code, PYTHON.index(code))
    boxed, everything = ns["r"], ns["everything"]  # r: the second predict's result, the box
    assert ns["model"].model.image_encoder.img_size == 256  # the sidecar's size, not the official 1024
    assert boxed.masks.shape == (3, *EXAMPLE_HW) and boxed.masks.dtype == torch.bool  # the box, multimask
    assert boxed.boxes.shape == (3, 4) and boxed.scores.shape == (3,)
    assert everything.masks.shape[1:] == EXAMPLE_HW or everything.masks.shape[0] == 0
    assert (repo_root / "overlay.png").stat().st_size > 0


def test_predictor_snippet(repo_root: Path) -> None:
    (code,) = [c for c in PYTHON if "SamPredictor(" in c]
    ns = run_snippet(code, PYTHON.index(code))
    assert ns["image"].shape == (*EXAMPLE_HW, 3) and ns["image"].dtype == np.uint8
    assert ns["masks"].shape == (3, *EXAMPLE_HW) and ns["masks"].dtype == bool
    assert ns["scores"].shape == (3,) and ns["low_res"].shape == (3, 64, 64)  # img_size / 4
    assert ns["many"].shape == (2, 1, *EXAMPLE_HW) and ns["many"].dtype == torch.bool and ns["ious"].shape == (2, 1)


@pytest.mark.slow  # segment everything on the default 32 x 32 grid
def test_inference_commands(repo_root: Path) -> None:
    lines = [c for c in COMMANDS if c[0] in ("predict", "everything", "info")]
    assert {c[0] for c in lines} == {"predict", "everything", "info"}
    for args in lines:
        run_cli(args)
    assert (repo_root / "overlay.png").stat().st_size > 0 and (repo_root / "everything.png").stat().st_size > 0
    assert (repo_root / "masks.json").read_text().startswith("[")


@pytest.mark.slow
def test_export_and_runtime_snippet(repo_root: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    (export,) = [c for c in COMMANDS if c[:2] == ["export", "mobile_sam.pt"] and c[-2:] == ["--format", "onnx"]]
    run_cli(export)
    (code,) = [c for c in PYTHON if "load_predictor(" in c]
    ns = run_snippet(code, PYTHON.index(code))
    r = ns["r"]
    assert r.masks.shape == (3, *EXAMPLE_HW) and r.masks.dtype == bool  # the decode's box, multimask
    assert ns["emb"].features.shape == (1, 256, 16, 16)  # img_size / 16
