"""The `mobilesam` console command."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mobilesam.cli import main


def test_predict_writes_overlay_and_prints_masks(small_checkpoint, tmp_path, capsys):
    img = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "overlay.png"
    rc = main(
        [
            "predict",
            str(img),
            "--checkpoint",
            str(small_checkpoint),
            "--points",
            "60,40",
            "10,10",
            "--labels",
            "1",
            "0",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["mask 0", "mask 1"]
    assert Image.open(out).size == (120, 90)
    rc = main(
        [
            "predict",
            str(img),
            "--checkpoint",
            str(small_checkpoint),
            "--points",
            "60,40;10,10",
            "--labels",
            "1;0",
            "--boxes",
            "5,5,100,80",
            "--multimask",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and (tmp_path / "scene_masks.png").exists()
    assert len([s for s in capsys.readouterr().out.splitlines() if s.startswith("mask ")]) == 3


def test_info_reports_variant_and_strict_load(small_checkpoint, capsys):
    assert main(["info", str(small_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "vit_t" in out and "loads strictly" in out and "img_size   256 (from its sidecar)" in out and "keys       439" in out
