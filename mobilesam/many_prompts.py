"""Decoding many prompts on one image: the mask decoder's image attention factored around the shared embedding.

Segment-everything decodes 64 single-point prompts per batch against one image embedding. The plain decoder
projects the 4096 image tokens once per prompt in every attention (q/k/v/out projections, 4096 x 256 x 128 each).
Attention against a handful of prompt tokens does not need that: with Wk the key projection,
`q . (Wk x + bk) = (Wk^T q) . x + q . bk`, and the last term is constant over the keys, so softmax drops it;
`softmax(s) (Wv x + bv) = (softmax(s) x) Wv^T + bv`, since attention rows sum to 1; and the image-to-token
output `out_proj(A V)` is `A (V Wo^T)`. Each projection of the 4096 tokens becomes a product with the 7 x 8
(tokens x heads) projected prompt tokens, about 4x fewer operations, and the first layer's image side, which does
not depend on the prompt yet, is computed once instead of once per prompt. The IoU head runs before the
expensive upscaling, so prompts whose masks are all filtered out by their predicted IoU are never upscaled.
The results equal `MaskDecoder.forward` up to float rounding (the tests bound it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .modeling import Sam
from .modeling.transformer import Attend, Attention


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """BxTxD -> BxHxTx(D/H)."""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def _scores(rows: Tensor, keys: Tensor, key_pe: Tensor) -> Tensor:
    """`rows @ (keys + key_pe)^T` for BxRxC rows and 1xNxC or BxNxC keys -> BxRxN.

    With one key set per prompt, the positional term is one GEMM shared by all prompts and the sum of keys
    and encoding (a pass over BxNxC) is never formed.
    """
    b, r, c = rows.shape
    if keys.shape[0] == 1:
        return (rows.reshape(b * r, c) @ (keys + key_pe)[0].T).view(b, r, -1)
    scores = (rows.reshape(b * r, c) @ key_pe[0].T).view(b, r, -1)
    return scores.baddbmm_(rows, keys.transpose(1, 2))


class Factored(Attend):
    """The two-way transformer's image attentions factored around the image tokens (1xNxC shared, or BxNxC).

    `image_keys` keeps the image tokens and their encoding apart (their sum is never formed over BxNxC); the
    prompt-token self-attention is the plain path's.
    """

    def image_keys(self, keys: Tensor, key_pe: Tensor) -> Tensor:
        return key_pe

    def token_to_image(self, attn: Attention, q: Tensor, keys: Tensor, k: Tensor) -> Tensor:
        """`attn(q, keys + key_pe, keys)` (`k` is key_pe): T prompt tokens q (BxTxC) attend to the N image tokens.

        The queries are projected back through the key projection (BxHxTxC), so the image tokens are never
        projected; the key bias only shifts each query's scores by a constant and drops out of the softmax; the
        value projection is applied after the attention (its rows sum to 1, so its bias passes through).
        """
        key_pe = k
        b, t, c = q.shape
        nh = attn.num_heads
        d = attn.internal_dim // nh
        qh = _heads(attn.q_proj(q), nh)  # B x H x T x d
        qt = ((qh @ attn.k_proj.weight.view(nh, d, c)) * d**-0.5).reshape(b, nh * t, c)
        probs = _scores(qt, keys, key_pe).softmax(dim=-1)  # B x HT x N
        if keys.shape[0] == 1:
            mixed = probs.reshape(b * nh * t, -1) @ keys[0]
        else:
            mixed = torch.bmm(probs, keys)
        v_weight = attn.v_proj.weight.view(nh, d, c).transpose(1, 2)
        out = mixed.view(b, nh, t, c) @ v_weight + attn.v_proj.bias.view(nh, 1, d)
        return attn.out_proj(out.transpose(1, 2).reshape(b, t, nh * d))

    def image_to_token(self, attn: Attention, keys: Tensor, k: Tensor, q: Tensor, v: Tensor) -> Tensor:
        """`keys + attn(keys + key_pe, q, v)` (`k` is key_pe): the N image tokens attend to T prompt tokens (BxTxC).

        Scores are `q Wq^T K^T + bq K^T`: the image tokens meet the prompt keys projected back to C channels (the
        bias term varies over the keys and is kept). The output `out_proj(A V)` is `A (V Wo^T) + bo`; as each
        head's weights sum to 1, `bo / H` is folded into every row of `V Wo^T`, and the residual is the
        accumulator of that last product. BxNxC keys (decode_embedded's own tensors) are updated in place.
        """
        key_pe = k
        b, t, c = q.shape
        nh = attn.num_heads
        d = attn.internal_dim // nh
        scale = d**-0.5
        kh = _heads(attn.k_proj(q), nh)  # B x H x T x d
        m = ((kh @ attn.q_proj.weight.view(nh, d, c)) * scale).reshape(b, nh * t, c)
        bias = (kh @ attn.q_proj.bias.view(nh, d, 1)).view(b, nh * t, 1) * scale
        vh = _heads(attn.v_proj(v), nh)  # B x H x T x d
        u = vh @ attn.out_proj.weight.view(c, nh, d).permute(1, 2, 0) + attn.out_proj.bias / nh  # B x H x T x C
        # Softmax over the T prompt tokens of each head: dim 2 of B x H x T x N
        probs = _scores(m, keys, key_pe).add_(bias).view(b, nh, t, -1).softmax(dim=2)
        n = probs.shape[-1]
        update = probs.view(b, nh * t, n).transpose(1, 2)
        if keys.shape[0] == b:  # one key set per prompt: the residual accumulates in place (no B x N x C copy)
            return keys.baddbmm_(update, u.reshape(b, nh * t, c))
        return torch.baddbmm(keys.expand(b, n, c), update, u.reshape(b, nh * t, c))


FACTORED = Factored()


@torch.no_grad()
def decode_tokens(model: Sam, features: Tensor, points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Runs the prompt encoder and the two-way transformer for B prompt sets on one image embedding.

    Args:
        model: the SAM model.
        features: 1xCxhxw image embedding (C = 256, h = w = img_size / 16).
        points: BxNx2 point prompts (x, y) in the resized frame's pixels.
        labels: BxN point labels.

    Returns:
        Bx4 predicted IoUs of the 4 masks (mask 0 single-mask, 1..3 multimask), Bx4x(C/8) hypernetwork
        weights of the 4 masks, and the Bx(h*w)xC image tokens the masks are upscaled from.
    """
    sparse, dense = model.prompt_encoder((points, labels), None, None)
    return decode_embedded(model.prompt_encoder, model.mask_decoder, features, sparse, dense)


@torch.no_grad()
def decode_embedded(
    pe: nn.Module, dec: nn.Module, features: Tensor, sparse: Tensor, dense: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`decode_tokens` from prompts already embedded by `pe` (points, boxes; no mask prompt: `dense` is the same
    for every prompt set), with any prompt encoder and mask decoder pair (a teacher's, a student's)."""
    b = sparse.shape[0]
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse], dim=1)
    # Without a mask prompt the dense embedding is the same for every prompt set: keep one copy
    src = (features + dense[:1]).flatten(2).transpose(1, 2).contiguous()  # 1xCxhxw -> 1x(hw)xC
    key_pe = pe.get_dense_pe().flatten(2).transpose(1, 2)

    queries, keys = dec.transformer.run_tokens(tokens, src, key_pe, FACTORED)

    iou = dec.iou_prediction_head(queries[:, 0])
    hyper = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    return iou, hyper, keys.expand(b, -1, -1)


@torch.no_grad()
def upscale(model: Sam, keys: Tensor, hyper: Tensor) -> Tensor:
    """Mask logits from `decode_tokens` outputs: Bx(h*w)xC tokens and BxMx(C/8) weights -> BxMx(4h)x(4w)."""
    h, w = model.prompt_encoder.image_embedding_size
    return model.mask_decoder.upscale_and_project(keys.contiguous(), hyper, h, w)


@torch.no_grad()
def decode_low_res(
    pe: nn.Module, dec: nn.Module, features: Tensor, sparse: Tensor, dense: Tensor
) -> tuple[Tensor, Tensor]:
    """`MaskDecoder.predict_masks`, factored, for B prompt sets on one 1xCxhxw embedding (any prompt encoder and
    mask decoder pair): the four masks' logits Bx4x(4h)x(4w) (0 single-mask, 1-3 multimask) and IoUs Bx4."""
    iou, hyper, keys = decode_embedded(pe, dec, features, sparse, dense)
    h, w = pe.image_embedding_size
    return dec.upscale_and_project(keys.contiguous(), hyper, h, w), iou


def decode(model: Sam, features: Tensor, points: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Multimask logits Bx3x(4h)x(4w) and IoUs Bx3, as `MaskDecoder(..., multimask_output=True)` returns."""
    iou, hyper, keys = decode_tokens(model, features, points, labels)
    return upscale(model, keys, hyper[:, 1:]), iou[:, 1:]


# Prompt sets decoded at once: the per-prompt image tokens (4096 x 256 float32 = 4 MiB per prompt at 1024, a few
# copies alive) and their full-size masks stay bounded: 500 boxes on an 810x1080 photo ~2 GiB peak in all, not 12.6.
# 4 was the fastest of 1, 2, 4, 8, 16 on 1 thread and of 4, 8, 16, 32 on 2 threads (smaller B x 4096 x 256 passes).
CHUNK = 4


@torch.no_grad()
def predict_many(
    model: Sam,
    features: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    multimask_output: bool,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    chunk: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """Boolean masks at the original size for B prompt sets on one image, decoded `chunk` sets at a time.

    The same masks as `SamPredictor.predict_torch` (factored decoder, `decode_embedded`; equal up to float
    rounding), but the per-prompt image tokens exist for one chunk only and each chunk's logits are upscaled and
    thresholded to bool before the next, so no float tensor at full size exists for all B at once.

    Args:
        model: the SAM model.
        features: 1xCxhxw image embedding.
        points: (BxNx2 point coordinates, BxN labels) in the resized frame's pixels, or None.
        boxes: Bx4 XYXY boxes in the resized frame, or None.
        multimask_output: masks 1..3 (three per prompt set) instead of mask 0.
        input_size: (h, w) of the resized image inside the padded frame.
        original_size: (H, W) of the image.

    Returns:
        BxMxHxW bool masks on the CPU (M = 3 or 1) and BxM predicted IoUs (float32, CPU).
    """
    b = (points[0] if points is not None else boxes).shape[0]
    sel = slice(1, None) if multimask_output else slice(0, 1)
    m = 3 if multimask_output else 1
    masks = torch.zeros(b, m, *original_size, dtype=torch.bool)
    ious = torch.zeros(b, m)
    h, w = model.prompt_encoder.image_embedding_size
    # postprocess_masks reads the low-resolution rows/columns up to ceil(size / 4) + 1 (mask_ops.upscale_unpadded)
    th = min(h, math.ceil((math.ceil(input_size[0] / 4) + 1) / 4))
    tw = min(w, math.ceil((math.ceil(input_size[1] / 4) + 1) / 4))
    for start in range(0, b, chunk):
        part = slice(start, min(b, start + chunk))
        pts = None if points is None else (points[0][part], points[1][part])
        sparse, dense = model.prompt_encoder(pts, None if boxes is None else boxes[part], None)
        iou, hyper, keys = decode_embedded(model.prompt_encoder, model.mask_decoder, features, sparse, dense)
        # upscale only the tokens whose pixels reach the unpadded image (the upscaling is per token: exact)
        tokens = keys.reshape(-1, h, w, keys.shape[-1])[:, :th, :tw].reshape(keys.shape[0], th * tw, -1)
        crop = model.mask_decoder.upscale_and_project(tokens, hyper[:, sel].contiguous(), th, tw).float()
        low = crop.new_zeros(crop.shape[0], m, 4 * h, 4 * w)  # what lies beyond the crop is never read
        low[..., : 4 * th, : 4 * tw] = crop
        masks[part] = model.postprocess_masks(low, input_size, original_size, threshold=model.mask_threshold).cpu()
        ious[part] = iou[:, sel].float().cpu()
    return masks, ious


@torch.no_grad()
def predict_many_low_res(
    model: Sam,
    features: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    multimask_output: bool,
    min_iou: float | None = None,
    chunk: int = CHUNK,
) -> tuple[Tensor, Tensor, Tensor]:
    """Low-resolution logits of B prompt sets' masks, upscaled only where the predicted IoU exceeds `min_iou`.

    The tokens of all B sets are decoded at once and the IoU head runs before any upscaling; the sets with a
    mask kept are upscaled `chunk` at a time (a set's upscaled features are 8 MiB at 1024: small chunks stay in
    cache).

    Args:
        points, boxes: as `predict_many` (the resized frame's pixels).
        multimask_output: masks 1..3 instead of mask 0.
        min_iou: keep the masks whose predicted IoU is above it; None keeps all.

    Returns:
        Kx(4h)x(4w) float32 logits of the K kept masks in (prompt set, mask) order, BxM float32 predicted IoUs
        and the BxM bool kept flags (M = 3 or 1).
    """
    sparse, dense = model.prompt_encoder(points, boxes, None)
    iou, hyper, keys = decode_embedded(model.prompt_encoder, model.mask_decoder, features, sparse, dense)
    sel = slice(1, None) if multimask_output else slice(0, 1)
    iou = iou[:, sel].float()
    keep = iou > min_iou if min_iou is not None else torch.ones_like(iou, dtype=torch.bool)
    sets = keep.any(1).nonzero().flatten()
    if len(sets) == 0:
        h, w = model.prompt_encoder.image_embedding_size
        return iou.new_zeros(0, 4 * h, 4 * w), iou, keep
    logits = [upscale(model, keys[part], hyper[part, sel]).float()[keep[part]] for part in sets.split(chunk)]
    return torch.cat(logits), iou, keep


__all__ = [
    "Factored",
    "decode",
    "decode_embedded",
    "decode_low_res",
    "decode_tokens",
    "predict_many",
    "predict_many_low_res",
    "upscale",
]
