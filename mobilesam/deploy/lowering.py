"""An export-only copy of the image encoder whose every heavy op maps onto an XNNPACK kernel, same numbers.

XNNPACK (ExecuTorch's CPU backend) delegates a convolution or linear layer only when its weight is a constant,
has no layer-norm kernel, no 4-D attention-mask SDPA pattern, no `split_with_sizes` and no gather. Our eager
model computes its derived state (BatchNorm folded into convs, the gathered attention-bias table) from the
parameters at trace time, so a plain `torch.export` leaves those convolutions and the bias gather on portable
kernels. `xnnpack_encoder` returns a deep copy in which that derived state is materialised as constants and
layer norms are written as linear layers (mean and variance as a product with a 1/C vector); the model itself,
its inference path and its state-dict keys are untouched. `DECOMPOSITIONS` rewrites the remaining ops
(attention as batched matmuls and a last-dim softmax, splits as slices) during `run_decompositions`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ..modeling.common import Conv2dBN
from ..modeling.tiny_vit import Attention as WindowAttention
from ..modeling.tiny_vit import TinyViT

aten = torch.ops.aten


class LinearLayerNorm(nn.Module):
    """LayerNorm over the last axis with the mean and variance as linear layers (a dot product with 1/C).

    Same function as `nn.LayerNorm` (the sums are ordered differently: ~1e-7 relative difference).
    """

    def __init__(self, weight: Tensor, bias: Tensor, eps: float) -> None:
        super().__init__()
        c = weight.numel()
        self.register_buffer("average", torch.full((1, c), 1.0 / c, dtype=weight.dtype))
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        d = x - F.linear(x, self.average)
        return d * torch.rsqrt(F.linear(d * d, self.average) + self.eps) * self.weight + self.bias


class LinearLayerNorm2d(LinearLayerNorm):
    """`LinearLayerNorm` over the channels of a BxCxHxW tensor (timm's `LayerNorm2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # BCHW -> BHWC -> BCHW


def linear_layer_norm(norm: nn.LayerNorm | LayerNorm2d) -> LinearLayerNorm:
    """The XNNPACK-friendly replacement of a `nn.LayerNorm` or `LayerNorm2d` (same weights)."""
    cls = LinearLayerNorm2d if isinstance(norm, LayerNorm2d) else LinearLayerNorm
    return cls(norm.weight, norm.bias, norm.eps)


def folded_conv(m: Conv2dBN) -> nn.Conv2d:
    """`Conv2dBN` in eval mode as one `nn.Conv2d` whose weight and bias hold the folded BatchNorm."""
    weight, bias = m.folded()
    c = m.c
    conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups)
    conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return conv


class StaticBiasAttention(nn.Module):
    """TinyViT's window attention with its gathered bias table as a constant, as matmuls and a softmax."""

    def __init__(self, attn: WindowAttention) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.d, self.scale = attn.num_heads, attn.key_dim, attn.d, attn.scale
        self.norm = linear_layer_norm(attn.norm)
        self.qkv, self.proj = attn.qkv, attn.proj
        self.register_buffer("bias", attn.bias().detach().clone())  # 1 x heads x N x N

    def forward(self, x: Tensor) -> Tensor:
        """x: BxNxC tokens of B windows -> BxNxC."""
        b, n, _ = x.shape
        h, kd = self.num_heads, self.key_dim
        qkv = self.qkv(self.norm(x)).view(b, n, h, -1)
        # Slices rather than split (XNNPACK has no split); B x N x heads x d -> B x heads x N x d
        q = qkv[..., :kd].transpose(1, 2)
        k = qkv[..., kd : 2 * kd].transpose(1, 2)
        v = qkv[..., 2 * kd :].transpose(1, 2)
        return self.proj(attention(q, k, v, self.bias, self.scale).transpose(1, 2).reshape(b, n, -1))


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) v over ...xLxE, ...xSxE, ...xSxEv (mask broadcast to ...xLxS): 3-D bmm."""
    lead, (n_q, e), n_k = q.shape[:-2], q.shape[-2:], k.shape[-2]
    s = torch.bmm((q * scale).reshape(-1, n_q, e), k.reshape(-1, n_k, e).transpose(1, 2))
    if mask is not None:
        s = (s.view(*lead, n_q, n_k) + mask).view(-1, n_q, n_k)
    out = torch.bmm(torch.softmax(s, dim=-1), v.reshape(-1, n_k, v.shape[-1]))
    return out.view(*lead, n_q, v.shape[-1])


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):  # noqa: ANN001, ANN202
    if is_causal or dropout_p:
        raise NotImplementedError("only non-causal attention without dropout is lowered")
    return attention(q, k, v, attn_mask, q.shape[-1] ** -0.5 if scale is None else scale)


def _split_with_sizes(x, sizes, dim=0):  # noqa: ANN001, ANN202
    out, start = [], 0
    for n in sizes:
        out.append(x.narrow(dim, start, n))
        start += n
    return out


def _constant_pad_nd(x, pad, value=0.0):  # noqa: ANN001, ANN202
    """Zero-padding at the end of axes as a concatenation: XNNPACK refuses to build its int8 pad node for the
    window padding ("Failed to create StaticConstantPad node"), and concatenates in any precision."""
    for i in range(len(pad) // 2):
        dim, before, after = x.ndim - 1 - i, pad[2 * i], pad[2 * i + 1]
        if before < 0 or after < 0:
            return aten.constant_pad_nd.default(x, pad, value)  # a crop: left as it is
        parts = []
        for n in (before, after):
            shape = list(x.shape)
            shape[dim] = n
            parts.append(torch.full(shape, value, dtype=x.dtype, device=x.device) if n else None)
        x = torch.cat([t for t in (parts[0], x, parts[1]) if t is not None], dim=dim) if before or after else x
    return x


def _pad(x, pad, mode="constant", value=None):  # noqa: ANN001, ANN202
    if mode != "constant":
        return aten.pad.default(x, pad, mode, value)
    return _constant_pad_nd(x, pad, 0.0 if value is None else value)


# Applied by `run_decompositions` on top of the default table (attention, splits); int8 programs also pad by
# concatenation (XNNPACK pads floats itself; the zeros of a concatenation are made outside it, a memset each)
DECOMPOSITIONS = {
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.split_with_sizes.default: _split_with_sizes,
}
INT8_DECOMPOSITIONS = {**DECOMPOSITIONS, aten.constant_pad_nd.default: _constant_pad_nd, aten.pad.default: _pad}


def replace_layer_norms(module: nn.Module) -> nn.Module:
    """Replaces every `nn.LayerNorm` / `LayerNorm2d` under `module` (in place) by its `LinearLayerNorm`."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.LayerNorm, LayerNorm2d)):
            setattr(module, name, linear_layer_norm(child))
        else:
            replace_layer_norms(child)
    return module


def _swap(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, Conv2dBN):
            setattr(module, name, folded_conv(child))
        elif isinstance(child, WindowAttention):
            setattr(module, name, StaticBiasAttention(child))
        elif isinstance(child, (nn.LayerNorm, LayerNorm2d)):
            setattr(module, name, linear_layer_norm(child))
        else:
            _swap(child)


@torch.no_grad()
def xnnpack_encoder(encoder: nn.Module) -> nn.Module:
    """A deep eval-mode copy of an image encoder with BN folded, bias tables constant and layer norms linear.

    Args:
        encoder: `TinyViT` (vit_t) or SAM's `ImageEncoderViT`; the original is not modified.

    Returns:
        The copy: Bx3xSxS normalised image -> Bx256x(S/16)x(S/16), numerically the same function.
    """
    enc = copy.deepcopy(encoder).eval()
    enc.requires_grad_(False)
    _swap(enc)
    if isinstance(enc, TinyViT):  # the ImageNet head is never run: keep it out of the exported program
        enc.norm_head, enc.head = nn.Identity(), nn.Identity()
    return enc
