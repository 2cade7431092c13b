"""`StaticDecoder`: SAM's prompt encoder and mask decoder with static shapes, for ExecuTorch and other runtimes.

One object per call, a fixed number P of prompt points (a box is its two corners, labels 2 and 3; unused slots
are padding, label -1), no mask input; out come the four low-resolution masks and their IoUs. The predictor
upsamples (`mobilesam.deploy.runtime.upscale_masks`). Padding slots are masked out of every attention, so the
result does not depend on P: it equals SAM's decoder on the unpadded prompt, including the "not a point" token
SAM appends when there is no box (the graph appends it itself, masked when a box is present). The attentions
between the prompt tokens and the g*g image tokens are factored around the image tokens as the many-prompt path
factors them (`StaticFactored`, `mobilesam.many_prompts`): no projection of the image tokens, a few large batched
matmuls instead of many thin ones; and the final attention runs for the output tokens only (the IoU and mask
tokens: nothing reads the prompt tokens after it). LiteRT's writer asks for the unfactored graph (`factored=False`),
which its runtime runs faster (docs/speed.md). Every op is a linear layer, a batched matmul, a softmax, an
elementwise op or a view, so XNNPACK takes the whole graph:
labels become one-hot weights by arithmetic (relu(1 - |label - i|)) instead of comparisons, and the constants
(positional grid, folded transposed-convolution weights) are computed once here. Its layer norms are
`nn.LayerNorm`s: the ExecuTorch writer alone rewrites them as linear layers for XNNPACK
(`lowering.replace_layer_norms`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling import Sam
from ..modeling.transformer import Attend, Attention
from .interface import static_shapes
from .lowering import attention

DEFAULT_MAX_POINTS = 8  # points per object the exported decoder holds (a box takes two of them)
LABELS = (-1, 0, 1, 2, 3)  # padding, negative, positive, box top-left, box bottom-right


def check_max_points(max_points: int) -> None:
    """Refuses a decoder with fewer than 2 prompt slots (a box takes two)."""
    if max_points < 2:
        raise ValueError(f"max_points={max_points} must be at least 2 (a box is two points)")


def example_inputs(img_size: int, max_points: int = DEFAULT_MAX_POINTS) -> dict[str, tuple[Tensor, ...]]:
    """Inputs to export each static graph with: a normalised padded image; one positive point, the rest padding."""
    check_max_points(max_points)
    (encoder, _), (decoder, _) = (static_shapes(role, img_size, max_points) for role in ("encoder", "decoder"))
    coords = torch.zeros(decoder["point_coords"])
    coords[0, 0] = torch.tensor([img_size / 3, img_size / 5])
    labels = torch.full(decoder["point_labels"], -1.0)
    labels[0, 0] = 1.0
    return {
        "encoder": (torch.randn(encoder["image"]),),
        "decoder": (torch.randn(decoder["image_embeddings"]), coords, labels),
    }


def matmul_kernel(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """The decoder's attention kernel as batched matmuls and a last-dim softmax (`lowering.attention`)."""
    return attention(q, k, v, bias, q.shape[-1] ** -0.5)


class StaticFactored(Attend):
    """`many_prompts.Factored`'s image attentions for one prompt set, in ops every static runtime lowers.

    The prompt tokens' self-attention is the plain path's (batched matmuls, `token_bias` masking the padding
    slots). Against the 1xNxC image tokens (N = g*g), the T prompt tokens are projected back to C channels
    through the image side's projection, head by head (HxTxC), so the image tokens are never projected: each
    attention is two 1x(H*T)xCxN matmuls and a softmax (see `many_prompts` for the algebra). Where `Factored`
    selects, works in place or broadcasts 4-D products, this writes views and 3-D `bmm`s, and adds the padding
    mask to the image-to-token scores (padding tokens are keys there).
    """

    @staticmethod
    def _sizes(attn: Attention, q: Tensor) -> tuple[int, int, int, int]:
        """(T tokens, C channels, H heads, d per head) of an attention on 1xTxC tokens."""
        _, t, c = q.shape
        return t, c, attn.num_heads, attn.internal_dim // attn.num_heads

    def token_to_image(self, attn: Attention, q: Tensor, keys: Tensor, k: Tensor) -> Tensor:
        """`attn(q, k, keys)` for 1xTxC tokens q, 1xNxC image tokens `keys` and `k` = keys + key_pe -> 1xTxC."""
        t, c, nh, d = self._sizes(attn, q)
        qh = attn.q_proj(q).view(t, nh, d).transpose(0, 1)  # H x T x d
        # q.(Wk x + bk) = (Wk^T q).x + q.bk: the last term is constant over the keys, so the softmax drops it
        qt = torch.bmm(qh, attn.k_proj.weight.view(nh, d, c) * d**-0.5).view(1, nh * t, c)
        probs = torch.softmax(torch.bmm(qt, k.transpose(1, 2)), dim=-1)  # 1 x HT x N
        # softmax(s) (Wv x + bv) = (softmax(s) x) Wv^T + bv: attention rows sum to 1
        mixed = torch.bmm(probs, keys).view(nh, t, c)
        out = torch.bmm(mixed, attn.v_proj.weight.view(nh, d, c).transpose(1, 2)) + attn.v_proj.bias.view(nh, 1, d)
        return attn.out_proj(out.transpose(0, 1).reshape(1, t, nh * d))  # H x T x d -> T x (H d)

    def image_to_token(self, attn: Attention, keys: Tensor, k: Tensor, q: Tensor, v: Tensor) -> Tensor:
        """`keys + attn(k, q, v)`: the 1xNxC image tokens (`k` with their encoding) attend to the 1xTxC tokens."""
        t, c, nh, d = self._sizes(attn, q)
        n = k.shape[1]
        scale = d**-0.5
        kh = attn.k_proj(q).view(t, nh, d).transpose(0, 1)  # H x T x d
        # (Wq x + bq).kh = x.(Wq^T kh) + bq.kh: the image tokens meet the keys projected back to C channels
        m = torch.bmm(kh, attn.q_proj.weight.view(nh, d, c) * scale).view(1, nh * t, c)
        bias = torch.bmm(kh, attn.q_proj.bias.view(nh, d, 1) * scale).view(1, 1, nh, t)
        if self.token_bias is not None:
            bias = bias + self.token_bias.view(1, 1, 1, t)
        # Softmax over the T tokens of each head: the last axis of 1 x N x H x T
        probs = torch.softmax(torch.bmm(k, m.transpose(1, 2)).view(1, n, nh, t) + bias, dim=-1)
        # out_proj(A V) = A (V Wo^T) + bo, with bo / H folded into each head's rows (each head's weights sum to 1)
        vh = attn.v_proj(v).view(t, nh, d).transpose(0, 1)  # H x T x d
        # (times a float: dividing by the int H leaves a scalar constant outside XNNPACK)
        u = torch.bmm(vh, attn.out_proj.weight.view(c, nh, d).permute(1, 2, 0)) + attn.out_proj.bias * (1.0 / nh)
        return keys + torch.bmm(probs.view(1, n, nh * t), u.view(1, nh * t, c))


