"""`CoreMLPredictor`: `encoder.mlpackage` and `decoder.mlpackage` under Core ML (coremltools' `MLModel.predict`),
with the facade's prompt API. Core ML runs on macOS (and iOS) only (`formats.FORMATS["coreml"].platforms`).

Imports numpy, Pillow and coremltools only: nothing from PyTorch or the model code (coremltools imports PyTorch
itself when it is installed, for its converters; prediction does not use it). img_size, max_points and each
package's role are read from the packages' user-defined metadata (`mobilesam export --format coreml` writes them)
and checked against their input shapes. Pre- and post-processing are `mobilesam.deploy.runtime.StaticPredictor`'s,
shared with every static-shape runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..transforms import ResizeLongestSide
from .formats import FORMATS
from .interface import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, NAMES
from .runtime import ExportFileError, StaticPredictor, check_inputs, check_pair, loading

COREML = FORMATS["coreml"]
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def _coremltools() -> Any:
    try:
        import coremltools
    except ImportError as e:
        raise ImportError("CoreMLPredictor needs coremltools: pip install 'mobilesam[coreml]'") from e
    return coremltools


def _load(ct: Any, path: str | os.PathLike, compute_units: str) -> Any:
    """The package as a `ct.models.MLModel`: compiled for `compute_units` on macOS, its spec only elsewhere."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"{path} does not exist (a Core ML package is a folder); write it with "
            "`mobilesam export CHECKPOINT --out DIR --format coreml`"
        )
    with loading(path, "Core ML"):
        return ct.models.MLModel(
            str(path), compute_units=ct.ComputeUnit[compute_units], skip_model_load=not COREML.runs_here()
        )


def _shapes(features: Any) -> dict[str, tuple[int, ...]]:
    return {f.name: tuple(int(n) for n in f.type.multiArrayType.shape) for f in features}


def _describe(mlmodel: Any, path: str | os.PathLike, role: str) -> tuple[int, int, dict[str, tuple[int, ...]]]:
    """(img_size, max_points, input name -> shape) from the metadata, after checking the role and the names."""
    spec = mlmodel.get_spec()
    meta = dict(mlmodel.user_defined_metadata)
    inputs, outputs = _shapes(spec.description.input), _shapes(spec.description.output)
    names = NAMES[role]
    if meta.get("graph") != role or (tuple(inputs), tuple(outputs)) != names:
        what = f"a Core ML {meta['graph']}" if meta.get("graph") in ("encoder", "decoder") else "a Core ML model"
        raise ExportFileError(
            f"{path} is {what} with inputs {list(inputs)} and outputs {list(outputs)}, not the {role} written by "
            f"`mobilesam export --format coreml` (inputs {list(names[0])}, outputs {list(names[1])}); export it again"
        )
    try:
        return int(meta["img_size"]), int(meta["max_points"]), inputs
    except (KeyError, ValueError) as e:
        raise ExportFileError(
            f"{path} has no img_size / max_points metadata: it was not written by `mobilesam export --format "
            "coreml`; export it again"
        ) from e


class CoreMLPredictor(StaticPredictor):
    """Segments prompted objects with `encoder.mlpackage` and `decoder.mlpackage`, like `SAM(...).predict`.

    Args:
        encoder_path: the encoder package (`encoder.mlpackage` or `encoder_fp16.mlpackage`).
        decoder_path: the decoder package of the same export.
        threads: accepted for the runtimes' common signature; Core ML schedules its own threads (ignored).
        compute_units: where Core ML may run the models: "ALL" (its choice: CPU, GPU, Neural Engine),
            "CPU_ONLY", "CPU_AND_GPU" or "CPU_AND_NE" (`coremltools.ComputeUnit`).

    Raises:
        FileNotFoundError: a package is missing.
        ValueError: a package is not this export's encoder / decoder, or the two were exported at different
            img_size.
        RuntimeError: not on macOS (Core ML cannot run the models here), or Core ML could not load a package.
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        threads: int | None = None,
        compute_units: str = "ALL",
    ) -> None:
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units={compute_units!r}: choose from {', '.join(COMPUTE_UNITS)}")
        ct = _coremltools()
        self.encoder = _load(ct, encoder_path, compute_units)
        self.decoder = _load(ct, decoder_path, compute_units)
        self.img_size, _, image = _describe(self.encoder, encoder_path, "encoder")
        decoder_size, self.max_points, inputs = _describe(self.decoder, decoder_path, "decoder")
        self.export = check_pair(encoder_path, decoder_path, {"img_size": self.img_size}, {"img_size": decoder_size})
        check_inputs(encoder_path, "encoder", image, self.img_size, self.max_points)
        check_inputs(decoder_path, "decoder", inputs, self.img_size, self.max_points)
        self.transform = ResizeLongestSide(self.img_size)
        self._ready(encoder_path, decoder_path)

    def _ready(self, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> None:
        """Raises unless Core ML loaded both packages (called once the packages' descriptions are checked)."""
        COREML.require_platform(encoder_path, decoder_path)
        for model, path in ((self.encoder, encoder_path), (self.decoder, decoder_path)):
            if model.__proxy__ is None:  # coremltools keeps Core ML's error instead of raising it
                raise RuntimeError(f"Core ML could not load {path}: {model._framework_error}")

    def _encode(self, image: np.ndarray) -> np.ndarray:
        out = self.encoder.predict(dict(zip(ENCODER_INPUTS, [image])))
        return np.array(out[ENCODER_OUTPUTS[0]], np.float32)

    def _decode(self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.decoder.predict(dict(zip(DECODER_INPUTS, (features, coords, labels))))
        low_res, iou = (np.array(out[name], np.float32) for name in DECODER_OUTPUTS)
        return low_res, iou
