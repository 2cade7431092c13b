"""What a new user meets first: the export summary (sizes with OpenVINO's `.bin`, how to run a non-1024 model in
Ultralytics and the official code), `mobilesam info` saying the same, `everything` with 0 masks naming the
thresholds to lower, and third-party loggers quiet unless `--debug`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from mobilesam.cli import QUIET_LOGGERS, main
from mobilesam.export import other_runtimes_hint


def test_hint_names_imgsz_and_the_official_build() -> None:
    assert other_runtimes_hint(1024) == ""
    hint = other_runtimes_hint(256)
    assert "imgsz=256" in hint and "image_size = 1024 in mobile_sam/build_sam.py" in hint and "set it to 256" in hint


def test_export_summary_counts_the_bin_and_says_imgsz(tmp_path: Path, monkeypatch, capsys) -> None:
    """The summary of an OpenVINO export: encoder.xml (1 kB) + encoder.bin (3 MiB) counts 3.0 MiB, not 0.0."""
    (tmp_path / "encoder.xml").write_bytes(b"x" * 1000)
    (tmp_path / "encoder.bin").write_bytes(b"\0" * (3 << 20))
    sidecar = tmp_path / "mobile_sam.json"
    sidecar.write_text(json.dumps({"img_size": 256}))
    written = {"openvino_encoder": tmp_path / "encoder.xml", "sidecar": sidecar}
    monkeypatch.setattr("mobilesam.export.export", lambda *a, **k: written)
    assert main(["export", "src.pt", "--out", str(tmp_path), "--format", "openvino"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("encoder.xml + .bin (3.0 MiB)"), lines
    assert lines[-1].startswith("note: this model runs at img_size=256") and "imgsz=256" in lines[-1]


def test_info_says_how_to_run_a_256_model_elsewhere(small_checkpoint: Path, capsys) -> None:
    assert main(["info", str(small_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "img_size   256" in out and "pass imgsz=256" in out


def test_everything_with_no_mask_names_the_thresholds(small_checkpoint: Path, tmp_path: Path, capsys) -> None:
    img = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    args = ["everything", str(img), "--checkpoint", str(small_checkpoint), "--device", "cpu", "--points-per-side", "2"]
    assert main([*args, "--pred-iou-thresh", "1.5", "--out", str(tmp_path / "o.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 masks in ")
    assert "lower --pred-iou-thresh (now 1.5) or --stability-score-thresh (now 0.95)" in out


def test_third_party_loggers_quiet_unless_debug(small_checkpoint: Path, capsys) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert main(["--debug", "info", str(small_checkpoint)]) == 0
    assert all(logging.getLogger(n).level == logging.NOTSET for n in QUIET_LOGGERS)
    assert main(["info", str(small_checkpoint)]) == 0
    assert all(logging.getLogger(n).getEffectiveLevel() == logging.ERROR for n in QUIET_LOGGERS)
    capsys.readouterr()
