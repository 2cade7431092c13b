"""`ExecuTorchPredictor`: `encoder.pte` and `decoder.pte` under ExecuTorch's runtime, with the facade's prompt API.

Imports numpy, Pillow and ExecuTorch's Python runtime (which brings PyTorch's tensors with it); nothing from the
model code. Pre- and post-processing are `mobilesam.deploy.runtime.StaticPredictor`'s, shared with every static-shape
runtime.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..transforms import ResizeLongestSide
from .runtime import StaticPredictor, check_pair, require_export


def _program(path: str | os.PathLike) -> Any:
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        raise ImportError("ExecuTorchPredictor needs executorch: pip install 'mobilesam[executorch]'") from e
    return Runtime.get().load_program(require_export(path, "executorch"))


def _constant(program: Any, name: str, path: str | os.PathLike) -> int:
    if name not in program.method_names:
        raise ValueError(f"{path} has no `{name}` method: it was not written by `mobilesam export`; export it again")
    return int(program.load_method(name).execute([])[0])


class ExecuTorchPredictor(StaticPredictor):
    """Segments prompted objects with `encoder.pte` and `decoder.pte`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder program (`encoder.pte` or `encoder_int8.pte`).
        decoder_path: the decoder program (`decoder.pte` or `decoder_int8.pte`).
        threads: XNNPACK's thread pool size (None: ExecuTorch's default; the pool is shared by the process).
    """

    def __init__(
        self, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, threads: int | None = None
    ) -> None:
        import torch  # ExecuTorch's Python runtime takes and returns torch tensors

        self._torch = torch
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        enc, dec = _program(encoder_path), _program(decoder_path)
        self.img_size = _constant(enc, "img_size", encoder_path)
        check_pair(
            encoder_path,
            decoder_path,
            {"img_size": self.img_size},
            {"img_size": _constant(dec, "img_size", decoder_path)},
        )
        self.max_points = _constant(dec, "max_points", decoder_path)
        self.encoder = enc.load_method("forward")
        self.decoder = dec.load_method("forward")
        self.transform = ResizeLongestSide(self.img_size)

    def _encode(self, image: np.ndarray) -> np.ndarray:
        (features,) = self.encoder.execute([self._torch.from_numpy(image)])
        return features.numpy()

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self._torch.from_numpy
        low_res, iou = self.decoder.execute([t(features), t(coords), t(labels)])
        return low_res.numpy(), iou.numpy()
