"""The `mobilesam` console command."""

from __future__ import annotations

import re

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
    assert (
        "vit_t" in out
        and "loads strictly" in out
        and "img_size   256 (from its sidecar)" in out
        and "keys       439" in out
    )


def test_every_bad_input_ends_in_one_error_line_not_a_traceback(small_checkpoint, tmp_path, capsys):
    import json
    import os
    import pickle

    import pytest
    import torch

    img = tmp_path / "scene.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    pickled = tmp_path / "evil.pt"
    pickled.write_bytes(pickle.dumps(os.system))  # would run code if unpickled
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(small_checkpoint.read_bytes()[:5000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    bad_sidecar = tmp_path / "side_mobile_sam.pt"
    torch.save(torch.load(small_checkpoint, weights_only=True), bad_sidecar)
    bad_sidecar.with_suffix(".json").write_text(json.dumps({"img_size": 0}))
    predict = ["predict", str(img), "--points", "10,10", "--device", "cpu", "--checkpoint"]
    cases = [
        (["info", str(pickled)], "refusing to load .*evil.pt"),
        (["info", str(truncated)], "cannot read checkpoint .*cut.pt"),
        (["info", str(empty)], "empty.pt"),
        (["info", str(tmp_path / "missing.pt")], "missing.pt does not exist"),
        (["info", str(folder)], "weights_dir is a directory; give the path of a checkpoint file"),
        (["info", str(bad_sidecar)], r"sidecar .*side_mobile_sam.json is invalid: img_size=0 must be a positive"),
        (predict + [str(pickled)], "refusing to load"),
        (predict + [str(bad_sidecar)], "img_size=0"),
        (
            ["predict", str(tmp_path), "--checkpoint", str(small_checkpoint)],
            "is a directory; give the path of an image file",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, (argv, err)
        assert re.search(message, err), (argv, err)
    with pytest.raises(Exception, match="refusing to load"):  # --debug: the exception itself
        main(["--debug", "info", str(pickled)])
    with pytest.raises(SystemExit) as exit_:  # malformed option values: argparse's usage line and one error line
        main(predict + [str(small_checkpoint), "--labels", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: argument --labels: labels 'x' must be 1 (positive) or 0" in err


def test_a_decompression_bomb_is_refused_with_the_limit(tmp_path, small_checkpoint, capsys, monkeypatch):
    img = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(img)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 is then over twice the limit: Pillow refuses
    assert main(["predict", str(img), "--checkpoint", str(small_checkpoint), "--points", "5,5"]) == 1
    err = capsys.readouterr().err
    assert "refusing to decode image" in err and "MAX_IMAGE_PIXELS = 1000" in err
