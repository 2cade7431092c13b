"""Int8 for XNNPACK: the one quantizer (what runs in int8, what stays float), shared by post-training and
quantization-aware paths, so that a QAT graph is fake-quantized exactly the way the runtime will quantize it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def xnnpack_quantizer(qat: bool = False, keep_float: Sequence[str] = ()) -> Any:
    """XNNPACK's static int8 quantizer: per-channel symmetric weights, per-tensor activations.

    Args:
        qat: fake-quantize for quantization-aware training (`prepare_qat_pt2e`) instead of observing for
            post-training calibration (`prepare_pt2e`).
        keep_float: module names (as in `named_modules()`) left in float.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    if keep_float:
        from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

        kept = [get_module_name_filter(name) for name in keep_float]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in kept))
    return quantizer
