"""SAM's mask decoder: image embedding + prompt embeddings -> mask logits and predicted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import LayerNorm2d, gelu_


def _act(act: nn.Module, x: Tensor) -> Tensor:
    """The upscaler's activation; exact GELU (SAM's) in place at inference (`gelu_`)."""
    return gelu_(x) if type(act) is nn.GELU and act.approximate == "none" else act(x)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts 1 + `num_multimask_outputs` masks per prompt set and the IoU of each.

    Mask 0 is the single-mask output; masks 1..3 are the multimask outputs for ambiguous prompts.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Predicts masks for B prompt sets.

        Args:
            image_embeddings: 1xCxHxW (shared by every prompt set) or BxCxHxW (one per prompt set).
            image_pe: 1xCxHxW positional encoding of the embedding grid.
            sparse_prompt_embeddings: BxNxC point and box embeddings.
            dense_prompt_embeddings: BxCxHxW mask embeddings.
            multimask_output: return the three multimask outputs instead of the single one.

        Returns:
            Bx(3 or 1)x(4H)x(4W) mask logits and Bx(3 or 1) predicted IoUs.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """All 4 masks and IoU predictions: Bx4x(4H)x(4W) and Bx4. See `forward`."""
        b = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings has batch {image_embeddings.shape[0]} but there are {b} prompt sets: "
                "pass one embedding for all of them or one per prompt set"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)

        # Broadcasting the shared image embedding over the prompt sets replaces SAM's repeat_interleave copy
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != b:
            src = src.expand(b, -1, -1, -1)
        h, w = src.shape[-2:]

        # Run the transformer
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        # Project the mask tokens to hypernetwork weights; upscale the image tokens and take their product
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self.upscale_and_project(src, hyper_in, h, w)

        # Predict mask quality
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def upscale_and_project(self, tokens: Tensor, hyper_in: Tensor, h: int, w: int) -> Tensor:
        """`output_upscaling` followed by the product with the hypernetwork outputs, as matrix products.

        A 2x2 stride-2 transposed convolution maps each pixel to its own 2x2 output pixels, i.e. it is a linear
        layer to 4 x C_out features; LayerNorm2d and GELU act per pixel. So both upscaling steps run on the token
        layout, and only the final M masks are shuffled into image order (not the 32-channel feature map).

        Args:
            tokens: Bx(h*w)xC image tokens from the transformer.
            hyper_in: BxMx(C/8) hypernetwork outputs, one row per mask token.

        Returns:
            BxMx(4h)x(4w) mask logits.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        b, m = tokens.shape[0], hyper_in.shape[1]
        c1, c2 = conv1.out_channels, conv2.out_channels
        # weight Cin x Cout x 2 x 2 -> Cin x (2*2*Cout): the output features of one pixel, ordered (a, b, Cout)
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        y = torch.addmm(conv1.bias.repeat(4), tokens.reshape(-1, tokens.shape[-1]), w1)
        y = _act(act1, F.layer_norm(y.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
        z = _act(act2, torch.addmm(conv2.bias.repeat(4), y, w2)).view(b, -1, c2)
        masks = z @ hyper_in.transpose(1, 2)  # B x (h*w*16) x M, rows ordered (i, j, a, b, a2, b2)
        # pixel (4i + 2a + a2, 4j + 2b + b2)
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)
