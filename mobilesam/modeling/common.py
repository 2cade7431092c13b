"""Small layers shared by the encoders and the decoder, and the derived-state cache for inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ..device import is_tracing

__all__ = ["LayerNorm2d", "MLPBlock", "Conv2dBN", "add_", "derived", "gelu_", "is_tracing"]


def derived(module: nn.Module, name: str, sources: Sequence[Tensor], compute: Callable[[], Tensor]) -> Tensor:
    """Returns `compute()`, memoised on `module` until one of `sources` changes.

    Derived inference state (BatchNorm folded into a conv, gathered attention-bias tables, positional grids) is
    kept in a plain dict outside the module tree, so it is never saved and never stale: the key holds the storage
    pointer and the in-place version counter of every source tensor, so `load_state_dict`, an optimizer step,
    `.to()` or an assigned parameter all invalidate it. With gradients flowing into a source, or while tracing,
    the value is computed afresh each call.
    """
    if is_tracing() or (torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
        return compute()
    key = tuple((s.data_ptr(), s._version, s.dtype, s.device) for s in sources)
    cache = module.__dict__.setdefault("_derived_cache", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        value = compute()
    cache[name] = (key, value)
    return value


def _may_overwrite(x: Tensor) -> bool:
    return not is_tracing() and not (torch.is_grad_enabled() and x.requires_grad)


def gelu_(x: Tensor) -> Tensor:
    """Exact GELU, computed in place when no gradient needs `x` (inference), else out of place.

    At 1024 input, TinyViT's first stage holds 64 MiB activations; on CPU, writing each into freshly allocated
    memory costs as much as the arithmetic (page faults), so inference reuses the buffer.
    """
    return torch.ops.aten.gelu_(x) if _may_overwrite(x) else F.gelu(x)


def add_(x: Tensor, y: Tensor) -> Tensor:
    """`x + y`, written into `x` when no gradient needs it (see `gelu_`)."""
    return x.add_(y) if _may_overwrite(x) and _may_overwrite(y) else x + y


class MLPBlock(nn.Module):
    """Two-layer MLP (`lin1`, activation, `lin2`) as used by SAM's ViT blocks and the two-way transformer."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Conv2dBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (TinyViT's `Conv2d_BN`, keys `c.*` and `bn.*`).

    In eval mode the BatchNorm is folded into the convolution's weight and bias (derived state, see `derived`).
    A 1x1 convolution runs as a matrix product over the channels-last view, which is cheaper than a convolution
    on CPU. Inputs are NCHW tensors; channels-last memory is kept throughout and is the fast path.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)
        self.pointwise = kernel_size == 1 and stride == 1 and groups == 1 and padding == 0

    def train(self, mode: bool = True) -> Conv2dBN:
        # BatchNorm updates its running statistics without bumping their version counters, so the folded
        # weights are dropped at every train/eval switch rather than trusted to the version check.
        self.__dict__.pop("_derived_cache", None)
        return super().train(mode)

    def folded(self) -> tuple[Tensor, Tensor]:
        """The conv weight and bias with the BatchNorm's running statistics folded in."""

        def fold() -> Tensor:
            bn = self.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = self.c.weight * scale[:, None, None, None]
            return torch.cat([weight.flatten(), bn.bias - bn.running_mean * scale])

        bn = self.bn
        flat = derived(self, "fold", (self.c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var), fold)
        n = self.c.weight.numel()
        return flat[:n].view_as(self.c.weight), flat[n:]

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.pointwise:
            # BCHW -> BHWC: a free view when x is channels-last, so the 1x1 conv is one GEMM.
            y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
            return y.permute(0, 3, 1, 2)
        c = self.c
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.bn(self._conv(x, self.c.weight, None))
        weight, bias = self.folded()
        return self._conv(x, weight, bias)
