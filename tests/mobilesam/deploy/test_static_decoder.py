"""The static decoder's factored attention (`StaticFactored`) against SAM's decoder and the unfactored static path."""

from __future__ import annotations

import pytest
import torch

from mobilesam import build_sam
from mobilesam.deploy.static_decoder import StaticDecoder, example_inputs
from tests.helpers import perturb_keeping_input_, rel_err


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return perturb_keeping_input_(build_sam("vit_t", img_size=128), seed=2).eval()


def _slots(points: list, labels: list, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords, slots = torch.zeros(1, p, 2), torch.full((1, p), -1.0)
    coords[0, : len(points)], slots[0, : len(labels)] = torch.tensor(points), torch.tensor(labels)
    return coords, slots


CASES = [  # one point; two points and a box (labels 2, 3 the corners)
    ([[40.0, 30.0]], [1.0]),
    ([[10.0, 90.0], [70.0, 20.0], [5.0, 8.0], [120.0, 100.0]], [1.0, 0.0, 2.0, 3.0]),
]


@torch.no_grad()
@pytest.mark.parametrize("points, labels", CASES)
def test_factored_static_decoder_is_the_unfactored_one_and_sams(sam, points, labels):
    """Factored, with the final attention on the output tokens alone, the static decoder gives the numbers of the
    plain batched-matmul path (`factored=False`, LiteRT's) and of SAM's decoder on the unpadded prompt (with SAM's
    padding point where there is no box), the padding slots masked."""
    emb = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(1))
    dec = StaticDecoder(sam, max_points=6)

    masks, iou = dec(emb, *_slots(points, labels, 6))
    old_masks, old_iou = StaticDecoder(sam, max_points=6, factored=False)(emb, *_slots(points, labels, 6))
    assert masks.shape == (1, 4, 32, 32) and iou.shape == (1, 4)
    assert rel_err(masks, old_masks) < 1e-5 and rel_err(iou, old_iou) < 1e-5
    # SAM's decoder on the prompt itself
    pe = sam.prompt_encoder
    pts, labs = torch.tensor([points]), torch.tensor([labels])
    if 2.0 not in labels:  # SAM's own padding point, appended without a box
        pts, labs = torch.cat([pts, torch.zeros(1, 1, 2)], 1), torch.cat([labs, -torch.ones(1, 1)], 1)
    sparse = pe._embed_points(pts, labs, pad=False)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 8, 8)
    want, want_iou = sam.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
    assert rel_err(masks, want) < 1e-5 and rel_err(iou, want_iou) < 1e-5


def test_the_exported_graph_projects_the_image_tokens_only_to_upscale(sam):
    """What makes the factored graph fast: no linear layer reads the g*g image tokens but the upscaling's first
    (the plain path projected them ten times: q, k, v or out of every image attention)."""
    dec = StaticDecoder(sam, max_points=4).eval()
    args = example_inputs(128, 4)["decoder"]
    graph = torch.export.export(dec, args).graph
    g2 = (128 // 16) ** 2
    linears = [n for n in graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]
    image_rows = [n for n in linears if n.args[0].meta["val"].shape.numel() // n.args[0].meta["val"].shape[-1] == g2]
    assert len(linears) > 20 and len(image_rows) == 1
    plain = torch.export.export(StaticDecoder(sam, max_points=4, factored=False).eval(), args).graph
    linears = [n for n in plain.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]
    assert sum(n.args[0].meta["val"].shape.numel() // n.args[0].meta["val"].shape[-1] == g2 for n in linears) == 11
