"""`SAM`: the Ultralytics-style facade, `SAM("mobile_sam.pt").predict(image, points=..., labels=..., bboxes=...)`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .build import build_sam
from .device import choose_device
from .io import ImageSource, image_batches, load_image
from .mask_ops import masks_to_boxes
from .predictor import SamPredictor
from .prompts import PromptError, check_inside, parse_prompts
from .viz import overlay, save_picture


@dataclass
class Results:
    """The masks predicted for one image.

    Attributes:
        orig_img: HxWx3 uint8 RGB image the masks belong to.
        masks: NxHxW bool masks at the original size (object-major: 3 per object with multimask output).
        scores: N predicted IoUs.
        boxes: Nx4 XYXY tight boxes of the masks, in pixels (x2, y2 inclusive; zeros for an empty mask).
        path: the image's path when it came from a file.
    """

    orig_img: np.ndarray
    masks: Tensor
    scores: Tensor
    boxes: Tensor
    path: str | None = None
    prompts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def plot(self) -> Image.Image:
        """The image with every mask blended in, mask boxes outlined and the prompt points drawn."""
        return overlay(
            self.orig_img,
            self.masks.numpy(),
            boxes=self.boxes.numpy(),
            points=self.prompts.get("points"),
            labels=self.prompts.get("labels"),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `plot()` to an image file, in the format of its extension (`.png`, fast; `.jpg`, smaller)."""
        return save_picture(self.plot(), path)


class SAM:
    """Loads a checkpoint once and predicts masks for images and prompts.

    Args:
        checkpoint: `mobile_sam.pt`, `sam_vit_b_01ec64.pth`, ...; None builds random `vit_t` weights (tests, demos).
        device: "cuda", "cpu", ...; None takes CUDA when available.
        variant: "auto" reads it from the file.
        img_size: None takes the file's sidecar, else 1024.
        bf16: run under bfloat16 autocast (CUDA only; masks differ slightly from float32).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = "mobile_sam.pt",
        device: str | torch.device | None = None,
        variant: str = "auto",
        img_size: int | None = None,
        bf16: bool = False,
    ) -> None:
        device = choose_device(device)
        if bf16 and device.type != "cuda":
            raise ValueError(f"bf16=True needs a CUDA device, got {device}; leave bf16 off on CPU")
        self.checkpoint = checkpoint
        self.model = build_sam(variant, checkpoint, img_size)
        self.model.to(device)
        self.predictor = SamPredictor(self.model, autocast_dtype=torch.bfloat16 if bf16 else None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, *args: Any, **kwargs: Any) -> list[Results]:
        return self.predict(*args, **kwargs)

    def predict(
        self,
        source: ImageSource | Sequence[ImageSource],
        points: Any = None,
        labels: Any = None,
        bboxes: Any = None,
        multimask_output: bool = False,
        everything_options: dict[str, Any] | None = None,
        batch_size: int = 1,
    ) -> list[Results]:
        """Segments the prompted objects in one image or a list of images (the same prompts for each).

        Without points and boxes it segments everything (`SamAutomaticMaskGenerator`): the masks are sorted by
        predicted IoU, highest first, `scores` are the predicted IoUs and `boxes` the masks' tight boxes.

        Args:
            source: a path, PIL image, HxWx3 uint8 array, or a list of them.
            points: `[x, y]` (one object), `[[x, y], [x, y]]` (one point per object) or `[[[x, y], [x, y]]]`
                (several points on one object), in pixels of the original image.
            labels: the points' labels nested the same way (1 positive, 0 negative); None means all positive.
            bboxes: `[x1, y1, x2, y2]` or a list of boxes; with points, box i and point set i are one object.
            multimask_output: three masks per object (object-major) instead of one.
            everything_options: options of `SamAutomaticMaskGenerator` for segment-everything, e.g.
                `{"points_per_side": 16, "pred_iou_thresh": 0.8}` (only without prompts).
            batch_size: images embedded per encoder batch (prompted prediction; segment-everything embeds one
                image at a time). The same masks as one at a time; faster per image where the device has room.

        Returns:
            One `Results` per image.
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        pts, labs, boxes = parse_prompts(points, labels, bboxes)
        if pts is None and boxes is None:
            return [self._everything(s, everything_options or {}) for s in sources]
        if everything_options:
            raise PromptError("everything_options apply only to segment-everything (no points and no bboxes)")
        out = []
        for group in image_batches(sources, batch_size):
            images = [load_image(s) for s in group]
            embedded = self.predictor.embed_images(images) if batch_size > 1 else [None] * len(group)
            out += [
                self._predict_one(s, pts, labs, boxes, multimask_output, im, e)
                for s, im, e in zip(group, images, embedded)
            ]
        return out

    def _predict_one(
        self,
        source: ImageSource,
        pts: np.ndarray | None,
        labs: np.ndarray | None,
        boxes: np.ndarray | None,
        multimask_output: bool,
        image: np.ndarray,
        embedded: tuple[Tensor, tuple[int, int], tuple[int, int]] | None = None,
    ) -> Results:
        size = image.shape[:2]
        if pts is not None:
            check_inside(pts, size, "point")
        if boxes is not None:
            check_inside(boxes.reshape(-1, 2), size, "box corner")
        p = self.predictor
        if embedded is None:
            p.set_image(image)
        else:
            p.set_embedding(*embedded)
        # chunked, factored decoding; full-size masks made as bool, one chunk at a time
        masks, iou = p.predict_many(pts, labs, boxes, multimask_output)
        masks = masks.flatten(0, 1)  # objects x C x H x W -> (objects*C) x H x W, object-major
        prompts = {"points": pts, "labels": labs, "boxes": boxes}
        return Results(
            orig_img=image,
            masks=masks,
            scores=iou.flatten().cpu(),
            boxes=masks_to_boxes(masks),
            path=str(source) if isinstance(source, (str, os.PathLike)) else None,
            prompts=prompts,
        )

    def _everything(self, source: ImageSource, options: dict[str, Any]) -> Results:
        from .everything import SamAutomaticMaskGenerator, check_options

        check_options(options)
        image = load_image(source)
        generator = SamAutomaticMaskGenerator(self.model, predictor=self.predictor, **options)
        found = generator.generate_masks(image)
        order = torch.argsort(found.iou_preds, descending=True, stable=True)
        return Results(
            orig_img=image,
            masks=found.masks[order],
            scores=found.iou_preds[order],
            boxes=found.boxes[order].float(),
            path=str(source) if isinstance(source, (str, os.PathLike)) else None,
        )
