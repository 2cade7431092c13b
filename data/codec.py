"""Byte formats of a shard sample: the stored JPEG and the embedding encodings (float16, int8 + scales)."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor

from mobilesam.variants import PATCH_SIZE, PROMPT_EMBED_DIM

# torchvision 0.29 marks its JPEG codec deprecated in favour of torchcodec; it is still the fastest decoder here
# (3.5 ms for 1024x683 against 4.3 ms for OpenCV and 6.1 ms for Pillow, one core)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)

EMBED_DIM = PROMPT_EMBED_DIM  # channels of every SAM image embedding
PATCH = PATCH_SIZE  # embedding grid = img_size / PATCH
ENCODINGS: tuple[str, ...] = ("float16", "int8")
# Member names (webdataset extensions) per encoding: int8 stores the codes in emb.npy and per-channel scales beside.
EMB_KEY = "emb.npy"
SCALE_KEY = "emb_scale.npy"


class ShardFormatError(ValueError):
    """A shard sample whose bytes do not match what the manifest declares."""


def encode_jpeg(rgb: np.ndarray | Image.Image, quality: int) -> bytes:
    """HxWx3 uint8 RGB (array or PIL image) -> JPEG bytes (Pillow, 4:2:0 chroma subsampling, no EXIF)."""
    buf = io.BytesIO()
    (rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpeg(data: bytes) -> Tensor:
    """JPEG bytes -> 3xHxW uint8 RGB tensor (libjpeg-turbo through torchvision).

    The precompute decodes the stored JPEG with this function before the teacher sees it, and the loader decodes
    it with the same function, so teacher and student get identical pixels.
    """
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return torchvision.io.decode_jpeg(buf, mode=torchvision.io.ImageReadMode.RGB)


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (numpy's format, readable with np.load)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class Member:
    """A member of a shard tar, read only when needed: `read()` gives its bytes, `read_into()` copies a range of
    it straight from the file into a caller's buffer (the embedding goes from the page cache into the batch)."""

    __slots__ = ("path", "offset", "size")

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.path, self.offset, self.size = path, offset, size

    def read(self, start: int = 0, length: int | None = None) -> bytes:
        length = self.size - start if length is None else min(length, self.size - start)
        with open(self.path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), length, self.offset + start)
        if len(data) != length:
            raise ShardFormatError(f"{self.path}: member at byte {self.offset} is truncated")
        return data

    def read_into(self, dest: np.ndarray, start: int) -> None:
        view = memoryview(dest).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            n = os.preadv(f.fileno(), [view], self.offset + start)
        if n != view.nbytes:
            raise ShardFormatError(f"{self.path}: member at byte {self.offset} is truncated")


def as_bytes(value: bytes | Member) -> bytes:
    """Member bytes, whether already read or still in the file."""
    return value.read() if isinstance(value, Member) else value


def npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, payload offset) from the first bytes of a .npy file (at least the whole header)."""
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(buf)
    if fortran or dtype.hasobject:
        raise ShardFormatError(f"unsupported .npy array (fortran order {fortran}, dtype {dtype})")
    return tuple(shape), dtype, buf.tell()


def npy_view(data: bytes) -> np.ndarray:
    """The array in .npy bytes as a read-only view of `data` (no copy of the payload)."""
    shape, dtype, start = npy_header(data)
    count = int(np.prod(shape))
    if len(data) - start != count * dtype.itemsize:
        raise ShardFormatError(
            f".npy payload holds {len(data) - start} bytes but shape {shape} of {dtype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)


class LazyEmbedding:
    """A checked float16 embedding still in its shard file; `copy_to` reads it into its batch slot (one copy)."""

    __slots__ = ("member", "start")

    def __init__(self, member: Member, start: int) -> None:
        self.member, self.start = member, start

    def copy_to(self, dest: np.ndarray) -> None:
        self.member.read_into(dest, self.start)


class Int8Embedding:
    """Checked int8 codes and float16 per-channel scales; `copy_to` decodes code * scale into the batch slot."""

    __slots__ = ("codes", "scale")

    def __init__(self, codes: np.ndarray, scale: np.ndarray) -> None:
        self.codes, self.scale = codes, scale

    def copy_to(self, dest: np.ndarray) -> None:
        # torch: numpy's float16 arithmetic is emulated and ~15x slower
        scale = torch.from_numpy(self.scale.astype(np.float32))[:, None, None]
        torch.mul(
            torch.from_numpy(self.codes.copy() if not self.codes.flags.writeable else self.codes),
            scale,
            out=torch.from_numpy(dest),
        )

    def to_array(self) -> np.ndarray:
        out = np.empty(self.codes.shape, np.float16)
        self.copy_to(out)
        return out


def encode_embedding(embedding: Tensor, encoding: str) -> dict[str, bytes]:
    """One 256xgxg teacher embedding (any float dtype) -> the shard members that store it.

    float16: `emb.npy` float16. int8: `emb.npy` int8 codes and `emb_scale.npy` float16 per-channel scales, with
    x ~= code * scale and scale = max|x_c| / 127 (symmetric, per channel; about half the bytes of float16).
    """
    e = embedding.detach().float().cpu()
    if e.ndim != 3 or e.shape[0] != EMBED_DIM:
        raise ValueError(f"expected a {EMBED_DIM}xgxg embedding, got shape {tuple(e.shape)}")
    if encoding == "float16":
        return {EMB_KEY: npy_bytes(e.half().numpy())}
    if encoding == "int8":
        scale = (e.abs().amax(dim=(1, 2)) / 127.0).half().float().clamp_min(1e-8)  # rounded as stored
        codes = torch.round(e / scale[:, None, None]).clamp_(-127, 127).to(torch.int8)
        return {EMB_KEY: npy_bytes(codes.numpy()), SCALE_KEY: npy_bytes(scale.half().numpy())}
    raise ValueError(f"unknown embedding encoding {encoding!r}; choose one of {ENCODINGS}")


def decode_embedding(
    sample: dict[str, bytes | Member], encoding: str, grid: int
) -> np.ndarray | LazyEmbedding | Int8Embedding:
    """Shard members -> a 256 x grid x grid float16 embedding, checked against the manifest's encoding and grid.

    float16 stays where it is: a view of the member bytes, or a `LazyEmbedding` for a member still in the file.
    int8 gives an `Int8Embedding`, decoded (code * scale) when copied into the batch.

    Raises:
        ShardFormatError: the stored array's dtype or shape is not what `encoding` and `grid` say.
    """
    want = (EMBED_DIM, grid, grid)
    dtype = np.dtype(np.float16 if encoding == "float16" else np.int8)
    value = sample[EMB_KEY]
    head = value.read(0, 4096) if isinstance(value, Member) else value[:4096]
    shape, found, start = npy_header(head)
    size = value.size if isinstance(value, Member) else len(value)
    if found != dtype or shape != want or size - start != dtype.itemsize * int(np.prod(want)):
        raise ShardFormatError(
            f"emb.npy holds {found} {shape} ({size - start} payload bytes), but the manifest declares {encoding} "
            f"{want}; the shards and dataset.json do not belong together (re-run the precompute into a fresh out_dir)"
        )
    if encoding == "float16":
        return LazyEmbedding(value, start) if isinstance(value, Member) else npy_view(value)
    if SCALE_KEY not in sample:
        raise ShardFormatError(f"the manifest declares int8 embeddings but the sample has no {SCALE_KEY}")
    codes = npy_view(as_bytes(value))
    scale = npy_view(as_bytes(sample[SCALE_KEY]))
    if scale.shape != (EMBED_DIM,) or scale.dtype != np.float16:
        raise ShardFormatError(f"{SCALE_KEY} holds {scale.dtype} {scale.shape}, expected float16 ({EMBED_DIM},)")
    return Int8Embedding(codes, scale)
