"""`SamPredictor`: segment-anything's predictor API (embed an image once, then decode many prompts)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .io import ImageReadError, array_to_rgb
from .many_prompts import CHUNK, predict_many, predict_many_low_res
from .modeling import Sam
from .prompts import (
    SAM_LABELS,
    PromptError,
    check_box_order,
    check_finite,
    check_inside,
    check_labels,
    check_point_shapes,
)
from .transforms import ResizeLongestSide


def _image_array(image: Any, where: str) -> np.ndarray:
    """An image given to the predictor -> HxWx3 uint8 RGB; a path or anything not an array is refused by name."""
    if isinstance(image, (str, os.PathLike)):
        raise ImageReadError(
            f"{where} takes an HxWx3 uint8 RGB array, not the path {str(image)!r}: read the file first with "
            f"mobilesam.load_image({str(image)!r}), or give the path to mobilesam.SAM(...).predict, which reads files"
        )
    a = np.asarray(image)
    if a.ndim == 0 or a.dtype == object:
        raise ImageReadError(
            f"{where} takes an HxWx3 uint8 RGB array, got a {type(image).__name__}; read an image file with "
            "mobilesam.load_image(path)"
        )
    return array_to_rgb(a)


class SamPredictor:
    """Computes the image embedding once with `set_image`, then predicts masks for prompts with `predict`.

    `predict` decodes one object, `predict_torch` a batch of prompt sets in the resized frame, and `predict_many`
    any number of objects (a chunk at a time, through the factored decoder of `mobilesam.many_prompts`).
    Attributes after `set_image`: `original_size` (H, W), `input_size` (h, w) of the resized image, `transform`.

    Args:
        sam_model: the model (any variant).
        autocast_dtype: e.g. `torch.bfloat16` to run under autocast on CUDA; outputs are float32 either way.
    """

    def __init__(self, sam_model: Sam, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.autocast_dtype = autocast_dtype
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.autocast_dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                yield

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embeds an HxWx3 uint8 image (grayscale, RGBA and 16-bit arrays are converted, see `mobilesam.io`).

        Args:
            image: HxWxC array, values in [0, 255] for uint8.
            image_format: "RGB" or "BGR".
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = _image_array(image, "SamPredictor.set_image")
        if image_format != self.model.image_format:
            image = np.ascontiguousarray(image[..., ::-1])
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None]  # HWC -> 1xCxHxW, uint8
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embeds a 1x3xhxw image already resized with `ResizeLongestSide` (uint8 or float in [0, 255])."""
        size = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"set_torch_image needs a 1x3xHxW tensor whose long side is {size}, got {shape}; resize it with "
                "ResizeLongestSide first, or call set_image with the original array"
            )
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        with self._autocast():
            features = self.model.image_encoder(self.model.preprocess(transformed_image))
        self.features = features.float()
        self.is_image_set = True

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> list[tuple[Tensor, tuple[int, int], tuple[int, int]]]:
        """Embeds HxWx3 uint8 RGB images in one encoder batch (the state set by `set_image` is left alone).

        Returns:
            Per image: its 1xCxhxw embedding (float32), (h, w) resized size and (H, W) original size, the
            arguments of `set_embedding`.
        """
        sizes, batch = [], []
        for image in images:
            image = _image_array(image, "SamPredictor.embed_images")
            if self.model.image_format != "RGB":
                image = np.ascontiguousarray(image[..., ::-1])
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None]  # HWC -> 1xCxHxW
            batch.append(self.model.preprocess(tensor))
            sizes.append((tuple(int(v) for v in resized.shape[:2]), tuple(int(v) for v in image.shape[:2])))
        with self._autocast():
            features = self.model.image_encoder(torch.cat(batch)).float()
        return [(features[i : i + 1], *sizes[i]) for i in range(len(images))]

    def set_embedding(self, features: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> None:
        """Sets an image by its embedding (from `embed_images` or `get_image_embedding`): 1xCxhxw, resized (h, w)
        and original (H, W) sizes."""
        self.reset_image()
        self.features, self.input_size, self.original_size = features, tuple(input_size), tuple(original_size)
        self.is_image_set = True

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicts masks for one object from prompts in original-image pixels.

        Args:
            point_coords: Nx2 (x, y) points; the N points describe one object.
            point_labels: N labels, 1 positive, 0 negative.
            box: one XYXY box (4 values).
            mask_input: 1xHxW low-resolution logits from a previous call (H = W = img_size / 4).
            multimask_output: three candidate masks instead of one.
            return_logits: mask logits instead of booleans.

        Returns:
            CxHxW masks at the original size, C IoU predictions, and Cx(img_size/4)^2 low-resolution logits.
        """
        self._require_image()
        coords = labels = boxes = masks = None
        if point_coords is not None:
            point_coords, point_labels = np.asarray(point_coords), point_labels
            if point_labels is not None:
                point_labels = np.asarray(point_labels)
            check_point_shapes(point_coords, point_labels, batched=False)
            check_finite(point_coords, "point_coords")
            check_labels(point_labels, SAM_LABELS)
            check_inside(point_coords, self.original_size, "point")
            coords = torch.as_tensor(
                self.transform.apply_coords(point_coords, self.original_size), dtype=torch.float, device=self.device
            )[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = np.asarray(box, dtype=float)
            if box.size != 4:
                raise ValueError(f"box must hold 4 values [x1, y1, x2, y2], got shape {box.shape}")
            check_finite(box, "box")
            check_box_order(box)
            check_inside(box.reshape(2, 2), self.original_size, "box corner")
            boxes = torch.as_tensor(
                self.transform.apply_boxes(box, self.original_size), dtype=torch.float, device=self.device
            )
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        out_masks, iou, low_res = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return out_masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicts masks for B prompt sets at once, prompts already in the resized frame.

        Args:
            point_coords: BxNx2 points (x, y) in the resized image's pixels; each row of N points is one object.
            point_labels: BxN labels.
            boxes: Bx4 XYXY boxes in the resized frame.
            mask_input: Bx1x(img_size/4)^2 low-resolution logits.
            multimask_output: three masks per prompt set instead of one.
            return_logits: mask logits instead of booleans.

        Returns:
            BxCxHxW masks at the original size, BxC IoU predictions, BxCx(img_size/4)^2 low-resolution logits.
        """
        self._require_image()
        points = _checked_batch(point_coords, point_labels, boxes)
        if mask_input is not None:
            want = self.model.prompt_encoder.mask_input_size
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, *want):
                raise ValueError(f"mask_input must be Bx1x{want[0]}x{want[1]}, got {tuple(mask_input.shape)}")
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points, boxes, mask_input)
            low_res, iou = self.model.mask_decoder(
                self.features, self.model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
        low_res = low_res.float()
        threshold = None if return_logits else self.model.mask_threshold
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size, threshold=threshold)
        return masks, iou.float(), low_res

    def predict_many(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = False,
        chunk: int = CHUNK,
    ) -> tuple[Tensor, Tensor]:
        """Boolean masks for B objects on the set image, in original-image pixels, decoded `chunk` objects at a time.

        The masks of `predict_torch` (equal up to float rounding), through the factored decoder
        (`mobilesam.many_prompts`): per-object image tokens exist for one chunk only, and each chunk's masks are
        made bool before the next, so hundreds of objects take a fraction of one batch's time and memory.

        Args:
            point_coords: BxNx2 points (x, y) in original-image pixels; row i (N points) is object i.
            point_labels: BxN labels (1 positive, 0 negative).
            boxes: Bx4 XYXY boxes in original-image pixels; with points, box i is part of object i's prompt.
            multimask_output: three masks per object instead of one.
            chunk: objects decoded at once.

        Returns:
            BxMxHxW bool masks at the original size and BxM predicted IoUs (float32), both on the CPU (M = 3 or 1).
        """
        points, tboxes = self._many_prompts(point_coords, point_labels, boxes)
        with self._autocast():
            return predict_many(
                self.model, self.features, points, tboxes, multimask_output, self.input_size, self.original_size, chunk
            )

    def predict_many_low_res(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = True,
        min_iou: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Low-resolution logits of B objects' masks, upscaled from the decoder's tokens only where the predicted IoU
        exceeds `min_iou` (segment-everything filters most candidates before they exist).

        Args:
            point_coords, point_labels, boxes: as `predict_many` (original-image pixels).
            multimask_output: masks 1-3 of each object instead of mask 0.
            min_iou: keep the masks whose predicted IoU is above it; None keeps all.

        Returns:
            Kx(img_size/4)x(img_size/4) float32 logits of the kept masks in (object, mask) order, BxM float32
            predicted IoUs and the BxM bool kept flags (K of them true); M = 3 or 1.
        """
        points, tboxes = self._many_prompts(point_coords, point_labels, boxes)
        with self._autocast():
            return predict_many_low_res(self.model, self.features, points, tboxes, multimask_output, min_iou)

    def _many_prompts(
        self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, boxes: np.ndarray | None
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
        """Batched prompts in original-image pixels -> checked (points, labels) and boxes in the resized frame."""
        self._require_image()
        if point_coords is None and boxes is None:
            raise ValueError("give point_coords with point_labels, or boxes: there is no prompt to decode")
        coords = labels = tboxes = None
        if point_coords is not None:
            point_coords = np.asarray(point_coords, dtype=float)
            check_point_shapes(point_coords, point_labels, batched=True)
            check_inside(point_coords, self.original_size, "point")  # NaN passes here; _checked_batch refuses it
            frame = self.transform.apply_coords(point_coords, self.original_size)
            coords = torch.as_tensor(frame, dtype=torch.float, device=self.device)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=float)
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be Bx4 [x1, y1, x2, y2], got shape {boxes.shape}")
            check_inside(boxes.reshape(-1, 2), self.original_size, "box corner")
            frame = self.transform.apply_boxes(boxes, self.original_size)
            tboxes = torch.as_tensor(frame, dtype=torch.float, device=self.device)
        if coords is not None and tboxes is not None and len(coords) != len(tboxes):
            raise PromptError(f"{len(coords)} point sets and {len(tboxes)} boxes were given: one of each per object")
        return _checked_batch(coords, labels, tboxes), tboxes

    def get_image_embedding(self) -> Tensor:
        """The 1xCxHxW embedding of the image set with `set_image` (C = 256, H = W = img_size / 16)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self.features

    def reset_image(self) -> None:
        """Forgets the current image and its embedding."""
        self.is_image_set = False
        self.features: Tensor | None = None
        self.original_size: tuple[int, ...] | None = None
        self.input_size: tuple[int, ...] | None = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")


def _checked_batch(
    point_coords: Tensor | None, point_labels: Tensor | None, boxes: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """Refuses batched prompts (BxNx2 points, BxN labels, Bx4 boxes) of the wrong shape, non-finite or with
    unknown labels; returns the (points, labels) pair the prompt encoder takes, or None."""
    points = None
    if point_coords is not None:
        check_point_shapes(point_coords, point_labels, batched=True)
        check_finite(point_coords, "point_coords")
        check_labels(point_labels, SAM_LABELS)
        points = (point_coords, point_labels)
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be Bx4, got {tuple(boxes.shape)}")
        check_finite(boxes, "boxes")
        check_box_order(boxes)
    return points
