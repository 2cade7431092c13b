"""`SamAutomaticMaskGenerator`: segments everything in an image from a grid of point prompts (segment-anything's API).

The official generator upsamples every candidate mask to full resolution, computes its stability there and
encodes it as RLE, then throws most candidates away. Here each filter runs where it is cheapest and still exact:
the predicted-IoU filter before the masks are even upscaled from the decoder's tokens (`many_prompts`), the
stability score and the boxes for NMS from the low-resolution logits (`mask_stats`: exact counts, interpolating
only near mask borders), and full-resolution masks and RLE only for the masks that survive NMS.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import array_to_rgb
from ..mask_ops import masks_to_boxes
from ..modeling import Sam
from ..predictor import SamPredictor
from . import regions
from .mask_stats import LogitUpsampler

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Final masks upsampled per call
FINAL_CHUNK = 64


@dataclass
class MaskSet:
    """The masks generated for one image, highest predicted IoU first (with crops: NMS order across crops).

    Attributes:
        masks: NxHxW bool masks at the image's size.
        iou_preds: N predicted IoUs.
        stability: N stability scores.
        boxes: Nx4 XYXY tight boxes of the masks (pixels, x2/y2 inclusive; zeros for an empty mask).
        points: Nx2 float64 (x, y) point prompt of each mask, in image pixels.
        crop_boxes: Nx4 int64 XYXY crop each mask was found in (x2/y2 exclusive).
    """

    masks: Tensor
    iou_preds: Tensor
    stability: Tensor
    boxes: Tensor
    points: Tensor
    crop_boxes: Tensor

    def __len__(self) -> int:
        return len(self.masks)


@dataclass
class _Candidates:
    """Masks of one crop that passed the filters so far, still as low-resolution logits."""

    logits: list[Tensor] = field(default_factory=list)  # Nx(L)x(L) per batch
    iou_preds: list[Tensor] = field(default_factory=list)
    stability: list[Tensor] = field(default_factory=list)
    boxes: list[Tensor] = field(default_factory=list)  # crop frame
    points: list[Tensor] = field(default_factory=list)  # crop frame

    def cat(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self.__dict__.items()}


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image: point-grid prompts, quality filters and NMS (segment-anything's API).

    Args:
        model: the SAM model.
        points_per_side: the grid has points_per_side^2 points; None when `point_grids` is given.
        points_per_batch: points decoded together (memory: ~4 MiB per point at img_size 1024).
        pred_iou_thresh: keep masks whose predicted IoU is above this (no filter when <= 0).
        stability_score_thresh: keep masks whose stability score is at least this (no filter when <= 0).
        stability_score_offset: the stability score is the IoU of the masks thresholded at
            mask_threshold +- this offset.
        box_nms_thresh: box IoU above which NMS drops the mask of lower predicted IoU, within a crop.
        crop_n_layers: extra layers of crops; layer i has (2^i)^2 crops, each run through the model.
        crop_nms_thresh: box IoU for the NMS across crops (masks of smaller crops win).
        crop_overlap_ratio: overlap of neighbouring crops in the first layer, as a fraction of the short side.
        crop_n_points_downscale_factor: layer i uses points_per_side / factor^i points per side.
        point_grids: explicit grids (Nx2 in [0, 1], (x, y)), one per crop layer.
        min_mask_region_area: fill holes and remove islands smaller than this many pixels (needs OpenCV).
        output_mode: "binary_mask" (HxW bool arrays), "uncompressed_rle" or "coco_rle" (needs pycocotools).
        predictor: a `SamPredictor` of `model` to use (its autocast setting applies); None makes one.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        predictor: SamPredictor | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side (a regular grid) and point_grids (explicit grids), "
                f"got points_per_side={points_per_side!r} and point_grids={'None' if point_grids is None else '...'}"
            )
        if crop_n_layers < 0 or crop_n_points_downscale_factor < 1 or points_per_batch < 1:
            raise ValueError(
                f"need crop_n_layers >= 0, crop_n_points_downscale_factor >= 1 and points_per_batch >= 1, got "
                f"{crop_n_layers}, {crop_n_points_downscale_factor} and {points_per_batch}"
            )
        if points_per_side is not None:
            self.point_grids = regions.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(self.point_grids) != crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(self.point_grids)} grids but crop_n_layers={crop_n_layers} needs "
                    f"{crop_n_layers + 1} (one for the whole image and one per crop layer)"
                )
            for g in self.point_grids:
                if g.ndim != 2 or g.shape[1] != 2 or g.size and (g.min() < 0 or g.max() > 1):
                    raise ValueError(f"each point grid must be Nx2 (x, y) in [0, 1], got shape {g.shape}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if output_mode == "coco_rle":
            regions.import_pycocotools()
        if min_mask_region_area > 0:
            regions.import_cv2()

        self.predictor = predictor if predictor is not None else SamPredictor(model)
        if self.predictor.model is not model:
            raise ValueError("predictor must wrap the same model that is passed as `model`")
        self.model = model
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Generates masks for an HxWx3 uint8 RGB image (other arrays are converted as `mobilesam.io` says).

        Returns:
            One record per mask, as segment-anything's generator: `segmentation` (HxW bool array, or an RLE dict
            by `output_mode`), `area` (pixels), `bbox` (XYWH), `predicted_iou`, `point_coords` ([[x, y]]),
            `stability_score`, `crop_box` (XYWH).
        """
        return self.records(self.generate_masks(image))

    def records(self, result: MaskSet) -> list[dict[str, Any]]:
        """segment-anything's records of a `MaskSet` (see `generate`), segmentations in `output_mode`."""
        records = []
        areas = regions.mask_areas(result.masks).tolist()
        for i in range(len(result)):
            mask = result.masks[i]
            if self.output_mode == "uncompressed_rle":
                segmentation = regions.mask_to_rle(mask[None])[0]
            elif self.output_mode == "coco_rle":
                segmentation = regions.coco_rle(mask.numpy())
            else:
                segmentation = mask.numpy()
            records.append(
                {
                    "segmentation": segmentation,
                    "area": areas[i],
                    "bbox": regions.xyxy_to_xywh([int(v) for v in result.boxes[i]]),
                    "predicted_iou": float(result.iou_preds[i]),
                    "point_coords": [result.points[i].tolist()],
                    "stability_score": float(result.stability[i]),
                    "crop_box": regions.xyxy_to_xywh(result.crop_boxes[i].tolist()),
                }
            )
        return records

    @torch.no_grad()
    def generate_masks(self, image: np.ndarray) -> MaskSet:
        """Like `generate`, but returns the masks and their data as tensors (masks on the CPU)."""
        image = array_to_rgb(np.asarray(image))
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = regions.generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [self._process_crop(image, box, layer) for box, layer in zip(crop_boxes, layer_idxs)]

        # Candidates of all crops, in the image frame
        owner = torch.cat([torch.full((len(c["iou_preds"]),), i) for i, c in enumerate(crops)])
        data = {k: torch.cat([c[k] for c in crops]) for k in ("iou_preds", "stability", "boxes", "points")}
        crop_xyxy = torch.tensor(crop_boxes, dtype=torch.int64)[owner]
        order = torch.arange(len(owner))
        if len(crop_boxes) > 1:
            # Remove duplicates between crops, preferring masks from smaller crops
            from torchvision.ops import box_area

            order = _nms(data["boxes"], 1 / box_area(crop_xyxy.float()), self.crop_nms_thresh)
        start = torch.tensor([0] + [len(c["iou_preds"]) for c in crops]).cumsum(0)
        masks = self._final_masks(crops, crop_boxes, owner[order], order - start[owner[order]], orig_size)
        result = MaskSet(
            masks=masks,
            iou_preds=data["iou_preds"][order],
            stability=data["stability"][order],
            boxes=data["boxes"][order],
            points=data["points"][order],
            crop_boxes=crop_xyxy[order],
        )
        if self.min_mask_region_area > 0:
            result = self._remove_small_regions(result)
        return result

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> dict[str, Any]:
        """Candidates of one crop after the per-batch filters and the crop's NMS, boxes and points uncropped."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_size = crop.shape[:2]
        p = self.predictor
        p.set_image(crop)
        upsampler = LogitUpsampler(self.model, p.input_size, crop_size)
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]  # (x, y) in crop pixels
        image_box = [0, 0, image.shape[1], image.shape[0]]
        found = _Candidates()
        for start in range(0, len(points), self.points_per_batch):
            self._process_batch(points[start : start + self.points_per_batch], upsampler, crop_box, image_box, found)
        p.reset_image()
        data = found.cat() if found.iou_preds else _empty(self.model)

        # Remove duplicates within this crop
        keep = _nms(data["boxes"], data["iou_preds"], self.box_nms_thresh)
        data = {k: v[keep.to(v.device)] for k, v in data.items()}
        data["boxes"] = data["boxes"] + torch.tensor([x0, y0, x0, y0], dtype=data["boxes"].dtype)
        data["points"] = data["points"] + torch.tensor([x0, y0], dtype=torch.float64)
        data["upsampler"] = upsampler
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        upsampler: LogitUpsampler,
        crop_box: list[int],
        image_box: list[int],
        found: _Candidates,
    ) -> None:
        """Decodes one batch of points and appends the masks that pass the IoU, stability and crop-edge filters."""
        # The three multimask outputs of each point, filtered by predicted IoU before the masks are upscaled
        min_iou = self.pred_iou_thresh if self.pred_iou_thresh > 0 else None
        ones = np.ones((len(points), 1), dtype=np.int64)
        logits, iou, keep = self.predictor.predict_many_low_res(points[:, None], ones, min_iou=min_iou)
        if not keep.any():
            return
        iou = iou[keep]
        point_idx = keep.nonzero()[:, 0].cpu()

        # Stability score and box of each mask, exact at the crop's full resolution
        t, off = self.model.mask_threshold, self.stability_score_offset
        counts, boxes = upsampler.stats(logits, (t + off, t - off), t)
        counts = counts.to(torch.int32)
        stability = counts[:, 0] / counts[:, 1]
        ok = torch.ones_like(iou, dtype=torch.bool)
        if self.stability_score_thresh > 0:
            ok = stability >= self.stability_score_thresh
        # Drop masks touching a crop edge that is not an image edge
        x0, y0 = crop_box[:2]
        offset = torch.tensor([x0, y0, x0, y0], device=boxes.device)
        ok &= ~regions.box_near_crop_edge(boxes + offset, crop_box, image_box)
        ok = ok.cpu()
        found.logits.append(logits[ok.to(logits.device)])
        found.iou_preds.append(iou.cpu()[ok])
        found.stability.append(stability.cpu()[ok])
        found.boxes.append(boxes.cpu()[ok].long())
        found.points.append(torch.as_tensor(points, dtype=torch.float64)[point_idx[ok]])

    def _final_masks(
        self,
        crops: list[dict[str, Any]],
        crop_boxes: list[list[int]],
        owner: Tensor,
        local: Tensor,
        size: tuple[int, int],
    ) -> Tensor:
        """NxHxW bool masks of the survivors (candidate local[i] of crop owner[i]), placed in the image."""
        out = torch.zeros(len(owner), *size, dtype=torch.bool)
        for c in owner.unique().tolist():
            rows = (owner == c).nonzero().flatten()
            x0, y0, x1, y1 = crop_boxes[c]
            logits = crops[c]["logits"]
            for part in rows.split(FINAL_CHUNK):
                masks = crops[c]["upsampler"].masks(logits[local[part].to(logits.device)], self.model.mask_threshold)
                out[part, y0:y1, x0:x1] = masks.cpu()
        return out

    def _remove_small_regions(self, result: MaskSet) -> MaskSet:
        """Fills small holes and removes small islands, then re-runs NMS (unchanged masks win), as segment-anything."""
        if len(result) == 0:
            return result
        area = self.min_mask_region_area
        masks, unchanged = [], []
        for m in result.masks.numpy():
            m, changed_holes = regions.remove_small_regions(m, area, "holes")
            m, changed_islands = regions.remove_small_regions(m, area, "islands")
            masks.append(torch.from_numpy(m))
            unchanged.append(float(not (changed_holes or changed_islands)))
        masks = torch.stack(masks)
        scores = torch.tensor(unchanged)
        boxes = masks_to_boxes(masks)
        keep = _nms(boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        changed = scores == 0
        new_boxes = torch.where(changed[:, None], boxes.to(result.boxes.dtype), result.boxes)
        new_masks = torch.where(changed[:, None, None], masks, result.masks)
        return MaskSet(
            masks=new_masks[keep],
            iou_preds=result.iou_preds[keep],
            stability=result.stability[keep],
            boxes=new_boxes[keep],
            points=result.points[keep],
            crop_boxes=result.crop_boxes[keep],
        )


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes NMS keeps, highest score first (torchvision's, called as segment-anything calls it)."""
    from torchvision.ops import batched_nms  # imported here: `import mobilesam` stays free of torchvision

    return batched_nms(boxes.float(), scores, torch.zeros(len(scores), dtype=torch.int64), iou_threshold)


def _empty(model: Sam) -> dict[str, Tensor]:
    low = model.prompt_encoder.mask_input_size
    return {
        "logits": torch.zeros(0, *low, device=model.device),
        "iou_preds": torch.zeros(0),
        "stability": torch.zeros(0),
        "boxes": torch.zeros(0, 4, dtype=torch.int64),
        "points": torch.zeros(0, 2, dtype=torch.float64),
    }


def check_options(options: dict[str, Any]) -> None:
    """Raises a ValueError naming any key of `options` that is not a `SamAutomaticMaskGenerator` setting."""
    allowed = set(inspect.signature(SamAutomaticMaskGenerator).parameters) - {"model", "predictor"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown segment-everything options {unknown}; valid ones: {sorted(allowed)}")
