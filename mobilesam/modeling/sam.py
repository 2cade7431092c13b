"""`Sam`: an image encoder, the prompt encoder and the mask decoder, with pre- and post-processing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mask_ops import upsample_binary, upscale_unpadded
from ..transforms import PIXEL_MEAN, PIXEL_STD
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT


class Sam(nn.Module):
    """Segment Anything: predicts object masks from an image and prompts."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square input of the image encoder, in pixels."""
        return self.image_encoder.img_size

    def preprocess(self, x: Tensor) -> Tensor:
        """Normalises a (B)x3xhxw RGB image with values in [0, 255] and pads it to img_size x img_size.

        Accepts uint8 or float input; padding is added at the bottom and right with zeros after normalisation.
        """
        x = (x.float() - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self,
        masks: Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
        threshold: float | None = None,
    ) -> Tensor:
        """Removes the padding and upscales BxCx(img_size/4)^2 mask logits to BxCxHxW at `original_size`.

        Equal to SAM's upscale-to-img_size, crop, upscale-to-original, but only the low-resolution rows and
        columns that reach the unpadded region are upscaled (one more than needed, so the bilinear weights at the
        crop border are the same as on the full grid). With a `threshold` the result is the boolean mask
        `logits > threshold`, and the last upscale interpolates only along the mask border (`upsample_binary`).
        """
        masks = upscale_unpadded(masks, (int(input_size[0]), int(input_size[1])), self.img_size)
        if threshold is not None:
            return upsample_binary(masks, tuple(original_size), threshold)
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, Tensor]]:
        """Predicts masks end to end, as segment-anything's `Sam.forward`.

        Args:
            batched_input: one dict per image with 'image' (3xhxw, already resized so the long side is
                img_size), 'original_size' (H, W), and optionally 'point_coords' (BxNx2), 'point_labels' (BxN),
                'boxes' (Bx4) in the resized frame, and 'mask_inputs' (Bx1x(img_size/4)^2).
            multimask_output: three masks per prompt set instead of one.

        Returns:
            One dict per image: 'masks' (BxCxHxW bool), 'iou_predictions' (BxC), 'low_res_logits' (BxCx256x256).
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                embedding[None], self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs
