"""Folded relative positions (queries and keys with extra channels, no N x N bias) equal the materialised bias."""

from __future__ import annotations

import pytest
import torch

from mobilesam import build_sam
from mobilesam.modeling.image_encoder import Attention, Block, ImageEncoderViT, folded_rel_pos_qk, set_rel_pos_folding
from mobilesam.variants import VIT_SIZES
from tests.helpers import perturb_, rel_err

TOL = 1e-4


def _both(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        folded = set_rel_pos_folding(module, True)(x)
        biased = set_rel_pos_folding(module, False)(x)
    return folded, biased


def test_folded_scores_equal_scaled_scores_plus_bias():
    from mobilesam.modeling.image_encoder import decomposed_rel_pos_bias

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5 * 7, 16, generator=g), torch.randn(2, 3, 5 * 7, 16, generator=g)
    rh, rw = torch.randn(9, 16, generator=g), torch.randn(13, 16, generator=g)
    qf, kf = folded_rel_pos_qk(q, k, rh, rw, (5, 7), 0.25)
    assert qf.shape == kf.shape == (2, 3, 35, 32)  # 16 + 5 + 7 = 28 channels, padded to 32
    ref = 0.25 * q @ k.transpose(-1, -2) + decomposed_rel_pos_bias(q, rh, rw, (5, 7))
    assert rel_err(qf @ kf.transpose(-1, -2), ref) < 1e-5


def _block(variant: str, grid: int, window: int, seed: int) -> Block:
    dim, _, heads, _ = VIT_SIZES[variant]
    torch.manual_seed(seed)
    return perturb_(Block(dim, heads, 4.0, True, True, window, (grid, grid)), seed=seed).eval()


@pytest.mark.parametrize(
    "variant,window", [("vit_b", 14), ("vit_l", 14), ("vit_h", 14), ("vit_h", 0)], ids=lambda v: str(v)
)
def test_one_block_at_1024_folded_equals_bias(variant, window):
    # 1024 / 16 = 64 tokens a side; windows of 14 need padding. The global case is ViT-H's (16 x 4096 x 4096 bias);
    # vit_b/vit_l global blocks are covered at reduced size below (their 1024 cost would double this file's time).
    block = _block(variant, 64, window, seed=1)
    x = torch.randn(1, 64, 64, block.norm1.normalized_shape[0], generator=torch.Generator().manual_seed(2))
    folded, biased = _both(block, x)
    # compare the attention's contribution, not the residual that dominates the block's output
    assert rel_err(folded - x, biased - x) < TOL


def _short_encoder(variant: str, size: int) -> ImageEncoderViT:
    """The variant's widths and heads, one windowed block then one global block (the whole depth costs time only)."""
    dim, _, heads, _ = VIT_SIZES[variant]
    return ImageEncoderViT(size, embed_dim=dim, depth=2, num_heads=heads, global_attn_indexes=(1,))


@pytest.mark.parametrize("variant,size", [("vit_b", 320), ("vit_b", 512), ("vit_l", 256), ("vit_h", 192)])
def test_encoder_folded_equals_bias(variant, size):
    torch.manual_seed(0)
    # vit_b 320: the whole encoder, 20 tokens a side (windows padded); others: windowed + global at the variant's width
    encoder = build_sam(variant, img_size=size).image_encoder if size == 320 else _short_encoder(variant, size)
    encoder = perturb_(encoder, seed=3).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    folded, biased = _both(encoder, x)
    assert folded.shape == (1, 256, size // 16, size // 16)
    assert rel_err(folded, biased) < TOL


def test_default_chooses_by_device():
    attns = [m for m in build_sam("vit_b", img_size=128).modules() if isinstance(m, Attention)]
    assert len(attns) == 12 and all(m.fold_rel_pos is None for m in attns)
