"""`OpenVinoPredictor`: `encoder.xml` and `decoder.xml` (OpenVINO IR) on OpenVINO's CPU plugin, with the facade's
prompt API.

Imports numpy, Pillow and `openvino` only: no PyTorch, nothing from the model code. img_size, max_points and the
files' precision are read from each model's `rt_info` (section `mobilesam`, written by `mobilesam export`) and
checked against the input shapes. fp32 files are compiled with INFERENCE_PRECISION_HINT=f32 (the CPU plugin's
default is bf16 on CPUs with AMX / AVX512-BF16, ~1e-2 error), fp16 files with f16 where the CPU plugin lists FP16
among its capabilities (AVX512-FP16 / AMX-FP16) and f32 elsewhere (asked for f16 there, the plugin silently picks
bf16, which fails the fp16 check); `inference_precision` says what the compiled models run in. Pre- and
post-processing are `mobilesam.deploy.runtime.StaticPredictor`'s, shared with every static-shape runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..transforms import ResizeLongestSide
from .interface import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, static_shapes
from .runtime import ExportFileError, StaticPredictor, check_inputs, check_pair, check_role, loading, require_export

RT_SECTION = "mobilesam"  # rt_info section holding role, img_size, max_points, precision and the export's stamp
HINTS = {"fp32": "f32", "fp16": "f16"}  # file precision -> INFERENCE_PRECISION_HINT


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise ImportError("OpenVinoPredictor needs openvino: pip install 'mobilesam[openvino]'") from e
    return openvino


_CORE: list[Any] = []


def core() -> Any:
    """The process's one `openvino.Core`, made on first use and kept until exit.

    OpenVINO's CPU plugin (2026.4) installs its own signal stack (`sigaltstack`) on the calling thread when a
    Core's plugin starts, and puts back the stack it found when that plugin is destroyed. Two Cores destroyed in
    the order they were made leave the thread on the first plugin's stack, which is unmapped by then: the next
    signal a Python handler catches (SIGCHLD from a subprocess, once PyTorch's DataLoader has set its handler)
    kills the process with SIGSEGV. One Core that lives as long as the process never leaves a dangling stack.
    """
    if not _CORE:
        _CORE.append(_openvino().Core())
    return _CORE[0]


def _read(ov_core: Any, path: str | os.PathLike, role: str) -> tuple[Any, dict[str, str]]:
    """The IR model and its `mobilesam` rt_info, after checking the files exist and the model's role."""
    path = Path(path)
    for p in (path, path.with_suffix(".bin")):
        require_export(p, "openvino")
    with loading(path, "OpenVINO"):
        model = ov_core.read_model(str(path))
    keys = ("role", "img_size", "max_points", "precision")
    if not all(model.has_rt_info([RT_SECTION, k]) for k in keys):
        raise ExportFileError(
            f"{path} has no `{RT_SECTION}` rt_info: it was not written by `mobilesam export --format openvino`; "
            "export it again"
        )
    meta = {k: model.get_rt_info([RT_SECTION, k]).astype(str) for k in keys}
    check_role(path, role, meta["role"], {"encoder": "encoder", "decoder": "decoder"})
    if meta["precision"] not in HINTS:
        raise ExportFileError(f"{path} is of precision {meta['precision']!r}, which this predictor does not know")
    return model, meta


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Input name -> shape, -1 for a dynamic dimension."""
    dims = {next(iter(p.get_names())): p.get_partial_shape() for p in model.inputs}
    return {name: tuple(d.get_length() if d.is_static else -1 for d in shape) for name, shape in dims.items()}


class OpenVinoPredictor(StaticPredictor):
    """Segments prompted objects with `encoder.xml` and `decoder.xml`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder (`encoder.xml` or `encoder_fp16.xml`; its `.bin` next to it).
        decoder_path: the decoder of the same export (`decoder.xml` or `decoder_fp16.xml`).
        threads: the CPU plugin's inference threads (`INFERENCE_NUM_THREADS`; None: OpenVINO's default).

    Attributes:
        precision: the files' precision ("fp32" or "fp16"), from their rt_info.
        inference_precision: what the CPU plugin computes in ("f32", "f16"), as the compiled encoder reports it.
    """

    def __init__(
        self, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, threads: int | None = None
    ) -> None:
        ov, shared = _openvino(), core()
        enc, enc_meta = _read(shared, encoder_path, "encoder")
        dec, dec_meta = _read(shared, decoder_path, "decoder")
        pair = ("img_size", "precision")
        self.export = check_pair(
            encoder_path, decoder_path, {k: enc_meta[k] for k in pair}, {k: dec_meta[k] for k in pair}
        )
        self.img_size, self.max_points = int(enc_meta["img_size"]), int(dec_meta["max_points"])
        # The encoder's batch is free in today's exports (fixed at 1 in earlier ones: those embed one at a time)
        (name,) = ENCODER_INPUTS
        self.batched = _shapes(enc).get(name, ())[:1] == (-1,)
        check_inputs(encoder_path, "encoder", _shapes(enc), self.img_size, self.max_points, -1 if self.batched else 1)
        check_inputs(decoder_path, "decoder", _shapes(dec), self.img_size, self.max_points)
        self._encoder_model = enc
        self.precision = enc_meta["precision"]
        hint = HINTS[self.precision]
        if hint == "f16" and "FP16" not in shared.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "f32"  # asked for f16, the plugin of a CPU without it picks bf16, which fails the fp16 check
        key = ov.properties.hint.inference_precision()
        config: dict[str, Any] = {key: hint}
        if threads:
            config[ov.properties.inference_num_threads()] = int(threads)
        self._encoder = shared.compile_model(self._static_encoder(1), "CPU", config)
        if self._encoder.get_property(key).get_type_name() != hint:  # the plugin chose otherwise: insist on f32
            config[key] = "f32"
            self._encoder = shared.compile_model(self._static_encoder(1), "CPU", config)
        self._decoder = shared.compile_model(dec, "CPU", config)
        self._config = config
        self.inference_precision = self._encoder.get_property(key).get_type_name()
        self._enc_requests = {1: self._encoder.create_infer_request()}
        self._dec_request = self._decoder.create_infer_request()
        self.transform = ResizeLongestSide(self.img_size)

    def _static_encoder(self, batch: int) -> Any:
        """The encoder with its batch fixed (the CPU plugin runs a static shape fastest)."""
        if not self.batched:
            return self._encoder_model
        model = self._encoder_model.clone()
        inputs, _ = static_shapes("encoder", self.img_size, self.max_points, batch)
        model.reshape({name: list(shape) for name, shape in inputs.items()})
        return model

    def _encode(self, image: np.ndarray) -> np.ndarray:
        return self._encode_batch(image)

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        """Bx3xSxS in one inference, compiled once per batch size met; earlier exports (batch 1) one by one."""
        n = len(images)
        if n > 1 and not self.batched:
            return super()._encode_batch(images)
        if n not in self._enc_requests:
            compiled = core().compile_model(self._static_encoder(n), "CPU", self._config)
            self._enc_requests[n] = compiled.create_infer_request()
        out = self._enc_requests[n].infer(dict(zip(ENCODER_INPUTS, [images])))  # copies the outputs
        return out[ENCODER_OUTPUTS[0]]

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._dec_request.infer(dict(zip(DECODER_INPUTS, (features, coords, labels))))
        low_res, iou = (out[name] for name in DECODER_OUTPUTS)
        return low_res, iou
