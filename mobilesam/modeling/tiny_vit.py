"""TinyViT image encoder with SAM's neck: MobileSAM's `vit_t` (5.7M parameters at 1024 input).

Layer names and shapes follow the published MobileSAM checkpoint. Activations stay NCHW-shaped in channels-last
memory from the first conv to the neck, so the switches between token and image layouts are free views.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from torch import Tensor, nn

from .common import Conv2dBN, add_, derived, gelu_


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: Bx3xHxW image -> Bx`embed_dim`x(H/4)x(W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq[2](gelu_(self.seq[0](x)))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = gelu_(self.conv1(x))
        y = gelu_(self.conv2(y))
        y = self.drop_path(self.conv3(y))
        return gelu_(add_(y, x))


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv (stride 2, or 1 for the last stage), 1x1 conv: BxCxHxW -> Bx`out_dim`xH'xW'."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = gelu_(self.conv1(x))
        x = gelu_(self.conv2(x))
        return self.conv3(x)


class Mlp(nn.Module):
    """LayerNorm then a two-layer GELU MLP (TinyViT's order: the norm comes first)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(gelu_(self.fc1(self.norm(x))))


def _window_offsets(window: int) -> Tensor:
    """WxW... index table: entry [i, j] numbers the offset (|dy|, |dx|) between tokens i and j of a window.

    Offsets are numbered in order of first appearance, which for a square window is |dy| * window + |dx|.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).abs()  # 2 x N x N
    return delta[0] * window + delta[1]


class Attention(nn.Module):
    """Multi-head self-attention within a window, with a learned bias per head and per (|dy|, |dx|) offset.

    The bias table is gathered into a heads x N x N mask and passed to `scaled_dot_product_attention`.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, attn_ratio: float = 1.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.d))
        self.proj = nn.Linear(num_heads * self.d, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", _window_offsets(window), persistent=False)

    def bias(self) -> Tensor:
        """The 1 x heads x N x N attention bias of one window (4-D: SDPA's fused CPU kernel needs it so)."""
        return derived(
            self,
            "bias",
            (self.attention_biases,),
            lambda: self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: BxNxC tokens of B windows -> BxNxC."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        # Per head the projection holds [q, k, v]; B x N x heads x d -> B x heads x N x d
        q, k, v = (t.transpose(1, 2) for t in qkv.split([self.key_dim, self.key_dim, self.d], dim=3))
        bias = self.bias().to(q.dtype)
        if bias.requires_grad and q.device.type == "cpu":
            # PyTorch's fused CPU kernel cannot return the bias gradient and falls back to a slower "math" path
            x = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + bias, dim=-1) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """BxHxWxC -> (B*nWindows)x(window*window)xC, zero-padding H and W up to multiples of `window`."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(x: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition`: (B*nWindows)x(window*window)xC -> BxHxWxC without the padding."""
    hp, wp = padded
    c = x.shape[-1]
    x = x.view(-1, hp // window, wp // window, window, window, c).transpose(2, 3).reshape(-1, hp, wp, c)
    return x[:, : size[0], : size[1]]


class TinyViTBlock(nn.Module):
    """Window attention, a 3x3 depthwise conv, then an MLP; residuals around attention and MLP."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: float, local_conv_size: int
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: BxCxHxW (channels-last) -> BxCxHxW (channels-last)."""
        h, w = x.shape[2:]
        t = x.permute(0, 2, 3, 1)  # BCHW -> BHWC, a view
        windows, padded = window_partition(t, self.window_size)
        attn = window_unpartition(self.attn(windows), self.window_size, padded, (h, w))
        t = t + self.drop_path(attn)
        t = self.local_conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        t = add_(self.drop_path(self.mlp(t)), t)
        return t.permute(0, 3, 1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then a PatchMerging downsample."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: nn.Module | None, expand: float):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand, drop_path[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then an optional PatchMerging downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: nn.Module | None,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, drop_path[i], local_conv_size) for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT backbone with SAM's neck: Bx3x`img_size`x`img_size` -> Bx256x(`img_size`/16)x(`img_size`/16).

    Four stages at strides 4, 8, 16, 16 (the last merge keeps the resolution). The ImageNet classifier
    (`norm_head`, `head`) is kept so the official checkpoint loads strictly; it is never run.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if img_size % 64:
            raise ValueError(f"img_size={img_size} must be a multiple of 64 (e.g. 1024, 512, 256)")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        n = len(depths)
        self.layers = nn.ModuleList()
        for i in range(n):
            dp = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            # The last merge keeps the resolution so that the output stride is 16.
            down = PatchMerging(embed_dims[i], embed_dims[i + 1], 1 if i == n - 2 else 2) if i < n - 1 else None
            if i == 0:
                layer = ConvLayer(embed_dims[0], depths[0], dp, down, mbconv_expand_ratio)
            else:
                layer = BasicLayer(
                    embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio, dp, down, local_conv_size
                )
            self.layers.append(layer)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: Bx3xHxW normalised image, H = W = img_size -> Bx256x(H/16)x(W/16) embedding."""
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()
