"""The layer-norm rewrite XNNPACK needs is the ExecuTorch writer's alone: `StaticDecoder` keeps SAM's layer norms
(MVN in OpenVINO, `layer_norm` in Core ML, LiteRT's statistics ops); the rewritten copy computes the same."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mobilesam.deploy.lowering import LinearLayerNorm, replace_layer_norms
from mobilesam.deploy.static_decoder import StaticDecoder, example_inputs
from tests.helpers import rel_err


def test_static_decoder_keeps_layer_norms_and_the_executorch_form_keeps_its_numbers(model):
    dec = StaticDecoder(model, 8).eval()
    assert not any(isinstance(m, LinearLayerNorm) for m in dec.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in dec.modules()) == 10
    lowered = replace_layer_norms(copy.deepcopy(dec))  # what `executorch.export_executorch` lowers
    assert sum(isinstance(m, LinearLayerNorm) for m in lowered.modules()) == 10
    assert not any(isinstance(m, nn.LayerNorm) for m in lowered.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in dec.modules()) == 10  # the original is untouched
    args = example_inputs(256, 8)["decoder"]
    with torch.no_grad():
        for a, b in zip(lowered(*args), dec(*args), strict=True):
            assert rel_err(a, b) < 1e-5
