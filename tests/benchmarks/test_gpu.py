"""The GPU benchmark: without CUDA it says so and exits 0; --quick runs its code paths on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would measure it")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert benchmarks.main(["gpu"]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_quick_mode_runs_every_part_on_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "FAILED" not in text, text[-3000:]
    for line in ("teacher_bf16_folded:", "bf16 drift vs fp32:", "student_bf16_channels_last:", "loader_masks16:"):
        assert line in text, text[-3000:]
    assert "stage2 step" in text and "distill_1pct estimate (112000 images): teacher precompute" in text
    for student in ("efficientvit_b0",):  # the zoo's part (all nine on a GPU)
        assert re.search(rf"zoo_{student}: [\d.e-]+ images/s \(batch 1, bf16\), peak memory n/a", text), text[-3000:]
    assert "# machine: " in text and "threads: " in text and "measured: " in text
    assert "| teacher_fp32_folded | " in text  # the rates table
