"""Prompt parsing and validation: Ultralytics-style nesting into tensors, and errors that name the fix."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # not imported at run time: the ONNX runtime predictor parses prompts without PyTorch
    from torch import Tensor


class PromptError(ValueError):
    """Prompts of the wrong shape, or outside the image."""


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only come from a process that imported torch
    return torch is not None and isinstance(value, torch.Tensor)


def _array(value: Any, name: str) -> np.ndarray:
    if _is_tensor(value):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise PromptError(f"{name} must be numbers in nested lists of equal length: {e}") from e
    check_finite(a, name)
    return a


# Point labels SAM's prompt encoder defines: -1 padding, 0 negative, 1 positive, 2 / 3 a box's two corners
SAM_LABELS = (-1, 0, 1, 2, 3)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().float().cpu().numpy() if _is_tensor(value) else np.asarray(value, dtype=np.float64)


def check_finite(values: Any, name: str) -> None:
    """Refuses NaN or infinite coordinates (they would give NaN scores or silent masks)."""
    a = _numpy(values)
    if not np.isfinite(a).all():
        bad = a.reshape(-1)[~np.isfinite(a.reshape(-1))][0]
        raise PromptError(f"{name} holds NaN or infinite values ({bad} among {a.size}); give finite pixel coordinates")


def check_labels(labels: Any, allowed: Sequence[int] = (0, 1)) -> None:
    """Refuses point labels outside `allowed` (the facade: 1 positive, 0 negative; the predictor: SAM's labels)."""
    lab = _numpy(labels)
    if not np.isin(lab, allowed).all():
        found = sorted({int(v) if float(v).is_integer() else float(v) for v in lab.ravel().tolist()} - set(allowed))
        names = "1 (positive) or 0 (negative)" if tuple(allowed) == (0, 1) else f"one of {list(allowed)}"
        raise PromptError(f"labels must be {names}, got {found}")


def check_box_order(boxes: Any) -> None:
    """Refuses boxes that are not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2 (...x4)."""
    b = _numpy(boxes).reshape(-1, 4)
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise PromptError(f"each box must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {b.tolist()}")


def parse_points(points: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Ultralytics nesting -> (N objects x K points x 2 coordinates, N x K labels).

    `[x, y]` is one object of one point; `[[x, y], [x, y]]` N objects of one point each; `[[[x, y], [x, y]]]`
    one object of K points. Labels follow the same nesting without the last axis (`1`, `[1, 0]`, `[[1, 0]]`);
    None means every point is positive. 1 = positive, 0 = negative.
    """
    pts = _array(points, "points")
    if pts.ndim == 1:
        pts = pts[None, None]
    elif pts.ndim == 2:
        pts = pts[:, None]
    if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] == 0 or pts.shape[1] == 0:
        raise PromptError(
            f"points has shape {np.shape(_array(points, 'points'))}; use [x, y] for one point, [[x, y], ...] for one "
            "point per object, or [[[x, y], [x, y]]] for several points on one object"
        )
    if labels is None:
        return pts, np.ones(pts.shape[:2], dtype=np.int64)
    lab = _array(labels, "labels")
    if lab.size != pts.shape[0] * pts.shape[1]:
        raise PromptError(
            f"points has shape {tuple(pts.shape)} (objects x points x 2) but labels has {lab.size} values "
            f"(shape {lab.shape}); give one label per point, nested like the points"
        )
    lab = lab.reshape(pts.shape[:2])
    check_labels(lab)
    return pts, lab.astype(np.int64)


def parse_boxes(boxes: Any) -> np.ndarray:
    """`[x1, y1, x2, y2]` or a list of them -> Nx4."""
    b = _array(boxes, "bboxes")
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[-1] != 4 or b.shape[0] == 0:
        raise PromptError(f"bboxes has shape {np.shape(b)}; use [x1, y1, x2, y2] or a list of such boxes")
    check_box_order(b)
    return b


def parse_prompts(
    points: Any, labels: Any, bboxes: Any
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The facade's prompts -> (N x K x 2 points, N x K labels, N x 4 boxes), each None when not given.

    With both points and boxes, object i takes point set i and box i, so their counts must match.
    """
    if points is None and labels is not None:
        raise PromptError("labels were given without points")
    pts, labs = parse_points(points, labels) if points is not None else (None, None)
    boxes = parse_boxes(bboxes) if bboxes is not None else None
    if pts is not None and boxes is not None and len(pts) != len(boxes):
        raise PromptError(
            f"{len(pts)} point sets and {len(boxes)} boxes were given; with both, object i takes point set i and "
            "box i, so the counts must match"
        )
    return pts, labs, boxes


def check_inside(coords: np.ndarray | Tensor, size: Sequence[int], name: str) -> None:
    """Refuses (x, y) coordinates outside an image of `size` (H, W); the edges themselves are allowed."""
    c = coords.detach().cpu().numpy() if _is_tensor(coords) else np.asarray(coords)
    c = c.reshape(-1, 2)
    h, w = size[0], size[1]
    bad = (c[:, 0] < 0) | (c[:, 0] > w) | (c[:, 1] < 0) | (c[:, 1] > h)
    if bad.any():
        raise PromptError(
            f"{name} {c[bad][0].tolist()} lies outside the {w}x{h} (width x height) image; coordinates are (x, y) "
            f"pixels with 0 <= x <= {w} and 0 <= y <= {h}"
        )


def check_point_shapes(coords: Tensor | np.ndarray, labels: Tensor | np.ndarray | None, batched: bool) -> None:
    """Refuses points and labels whose shapes do not match (Nx2 and N, or BxNx2 and BxN when batched)."""
    if labels is None:
        raise PromptError("point_labels must be given with point_coords (1 = positive, 0 = negative)")
    cs, ls = tuple(coords.shape), tuple(labels.shape)
    want = 3 if batched else 2
    if len(cs) != want or cs[-1] != 2 or ls != cs[:-1]:
        form = "BxNx2 and BxN" if batched else "Nx2 and N"
        raise PromptError(f"point_coords has shape {cs} but point_labels has shape {ls}; expected {form}")
