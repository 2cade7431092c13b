"""SAM's two-way transformer: prompt tokens and image tokens attend to each other, by one of several attention paths.

The block and its loop are written once, here. How each attention runs is the one thing the ways of running the
decoder differ in, so it is a parameter (`Attend`), as timm's attention has one forward with a fused and a plain
kernel: the reference path (PyTorch's fused attention), the static padded path of the exported decoders
(`deploy.static_decoder`: batched matmuls, padding prompt tokens masked) and the factored many-prompt path
(`many_prompts`: the image attentions factored around one shared embedding). The state-dict keys are SAM's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock

# (q, k, v, bias) -> softmax(q k^T / sqrt(d) + bias) v for BxHxNqxd, BxHxNkxd, BxHxNkxd; bias broadcasts to
# BxHxNqxNk (or None)
Kernel = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def fused_kernel(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """PyTorch's fused scaled-dot-product attention (the reference path)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # B x heads x N x d

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, kernel: Kernel = fused_kernel
    ) -> Tensor:
        """q: BxNqxC, k and v: BxNkxC -> BxNqxC; `bias` is added to the scores (broadcast to BxHxNqxNk)."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = kernel(q, k, v, bias)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class Attend:
    """How a two-way block runs its attentions; this class is the plain path, each `Attention` called with `kernel`.

    Args:
        kernel: the attention kernel (`fused_kernel`; the static decoder's batched matmuls).
        token_bias: 1x1x1xT added to the scores wherever the T prompt tokens are the keys (-1e4 on a padding
            token masks it out), or None.

    A path that computes the image attentions another way overrides `image_keys`, `token_to_image` and
    `image_to_token` (`many_prompts.Factored`).
    """

    def __init__(self, kernel: Kernel = fused_kernel, token_bias: Tensor | None = None) -> None:
        self.kernel = kernel
        self.token_bias = token_bias

    def tokens(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Self-attention of the BxTxC prompt tokens."""
        return attn(q, k, v, self.token_bias, self.kernel)

    def image_keys(self, keys: Tensor, key_pe: Tensor) -> Tensor:
        """The image tokens' keys as `token_to_image` and `image_to_token` take them: keys + key_pe."""
        return keys + key_pe

    def token_to_image(self, attn: Attention, q: Tensor, keys: Tensor, k: Tensor) -> Tensor:
        """`attn(q, k, keys)`: BxTxC prompt tokens attend to the BxNxC image tokens (`k` from `image_keys`)."""
        return attn(q, k, keys, None, self.kernel)

    def image_to_token(self, attn: Attention, keys: Tensor, k: Tensor, q: Tensor, v: Tensor) -> Tensor:
        """`keys + attn(k, q, v)`: the image tokens attend to the prompt tokens (BxTxC q, v), residual included."""
        return keys + attn(k, q, v, self.token_bias, self.kernel)


PLAIN = Attend()


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, then image-to-token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, attend: Attend = PLAIN
    ) -> tuple[Tensor, Tensor]:
        """BxTxC prompt tokens and their encoding, BxNxC image tokens (1xNxC where `attend` shares them) and
        their encoding -> the updated prompt and image tokens."""
        # Self-attention of the prompt tokens (the first layer has no positional term, nor a residual)
        if self.skip_first_layer_pe:
            queries = attend.tokens(self.self_attn, queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + attend.tokens(self.self_attn, q, q, queries)
        queries = self.norm1(queries)

        # Tokens attend to the image
        k = attend.image_keys(keys, key_pe)
        attn = attend.token_to_image(self.cross_attn_token_to_image, queries + query_pe, keys, k)
        queries = self.norm2(queries + attn)

        # Token MLP
        queries = self.norm3(queries + self.mlp(queries))

        # The image attends to the tokens
        keys = self.norm4(attend.image_to_token(self.cross_attn_image_to_token, keys, k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks and a final token-to-image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate, skip_first_layer_pe=i == 0
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Runs the transformer.

        Args:
            image_embedding: BxCxHxW image tokens.
            image_pe: BxCxHxW (or 1xCxHxW) positional encoding of the image tokens.
            point_embedding: BxNxC prompt tokens.

        Returns:
            The BxNxC processed prompt tokens and the Bx(H*W)xC processed image tokens.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # BCHW -> B(HW)C
        key_pe = image_pe.flatten(2).transpose(1, 2)
        return self.run_tokens(point_embedding, keys, key_pe)

    def run_tokens(
        self, point_embedding: Tensor, keys: Tensor, key_pe: Tensor, attend: Attend = PLAIN
    ) -> tuple[Tensor, Tensor]:
        """`forward` on tokens: BxTxC prompt tokens, BxNxC image tokens (1xNxC where `attend` shares them) and their
        1xNxC positional encoding, with the attentions run by `attend` -> (BxTxC, BxNxC) as `forward`."""
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, attend)
        k = attend.image_keys(keys, key_pe)
        attn = attend.token_to_image(self.final_attn_token_to_image, queries + point_embedding, keys, k)
        return self.norm_final_attn(queries + attn), keys