class StaticDecoder(nn.Module):
    """image_embeddings 1x256xgxg, point_coords 1xPx2, point_labels 1xP -> (1x4x4gx4g logits, 1x4 IoUs).

    Args:
        sam: the model whose prompt encoder and mask decoder are used (copied; the model is not changed).
        max_points: P, the prompt slots per object.
        factored: the image attentions factored (`StaticFactored`; faster in ExecuTorch and OpenVINO); False keeps
            them as projections of the image tokens and batched matmuls per head (faster in LiteRT, whose
            XNNPACK delegate runs the factored graph's matmuls slower than its projections). The same numbers.

    Inputs:
        image_embeddings: 1x256xgxg float32 (g = img_size / 16), the encoder's output.
        point_coords: 1xPx2 float32 (x, y) in pixels of the resized image (long side = img_size).
        point_labels: 1xP float32: 1 positive, 0 negative, 2 / 3 a box's top-left / bottom-right corner,
            -1 padding (an unused slot). Do not add SAM's own padding point: the graph does.

    Outputs:
        low_res_masks: 1x4x(4g)x(4g) logits of the padded img_size frame (mask 0 single-mask, 1-3 multimask).
        iou_predictions: 1x4.
    """

    def __init__(self, sam: Sam, max_points: int = DEFAULT_MAX_POINTS, factored: bool = True) -> None:
        super().__init__()
        self.factored = factored
        pe = sam.prompt_encoder
        dec = copy.deepcopy(sam.mask_decoder).eval()
        dec.requires_grad_(False)
        self.transformer = dec.transformer
        self.hypernetworks = dec.output_hypernetworks_mlps
        self.iou_head = dec.iou_prediction_head
        self.num_mask_tokens = dec.num_mask_tokens
        h, w = pe.input_image_size
        with torch.no_grad():
            gauss = pe.pe_layer.positional_encoding_gaussian_matrix  # 2 x 128
            # (2 * ((xy + 0.5) / (W, H)) - 1) @ G = xy @ A + c, folded into one linear layer
            scale = torch.tensor([2.0 / w, 2.0 / h])
            self.register_buffer("pe_weight", (gauss * scale[:, None]).T.contiguous().clone())
            self.register_buffer("pe_bias", ((0.5 * scale - 1.0) @ gauss).clone())
            # Row i: the embedding added for label LABELS[i] (padding takes not_a_point instead of its PE)
            tables = [pe.not_a_point_embed.weight] + [t.weight for t in pe.point_embeddings]
            self.register_buffer("label_table", torch.cat(tables).T.contiguous().clone())  # C x 5
            self.register_buffer("label_values", torch.tensor(LABELS, dtype=torch.float32))
            # SAM's own padding token (appended without a box): the not-a-point embedding, no positional term
            self.register_buffer("pad_token", pe.not_a_point_embed.weight[None].clone())  # 1 x 1 x C
            # The image positional encoding in token layout, 1 x (g*g) x C: a 4-D constant is mis-laid out by XNNPACK
            self.register_buffer("key_pe", pe.get_dense_pe().flatten(2).transpose(1, 2).contiguous().clone())
            self.register_buffer("no_mask", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).clone())
            tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])
            self.register_buffer("output_tokens", tokens[None].clone())  # 1 x 5 x C
            self.register_buffer("zeros_out", torch.zeros(1, 1, tokens.shape[0]))
            self.register_buffer("ones_p", torch.ones(1, max_points))
            conv1, norm, _, conv2, _ = dec.output_upscaling
            self.c1, self.c2 = conv1.out_channels, conv2.out_channels
            # A 2x2 stride-2 transposed conv is a linear layer to 4 x C_out features, ordered (a, b, C_out)
            self.up1 = nn.Linear(conv1.in_channels, 4 * self.c1)
            self.up1.weight.copy_(conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1).T)
            self.up1.bias.copy_(conv1.bias.repeat(4))
            self.up2 = nn.Linear(self.c1, 4 * self.c2)
            self.up2.weight.copy_(conv2.weight.permute(0, 2, 3, 1).reshape(self.c1, -1).T)
            self.up2.bias.copy_(conv2.bias.repeat(4))
        self.up_norm = nn.LayerNorm(self.c1, eps=norm.eps)  # LayerNorm2d, applied on tokens (channels last)
        self.up_norm.load_state_dict(norm.state_dict())
        self.requires_grad_(False)

    def embed_points(self, point_coords: Tensor, point_labels: Tensor) -> tuple[Tensor, Tensor]:
        """1xPx2 coordinates and 1xP labels -> 1x(P+1)xC sparse embeddings (P slots, SAM's padding token) and the
        1x1x1x(5+P+1) attention bias over all tokens: 0 for a token that takes part, -1e4 (exp = 0) for one that
        does not (the padding slots; SAM's padding token when there is a box)."""
        freq = 2 * math.pi * F.linear(point_coords, self.pe_weight, self.pe_bias)
        pos = torch.cat([torch.sin(freq), torch.cos(freq)], dim=-1)
        # One-hot over LABELS by arithmetic: exactly 1 where the label matches, 0 elsewhere
        onehot = torch.relu(1.0 - torch.abs(point_labels[..., None] - self.label_values))  # 1 x P x 5
        is_pad = onehot[..., :1]
        # pos * 0 + not_a_point for a padding slot (its value is masked anyway), pos + table row otherwise
        sparse = torch.cat([pos * (1.0 - is_pad) + F.linear(onehot, self.label_table), self.pad_token], dim=1)
        # slices, not selects (XNNPACK has no select): label 2 (a box corner) is column 3
        has_box = torch.clamp(F.linear(onehot[..., 3:4].transpose(1, 2), self.ones_p), 0.0, 1.0)  # 1 x 1 x 1
        absent = torch.cat([self.zeros_out, is_pad.transpose(1, 2), has_box], dim=2)  # 1 x 1 x (5 + P + 1)
        return sparse, (absent * -1e4).view(1, 1, 1, -1)

    def upscale_and_project(self, tokens: Tensor, hyper_in: Tensor, g: int) -> Tensor:
        """1x(g*g)xC image tokens, 1xMx(C/8) hypernetwork outputs -> 1xMx(4g)x(4g) (`MaskDecoder`'s method)."""
        m = hyper_in.shape[1]
        y = F.gelu(self.up_norm(self.up1(tokens).view(1, -1, self.c1)))
        z = F.gelu(self.up2(y)).view(1, -1, self.c2)  # rows ordered (i, j, a, b, a2, b2)
        masks = torch.bmm(hyper_in, z.transpose(1, 2))  # 1 x M x (g*g*16)
        # pixel (4i + 2a + a2, 4j + 2b + b2), in two permutes of at most five axes
        masks = masks.view(m * g, g, 2, 2, 4).permute(0, 2, 1, 3, 4)  # (m i) a j b (a2 b2)
        masks = masks.reshape(m * g * 2, g * 2, 2, 2).permute(0, 2, 1, 3)  # (m i a) a2 (j b) b2
        return masks.reshape(1, m, 4 * g, 4 * g)

    def two_way(self, image_embedding: Tensor, tokens: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """`TwoWayTransformer.run_tokens` with `key_pe` as the image positional encoding, the padding tokens masked
        wherever they are keys (`bias`, 1x1x1xT) and the image attentions factored (`StaticFactored`).

        Returns the 1x5xC output tokens (IoU, masks) after the final attention, which runs for them alone, and the
        1x(g*g)xC image tokens (unfactored: every token, as `run_tokens`)."""
        keys = image_embedding.flatten(2).transpose(1, 2)  # BCHW -> B(HW)C
        if not self.factored:
            return self.transformer.run_tokens(tokens, keys, self.key_pe, Attend(matmul_kernel, token_bias=bias))
        attend = StaticFactored(matmul_kernel, token_bias=bias)
        queries = tokens
        for layer in self.transformer.layers:
            queries, keys = layer(queries, keys, tokens, self.key_pe, attend)
        # Slices, not selects: the output tokens and their encoding (their own embeddings)
        n = self.output_tokens.shape[1]
        out, pe = queries[:, :n], tokens[:, :n]
        k = attend.image_keys(keys, self.key_pe)
        attn = attend.token_to_image(self.transformer.final_attn_token_to_image, out + pe, keys, k)
        return self.transformer.norm_final_attn(out + attn), keys

    def forward(self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor) -> tuple[Tensor, Tensor]:
        sparse, bias = self.embed_points(point_coords, point_labels)
        tokens = torch.cat([self.output_tokens, sparse], dim=1)
        g = image_embeddings.shape[-1]
        hs, src = self.two_way(image_embeddings + self.no_mask, tokens, bias)
        # Slices, not selects (XNNPACK has no select): 1x1xC per token
        hyper_in = torch.cat([mlp(hs[:, 1 + i : 2 + i]) for i, mlp in enumerate(self.hypernetworks)], dim=1)
        masks = self.upscale_and_project(src, hyper_in, g)
        return masks, self.iou_head(hs[:, :1]).view(1, -1)
