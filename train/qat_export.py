"""The end of a quantization-aware run: the fake-quantized graph converted to int8 and lowered to one XNNPACK
program (`encoder_int8.pte`), the float student's `decoder.pte` beside it, both checked by the export guard and
listed with their sha256 in the run's sidecar."""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mobilesam.checkpoint import sidecar_path
from mobilesam.files import sha256_path, write_json

log = logging.getLogger(__name__)


@torch.no_grad()
def lower_int8(module: Any, max_points: int) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """(.pte bytes, delegation report) of the int8 encoder (the module's `qat` graph converted) and of the float
    decoder (the module's SAM): file name -> both. Refuses a heavy op left outside XNNPACK."""
    from mobilesam.deploy.executorch import PTE_INT8_NAMES, PTE_NAMES, delegation_report, lower, portable_heavy_ops
    from mobilesam.deploy.lowering import DECOMPOSITIONS, INT8_DECOMPOSITIONS, replace_layer_norms
    from mobilesam.deploy.static_decoder import StaticDecoder, example_inputs

    sam = module.sam.eval()
    s = sam.img_size
    ex = example_inputs(s, max_points)
    consts = {"img_size": s, "max_points": max_points, "num_masks": sam.mask_decoder.num_mask_tokens}
    jobs = [
        (PTE_INT8_NAMES["encoder"], module.qat.converted(), ex["encoder"], "encoder_int8", INT8_DECOMPOSITIONS),
        (
            PTE_NAMES["decoder"],
            replace_layer_norms(StaticDecoder(sam, max_points).eval()),  # XNNPACK has no layer norm
            ex["decoder"],
            "decoder",
            DECOMPOSITIONS,
        ),
    ]
    out = {}
    for name, graph, args, role, table in jobs:
        data, info = lower(graph, args, {**consts, "graph": role}, False, table)
        left = portable_heavy_ops(info)
        if left:
            raise RuntimeError(f"{name}: these ops were left to portable kernels instead of XNNPACK: {left}")
        out[name] = (data, delegation_report(info))
    return out


def fake_quant_sam(module: Any) -> torch.nn.Module:
    """The PyTorch model the int8 program stands for: the float SAM with the trained fake-quantized encoder (observers
    off) in place of its own. The export check compares the program with it, as every export is compared with the
    PyTorch model it was exported from; QAT moves the encoder away from the float student on purpose (towards the
    teacher), which is the benchmark's business (`python -m benchmarks quantization --qat`), not the check's."""
    sam = copy.deepcopy(module.sam).eval()
    module.qat.observe(False)
    module.qat.img_size = sam.image_encoder.img_size  # what SamPredictor reads
    sam.image_encoder = module.qat
    return sam.eval()


def write_int8_program(module: Any, out_dir: Path, weights: Path) -> dict[str, Path]:
    """Writes `encoder_int8.pte` and `decoder.pte` into `out_dir` after the export guard passed them (int8
    tolerances, against `fake_quant_sam(module)`), and adds them to the sidecar of `weights`
    (`mobile_sam.json`: their sha256 under `files`, the check's figures and the delegation under `executorch`).

    Returns:
        Role ("executorch_encoder_int8", "executorch_decoder") -> path.

    Raises:
        guard.ExportCheckError: the int8 program disagrees with the fake-quantized PyTorch graph beyond the int8
            tolerances (nothing is written then).
    """
    from mobilesam.deploy.et_runtime import ExecuTorchPredictor
    from mobilesam.deploy.guard import check_export, reference
    from mobilesam.deploy.interface import describe

    max_points = int(module.hparams.get("max_points", 8))
    programs = lower_int8(module, max_points)
    (enc_name, _), (dec_name, _) = programs.items()
    with tempfile.TemporaryDirectory(prefix=".qat.", dir=out_dir) as tmp:
        staged = {}
        for name, (data, _) in programs.items():
            staged[name] = Path(tmp) / name
            staged[name].write_bytes(data)
        label = f"{enc_name} + {dec_name}"
        predictor = ExecuTorchPredictor(staged[enc_name], staged[dec_name])
        figures = check_export(label, predictor, reference(fake_quant_sam(module)), "int8")
        del predictor
        written = {name: out_dir / name for name in staged}
        for name, path in staged.items():
            os.replace(path, written[name])
    meta_path = sidecar_path(weights)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["executorch"] = {
        **describe(max_points),
        "backend": "XNNPACK",
        "int8": True,
        "quantization": "quantization-aware training (torchao pt2e, XNNPACK quantizer), decoder float",
        "precision": "int8",
        "delegation": {name: report for name, (_, report) in programs.items()},
        "check": {f"{label} vs the fake-quantized PyTorch graph": figures},
    }
    meta["files"] = {**meta.get("files", {}), **{name: sha256_path(p) for name, p in written.items()}}
    write_json(meta_path, meta)
    log.info("wrote %s (%s)", ", ".join(map(str, written.values())), figures)
    return {"executorch_encoder_int8": written[enc_name], "executorch_decoder": written[dec_name]}
