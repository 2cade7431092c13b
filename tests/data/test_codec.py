"""Embedding encodings and the stored-JPEG codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.codec import (
    EMB_KEY,
    Member,
    ShardFormatError,
    decode_embedding,
    decode_jpeg,
    encode_embedding,
    encode_jpeg,
    npy_view,
)


def _embedding(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels with very different ranges, as real SAM embeddings have
    return torch.randn(256, 16, 16, generator=g) * torch.logspace(-2, 1, 256)[:, None, None]


def test_float16_round_trip_is_exact_and_a_view() -> None:
    e = _embedding()
    members = encode_embedding(e, "float16")
    out = decode_embedding(members, "float16", 16)
    assert out.dtype == np.float16 and out.shape == (256, 16, 16)
    assert np.array_equal(out, e.half().numpy())
    assert not out.flags.owndata and not out.flags.writeable  # a view of the member bytes, no copy
    assert np.shares_memory(out, np.frombuffer(members[EMB_KEY], np.uint8))


def test_int8_encoding_error_is_bounded_and_small() -> None:
    e = _embedding()
    members = encode_embedding(e, "int8")
    assert sum(len(v) for v in members.values()) < 0.51 * len(encode_embedding(e, "float16")[EMB_KEY])
    out = torch.from_numpy(decode_embedding(members, "int8", 16).to_array()).float()
    err = (out - e).abs()
    # per channel the error is at most half a step (scale / 2) plus float16 rounding of the product
    step = e.abs().amax(dim=(1, 2)) / 127
    assert bool((err <= step[:, None, None] * 0.5 + e.abs() * 2e-3 + 1e-6).all())
    rel = float(err.max() / e.abs().max())  # DESIGN.md's relative error
    assert 1e-4 < rel < 1 / 254 + 2e-3


def test_wrong_embedding_shape_or_encoding_is_refused() -> None:
    members = encode_embedding(_embedding(), "float16")
    with pytest.raises(ShardFormatError, match="manifest declares float16"):
        decode_embedding(members, "float16", 64)
    with pytest.raises(ShardFormatError, match="manifest declares int8"):
        decode_embedding(members, "int8", 16)


def test_member_reads_into_a_buffer(tmp_path) -> None:
    e = encode_embedding(_embedding(), "float16")[EMB_KEY]
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100 + e)
    lazy = decode_embedding({EMB_KEY: Member(str(path), 100, len(e))}, "float16", 16)
    dest = np.empty((256, 16, 16), np.float16)
    lazy.copy_to(dest)
    assert np.array_equal(dest, npy_view(e))


def test_stored_jpeg_decodes_to_the_pixels_pillow_decodes() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    jpg = encode_jpeg(img, 95)
    ours = decode_jpeg(jpg)
    assert ours.shape == (3, 60, 90) and ours.dtype == torch.uint8
    import io

    pil = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    # both are libjpeg-turbo; the teacher and the loader use decode_jpeg, so only closeness to Pillow matters here
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 2
