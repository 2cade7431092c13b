"""`ExecuTorchPredictor`: `encoder.pte` and `decoder.pte` under ExecuTorch's runtime, with the facade's prompt API.

Imports numpy, Pillow and ExecuTorch's Python runtime (which brings PyTorch's tensors with it); nothing from the
model code. Pre- and post-processing are `mobilesam.deploy.runtime.StaticPredictor`'s, shared with every static-shape
runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..transforms import ResizeLongestSide
from .interface import DECODER_INPUTS, ENCODER_INPUTS
from .runtime import ExportFileError, StaticPredictor, check_pair, check_role, loading, require_export


def _program(path: str | os.PathLike) -> Any:
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        raise ImportError("ExecuTorchPredictor needs executorch: pip install 'mobilesam[executorch]'") from e
    require_export(path, "executorch")
    with loading(path, "ExecuTorch"):
        return Runtime.get().load_program(Path(path))


def _inputs(program: Any, path: str | os.PathLike) -> int:
    """How many inputs the program's `forward` takes (1: an encoder, 3: a decoder)."""
    if "forward" not in program.method_names:
        raise ExportFileError(f"{path} has no `forward` method: it is not a graph `mobilesam export` wrote")
    return int(program.metadata("forward").num_inputs())


def _constant(program: Any, name: str, path: str | os.PathLike) -> int:
    if name not in program.method_names:
        raise ExportFileError(
            f"{path} has no `{name}` method: it was not written by `mobilesam export`; export it again"
        )
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
        roles = {"encoder": len(ENCODER_INPUTS), "decoder": len(DECODER_INPUTS)}  # a program's inputs are unnamed
        check_role(encoder_path, "encoder", _inputs(enc, encoder_path), roles)
        check_role(decoder_path, "decoder", _inputs(dec, decoder_path), roles)
        self.img_size = _constant(enc, "img_size", encoder_path)
        self.export = check_pair(
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
