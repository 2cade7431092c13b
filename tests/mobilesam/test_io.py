"""Image reading and the conversion rule; the resize transform against the official one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mobilesam.io import ImageReadError, load_image
from mobilesam.transforms import ResizeLongestSide


def test_conversion_rule(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(gray)
    assert out.shape == (3, 4, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 100, 0
    assert (load_image(rgba)[..., 0] == 100).all()  # alpha dropped, not composited
    u16 = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    assert load_image(u16)[..., 0].tolist() == [[0, 64], [128, 255]]  # stretched min..max
    f01 = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    assert load_image(f01)[..., 0].tolist() == [[0, 128], [255, 64]]
    path = tmp_path / "g16.png"
    Image.fromarray(u16).save(path)  # PIL writes I;16
    assert load_image(path)[..., 1].tolist() == [[0, 64], [128, 255]]
    la = Image.fromarray(np.stack([gray, gray], -1), mode="LA")
    assert load_image(la).shape == (3, 4, 3)
    with pytest.raises(ImageReadError, match="shape"):
        load_image(np.zeros((2, 2, 7)))
    with pytest.raises(ImageReadError, match="NaN"):
        load_image(np.full((2, 2), np.nan))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (20, 10, 3)


def test_resize_matches_official():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam.utils.transforms import ResizeLongestSide as Official
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    ours, ref = ResizeLongestSide(1024), Official(1024)
    assert np.array_equal(ours.apply_image(img), ref.apply_image(img))
    pts = rng.uniform(0, 375, (5, 2))
    assert np.allclose(ours.apply_coords(pts, (375, 500)), ref.apply_coords(pts, (375, 500)))
    boxes = rng.uniform(0, 375, (3, 4))
    assert np.allclose(ours.apply_boxes(boxes, (375, 500)), ref.apply_boxes(boxes, (375, 500)))
    assert ours.get_preprocess_shape(375, 500, 256) == ref.get_preprocess_shape(375, 500, 256) == (192, 256)


def test_saving_picks_the_format_by_extension_and_png_fast(tmp_path):
    from mobilesam.viz import overlay, palette, save_picture

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    pic = overlay(image, [mask, np.zeros_like(mask)])
    out = np.asarray(pic)
    blend = (image[mask].astype(np.float32) * 0.5 + palette(2)[0].astype(np.float32) * 0.5).round()
    assert np.array_equal(out[mask], blend.astype(np.uint8)) and np.array_equal(out[~mask], image[~mask])
    png, jpg = save_picture(pic, tmp_path / "a.png"), save_picture(pic, tmp_path / "b.JPG")
    assert Image.open(png).format == "PNG" and np.array_equal(np.asarray(Image.open(png)), out)  # lossless
    assert Image.open(jpg).format == "JPEG" and Image.open(jpg).size == (80, 60)


def test_image_bytes_decode_by_the_same_rule_as_files(tmp_path):
    from mobilesam.io import decode_image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (10, 20, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    for name in ("rot.jpg", "rot.png"):
        path = tmp_path / name
        img.save(path, exif=exif)
        out = decode_image(path.read_bytes(), name)
        assert out.shape == (20, 10, 3) and out.dtype == np.uint8
        assert np.array_equal(out, load_image(path))
    u16 = tmp_path / "g16.png"
    Image.fromarray(np.array([[1000, 2000], [3000, 5000]], np.uint16)).save(u16)
    assert decode_image(u16.read_bytes())[..., 0].tolist() == [[0, 64], [128, 255]]  # stretched min..max
    with pytest.raises(ImageReadError, match="cannot read image sa_7.jpg"):
        decode_image(b"\0" * 64, "sa_7.jpg")


def test_unreadable_bytes_are_one_error_even_with_ultralytics_patching_pillow():
    """Ultralytics replaces `PIL.Image.open` on import with a version that reaches for the optional `pi_heif` on any
    unidentified image: bytes that are no image still end in `ImageReadError`, whatever was imported first."""
    import subprocess
    import sys

    code = (
        "import ultralytics.utils.patches\n"
        "from mobilesam.io import ImageReadError, decode_image\n"
        "try:\n    decode_image(b'\\0' * 64, 'sa_7.jpg')\n"
        "except ImageReadError as e:\n    print('refused:', e)\n"
    )
    env = {**os.environ, "YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "refused: cannot read image sa_7.jpg" in done.stdout
