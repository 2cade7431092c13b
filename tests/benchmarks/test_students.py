"""`python -m benchmarks students`: a runtime column holds a time and its ratio to eager PyTorch, a runtime that
fails is a cell saying why, the training step learns, and the fidelity row comes from the demo recipe's validation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from benchmarks import students

CELL = re.compile(r"^\d+(\.\d+)? ms \(x\d+\.\d\d\)$")  # "1.6 ms (x0.07)"


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_a_runtime_column_is_timed_and_a_failing_runtime_is_a_cell(monkeypatch, tmp_path) -> None:
    import mobilesam.deploy.litert as litert_writer

    def broken(*_args, **_kwargs):
        raise RuntimeError("converter crashed | on purpose\nsecond line")

    monkeypatch.setattr(litert_writer, "require", lambda: None)
    monkeypatch.setattr(litert_writer, "write", broken)
    threads = torch.get_num_threads()
    try:
        row = students.latency("efficientvit_b0", 64, ["openvino", "litert"], rounds=1, threads=1, folder=tmp_path)
    finally:
        torch.set_num_threads(threads)
    name, params, macs, eager, openvino, litert, err = row
    assert (name, params) == ("efficientvit_b0", "1.32")
    assert 0 < float(macs) < 0.1 and re.match(r"^\d+(\.\d+)? ms$", eager), row
    assert CELL.match(openvino), row
    assert litert == "failed: RuntimeError: converter crashed / on purpose", row  # one line, no table pipe
    assert float(err) < 1e-4, row  # OpenVINO's embedding against eager PyTorch's


def test_runtimes_option_names_what_runs_here() -> None:
    assert students.runtimes("none") == []
    with pytest.raises(ValueError, match="--runtimes coreml: no runtime predictor runs here; choose from onnx,"):
        students.runtimes("coreml")
    with pytest.raises(ValueError, match="unknown export format"):
        students.runtimes("tensorrt")


def test_the_training_step_learns() -> None:
    step = students.train_step("efficientvit_b0", 64, 2)  # its rate: the `students --quick` test (train_rate)
    losses = [float(step()) for _ in range(3)]
    assert losses[-1] < losses[0], losses  # MSE against the fixed target falls


def test_fidelity_row_is_the_demo_recipes_validation(train_shards: Path, teacher_file: Path, tmp_path) -> None:
    overrides = (
        f"data.root={train_shards}",
        "data.synthesize=null",
        "data.batch_size=4",
        "data.val_masks_per_image=2",
        "teacher=vit_t",
        f"teacher.checkpoint={teacher_file}",
        "~callbacks.best",
        "~callbacks.last",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    )
    row = students.fidelity("efficientvit_b0", 2, tmp_path, overrides)
    name, steps, seconds, mse, point, two, box = row
    assert name == "efficientvit_b0" and int(steps) == 2, row  # 2 epochs of one batch, validated once
    assert seconds.endswith(" s") and float(mse) > 0, row
    assert all(0 <= float(v) <= 1 for v in (point, two, box)), row
    assert (tmp_path / "efficientvit_b0" / "efficientvit_b0.pt").is_file()  # the run's own export
