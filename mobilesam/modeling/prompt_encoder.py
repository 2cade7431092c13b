"""SAM's prompt encoder: points, boxes and low-resolution masks into sparse and dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .common import LayerNorm2d, derived


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) with a fixed random Gaussian frequency matrix (2 x `num_pos_feats`)."""

    def __init__(self, num_pos_feats: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """...x2 coordinates in [0, 1] -> ...x(2*num_pos_feats) features [sin, cos]."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """The encoding of the centre of every cell of an HxW grid: Cx H x W."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """BxNx2 (x, y) pixel coordinates in an image of `image_size` (H, W) -> BxNxC."""
        scale = coords.new_tensor([1.0 / image_size[1], 1.0 / image_size[0]], dtype=torch.float32)
        return self._pe_encoding(coords.float() * scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Point labels: 1 positive, 0 negative, 2 and 3 the top-left and bottom-right box corners (as in SAM's ONNX
    interface), -1 padding ("not a point").
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # positive point, negative point, two box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid: 1 x C x H x W."""
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        pe = derived(self, "dense_pe", (matrix,), lambda: self.pe_layer(self.image_embedding_size))
        return pe.unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """BxNx2 points in input-frame pixels and BxN labels -> BxNxC (Bx(N+1)xC with `pad`)."""
        points = points + 0.5  # shift to the centre of the pixel
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        for i, table in enumerate(self.point_embeddings):
            embedding = embedding + (labels == i) * table.weight
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """Bx4 XYXY boxes in input-frame pixels -> Bx2xC corner embeddings."""
        corners = boxes.reshape(-1, 2, 2) + 0.5  # shift to the centre of the pixel
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_tables = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return embedding + corner_tables

    def forward(
        self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Embeds the prompts of B prompt sets.

        Args:
            points: (BxNx2 coordinates, BxN labels) in the model's input frame, or None.
            boxes: Bx4 XYXY boxes in the model's input frame, or None.
            masks: Bx1x(4H)x(4W) mask logits, or None.

        Returns:
            BxKxC sparse embeddings (K points and box corners) and BxCxHxW dense embeddings.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        parts = [self.no_mask_embed.weight.new_empty(bs, 0, self.embed_dim)]
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
