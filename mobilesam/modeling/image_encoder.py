"""SAM's ViT image encoder (`vit_b`, `vit_l`, `vit_h`): windowed and global attention with decomposed
relative-position bias, then the 256-channel neck."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import LayerNorm2d, MLPBlock
from .tiny_vit import window_partition, window_unpartition


def rel_pos_table(size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis: `size` x `size` x C.

    `rel_pos` holds one embedding per offset, (2*size-1) x C, offset -size+1 first.
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"rel_pos has {rel_pos.shape[0]} rows but an axis of {size} tokens needs {2 * size - 1}: the checkpoint "
            "was made for another img_size"
        )
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + size - 1]


def decomposed_rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]) -> Tensor:
    """The additive attention bias of MViTv2's decomposed relative positions.

    Args:
        q: Bxheads x N x C unscaled queries, N = H*W tokens in row-major order.
        rel_pos_h, rel_pos_w: (2H-1) x C and (2W-1) x C embeddings.
        size: (H, W).

    Returns:
        Bxheads x N x N bias, `bias[i, j] = q_i . Rh[h_i - h_j] + q_i . Rw[w_i - w_j]`.
    """
    h, w = size
    rh = rel_pos_table(h, rel_pos_h).to(q.dtype)
    rw = rel_pos_table(w, rel_pos_w).to(q.dtype)
    lead = q.shape[:-2]
    r_q = q.reshape(*lead, h, w, q.shape[-1])
    rel_h = torch.einsum("...hwc,hkc->...hwk", r_q, rh)
    rel_w = torch.einsum("...hwc,wkc->...hwk", r_q, rw)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # ... x H x W x kH x kW
    return bias.reshape(*lead, h * w, h * w)


def folded_rel_pos_qk(
    q: Tensor, k: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int], scale: float
) -> tuple[Tensor, Tensor]:
    """Queries and keys whose plain dot product is SAM's scaled score plus its decomposed relative-position bias.

    `q'_i . k'_j = scale * q_i . k_j + q_i . Rh[h_i - h_j] + q_i . Rw[w_i - w_j]`, with
    `q' = [scale * q, q . Rh[h_i - kh] for every key row kh, q . Rw[w_i - kw] for every key column kw]` and
    `k' = [k, one-hot(h_j), one-hot(w_j)]`, zero-padded to a multiple of 8 channels (fused kernels' alignment).
    Attention then needs no N x N bias: `scaled_dot_product_attention(q', k', v, scale=1)`.

    Args:
        q, k: Bxheads x N x C unscaled queries and keys, N = H*W tokens in row-major order.
        rel_pos_h, rel_pos_w: (2H-1) x C and (2W-1) x C embeddings.
        size: (H, W).
        scale: the softmax scale of the plain scores (head_dim ** -0.5).

    Returns:
        q', k': Bxheads x N x C', C' = C + H + W rounded up to a multiple of 8.
    """
    h, w = size
    rh = rel_pos_table(h, rel_pos_h).to(q.dtype)
    rw = rel_pos_table(w, rel_pos_w).to(q.dtype)
    lead, c = q.shape[:-2], q.shape[-1]
    r_q = q.reshape(*lead, h, w, c)
    rel_h = torch.einsum("...hwc,hkc->...hwk", r_q, rh).reshape(*lead, h * w, h)
    rel_w = torch.einsum("...hwc,wkc->...hwk", r_q, rw).reshape(*lead, h * w, w)
    pad = -(c + h + w) % 8
    q_parts = [q * scale, rel_h, rel_w] + ([q.new_zeros(*lead, h * w, pad)] if pad else [])
    # the key side's extra channels are the same for every batch and head: one-hot key row and column
    rows = torch.arange(h, device=q.device).repeat_interleave(w)
    cols = torch.arange(w, device=q.device).repeat(h)
    onehot = torch.cat(
        [F.one_hot(rows, h), F.one_hot(cols, w), torch.zeros(h * w, pad, dtype=torch.long, device=q.device)], 1
    ).to(k.dtype)
    return torch.cat(q_parts, -1), torch.cat([k, onehot.expand(*lead, h * w, -1)], -1)


FOLD_MIN_TOKENS = 1024  # the default rule folds attention over this many tokens or more (all of it on CUDA)


class Attention(nn.Module):
    """Multi-head attention over an HxW grid of tokens, with optional decomposed relative-position bias.

    `fold_rel_pos` (a plain attribute) folds the relative positions into the queries and keys (`folded_rel_pos_qk`,
    values zero-padded to the same width so the fused kernels, which need equal widths, apply) instead of
    materialising the heads x N x N bias; both give the same attention. None (the default) chooses by the rule:
    folded on CUDA (no N x N bias in memory, no attn_mask to keep the fastest kernels away) and for grids of at
    least FOLD_MIN_TOKENS tokens (global blocks); on CPU, windowed blocks (14 x 14 = 196 tokens) keep the bias, whose
    few-KiB table the fused kernel reads blockwise while the folded dot products are ~40% wider: measured 1.19x
    slower folded there, against 0.70x and 282 vs 2169 MiB peak for a ViT-H global block at 1024
    (`python -m benchmarks attention`).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.fold_rel_pos: bool | None = None
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: BxHxWxC -> BxHxWxC."""
        b, h, w, c = x.shape
        # B x N x (3, heads, d) -> 3 x B x heads x N x d
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if not self.use_rel_pos:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif self.fold_rel_pos or (self.fold_rel_pos is None and (x.is_cuda or h * w >= FOLD_MIN_TOKENS)):
            q, k = folded_rel_pos_qk(q, k, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale)
            d = v.shape[-1]
            v = torch.cat([v, v.new_zeros(*v.shape[:-1], q.shape[-1] - d)], -1)
            x = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :d]
        else:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(b, h, w, c))


def set_rel_pos_folding(module: nn.Module, fold: bool | None) -> nn.Module:
    """Choose folded (True), materialised-bias (False) or by device (None, the default rule: folded on CUDA)
    relative positions in every ViT attention of `module`."""
    for m in module.modules():
        if isinstance(m, Attention):
            m.fold_rel_pos = fold
    return module


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        """x: BxHxWxC -> BxHxWxC."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            windows, padded = window_partition(x, self.window_size)
            ws = self.window_size
            x = self.attn(windows.view(-1, ws, ws, x.shape[-1]))
            x = window_unpartition(x.flatten(1, 2), ws, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: Bx3xHxW -> Bx(H/p)x(W/p)xC."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # BCHW -> BHWC


class ImageEncoderViT(nn.Module):
    """ViTDet-style encoder: Bx3x`img_size`x`img_size` -> Bx256x(`img_size`/16)x(`img_size`/16)."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if img_size % 64:
            raise ValueError(f"img_size={img_size} must be a multiple of 64 (e.g. 1024, 512, 256)")
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                0 if i in global_attn_indexes else window_size,
                (grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: Bx3xHxW normalised image, H = W = img_size -> Bx256x(H/16)x(W/16) embedding."""
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()  # BHWC -> BCHW
