"""The evaluation's tally and report: metrics.json, the per-image CSV, IoU histograms, the worst-cases grid (PNG)."""

from __future__ import annotations

import csv
import heapq
import io
import os
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mobilesam.files import atomic_write, write_json
from mobilesam.protocol import PROMPT_TYPES
from mobilesam.viz import overlay

COMPARISONS = ("vs_teacher", "vs_ground_truth", "teacher_vs_ground_truth")
FILES = {"metrics": "metrics.json", "per_image": "per_image.csv", "histograms": "iou_hist.png"}
FILES["examples"] = "examples.png"


def protocol_description(masks_per_image: int | None, img_size: int, teacher_decoder: str) -> dict[str, Any]:
    """The protocol as it is written into metrics.json (mobilesam/protocol.py implements it)."""
    which = (
        "all of each image's masks"
        if masks_per_image is None
        else (
            f"up to {masks_per_image} masks per image, chosen by data.annotations.choose_masks seeded by the image key "
            "alone (the masks training validation scores)"
        )
    )
    return {
        "description": (
            "mIoU = the mean IoU over masks (every mask weighs the same). For each ground-truth mask three prompts are "
            "decoded with a prompt encoder and mask decoder: 'point' = the mask's point (SA-1B point_coords, else the "
            "interior point farthest from the border), multimask output, the best of three by predicted IoU; "
            "'two_points' = that point plus a second positive point drawn inside the mask (on the ground truth's "
            "low-resolution grid, seeded by crc32(key/mask id)), single-mask output; 'box' = the ground-truth box, "
            "single-mask output. Logits are upscaled x4 as SAM's postprocessing does, cropped to the resized image "
            "and thresholded at 0. 'vs_teacher' compares with the teacher's masks for the same prompts, "
            "'vs_ground_truth' with the annotation decoded at the same resolution (area interpolation, >= 0.5). "
            "The IoU of two empty masks is 1 and counted in data.both_empty."
        ),
        "masks": which,
        "masks_per_image": masks_per_image,
        "resolution": f"the resized input: long side {img_size}, padding removed (h x w per image)",
        "seed": {"mask_subset": "crc32(key)", "second_point": "crc32(f'{key}/{mask_id}')"},
        "teacher_decoder": teacher_decoder,
        "implementation": "mobilesam.protocol (build_prompts, image_ious, decode)",
    }


class Tally:
    """Per-mask IoUs by comparison and prompt type, per-image rows, and the counts the report states."""

    def __init__(self) -> None:
        self.ious: dict[str, dict[str, list[Tensor]]] = {}
        self.both_empty: dict[str, dict[str, int]] = {}
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.embedding_se: list[Tensor] = []  # per image: mean squared error of the student's embedding
        self.images = self.masks = self.empty_masks = self.without_annotations = 0

    def add(self, key: str, ious: dict[str, dict[str, Tensor]], gt_empty: Tensor) -> None:
        """One image's `image_ious` output; `gt_empty` flags the ground-truth masks empty at this resolution."""
        row: dict[str, Any] = {"key": key, "masks": len(gt_empty), "empty_masks": int(gt_empty.sum())}
        for comp in COMPARISONS:
            for kind, values in ious.get(comp, {}).items():
                values = values.float().cpu()
                self.ious.setdefault(comp, {}).setdefault(kind, []).append(values)
                row[f"{comp}_{kind}"] = float(values.mean())
                # both empty: flagged by image_ious against the teacher; against ground truth an IoU of 1 with an
                # empty ground truth can only mean an empty prediction too
                flags = ious["both_empty"][kind].cpu() if comp == "vs_teacher" else gt_empty & (values == 1)
                counts = self.both_empty.setdefault(comp, {})
                counts[kind] = counts.get(kind, 0) + int(flags.sum())
        self.rows.append(row)
        self.images += 1
        self.masks += len(gt_empty)
        self.empty_masks += int(gt_empty.sum())

    def add_empty(self, key: str) -> None:
        self.rows.append({"key": key, "masks": 0, "empty_masks": 0})
        self.images += 1
        self.without_annotations += 1

    def per_mask(self) -> dict[str, dict[str, Tensor]]:
        return {c: {k: torch.cat(v) for k, v in by.items()} for c, by in self.ious.items()}


class WorstCases:
    """The k lowest-IoU masks seen so far (a bounded heap), each with what is needed to draw it."""

    def __init__(self, k: int) -> None:
        self.k, self._heap, self._tie = k, [], count()

    def threshold(self) -> float:
        """An IoU must be below this to enter."""
        if self.k == 0:
            return -1.0
        return float("inf") if len(self._heap) < self.k else -self._heap[0][0]

    def add(self, iou: float, entry: dict[str, Any]) -> None:
        if iou >= self.threshold():
            return
        item = (-iou, next(self._tie), entry)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def worst_first(self) -> list[dict[str, Any]]:
        return [e for _, _, e in sorted(self._heap, key=lambda t: (-t[0], t[1]))]


def example(
    image: Tensor, masks: dict[str, Tensor], point: Tensor, key: str, mask_id: int, iou: float, reference: str
) -> dict[str, Any]:
    """One mask to draw, cropped around the masks and the prompt point (a 1024 image would make small masks
    invisible in a grid cell).

    Args:
        image: 3xhxw uint8, the resized image.
        masks: name -> hxw bool ("student", "teacher", "ground truth").
        point: (x, y) of the point prompt, input-frame pixels.
    """
    h, w = image.shape[1:]
    union = torch.zeros(h, w, dtype=torch.bool)
    for m in masks.values():
        union |= m.cpu()
    ys, xs = union.nonzero(as_tuple=True)
    px, py = float(point[0]), float(point[1])
    x0, x1, y0, y1 = px, px, py, py
    if len(xs):
        x0, x1 = min(px, float(xs.min())), max(px, float(xs.max()))
        y0, y1 = min(py, float(ys.min())), max(py, float(ys.max()))
    mx, my = max(16.0, 0.5 * (x1 - x0)), max(16.0, 0.5 * (y1 - y0))
    cx0, cx1 = int(max(0, x0 - mx)), int(min(w, x1 + mx + 1))
    cy0, cy1 = int(max(0, y0 - my)), int(min(h, y1 + my + 1))
    return {
        "key": key,
        "mask_id": mask_id,
        "iou": iou,
        "reference": reference,
        "image": image[:, cy0:cy1, cx0:cx1].permute(1, 2, 0).numpy().copy(),  # CHW -> HWC
        "masks": {k: m.cpu()[cy0:cy1, cx0:cx1].numpy().copy() for k, m in masks.items()},
        "point": (px - cx0, py - cy0),
    }


def _png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_histograms(ious: dict[str, dict[str, Tensor]], path: Path) -> Path:
    """One panel per prompt type: the distribution of per-mask IoUs of every comparison present."""
    from matplotlib.figure import Figure  # the train extra; no pyplot, so no display backend is needed

    fig = Figure(figsize=(4 * len(PROMPT_TYPES), 3.6), layout="constrained")
    axes = fig.subplots(1, len(PROMPT_TYPES), squeeze=False)[0]
    bins = np.linspace(0.0, 1.0, 21)
    for ax, kind in zip(axes, PROMPT_TYPES):
        for comp in COMPARISONS:
            values = ious.get(comp, {}).get(kind)
            if values is not None and len(values):
                v = values.numpy()
                ax.hist(v, bins=bins, histtype="step", linewidth=1.6, label=f"{comp} (mIoU {v.mean():.3f})")
        ax.set_title(kind)
        ax.set_xlabel("IoU")
        ax.set_ylabel("masks")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("IoU per mask, by prompt type")
    _png(fig, path)
    return path


def plot_examples(examples: list[dict[str, Any]], path: Path) -> Path:
    """A grid, worst case first: one row per mask, one column per mask source, drawn over the image."""
    from matplotlib.figure import Figure

    names = list(examples[0]["masks"])
    fig = Figure(figsize=(3.2 * len(names), 3.0 * len(examples) + 0.4), layout="constrained")
    axes = fig.subplots(len(examples), len(names), squeeze=False)
    for row, ex in zip(axes, examples):
        for ax, name in zip(row, names):
            ax.imshow(np.asarray(overlay(ex["image"], [ex["masks"][name]], points=np.array([ex["point"]]))))
            ax.set_axis_off()
            ax.set_title(f"{name}\n{ex['key']} #{ex['mask_id']}  IoU {ex['reference']} {ex['iou']:.3f}", fontsize=8)
    fig.suptitle("point prompt, worst IoU first")
    _png(fig, path)
    return path


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per image: key, masks scored, ground-truth masks empty at the evaluation resolution, mean IoU per comparison
    and prompt type (blank where there is none)."""
    columns = ["key", "masks", "empty_masks"] + [f"{c}_{k}" for c in COMPARISONS for k in PROMPT_TYPES]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["key"]):
        writer.writerow({c: (f"{v:.6f}" if isinstance(v, float) else v) for c, v in row.items()})
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
    return path


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict[str, Any],
    rows: list[dict[str, Any]],
    ious: dict[str, dict[str, Tensor]],
    examples: list[dict[str, Any]],
) -> dict[str, str]:
    """Writes the CSV, the plots and then metrics.json (last: its presence means the report is complete).

    Returns:
        {"metrics", "per_image", "histograms", "examples"}: the paths written (examples only when there are masks).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"per_image": str(write_csv(rows, out / FILES["per_image"]))}
    if any(len(v) for comp in ious.values() for v in comp.values()):
        files["histograms"] = str(plot_histograms(ious, out / FILES["histograms"]))
    if examples:
        files["examples"] = str(plot_examples(examples, out / FILES["examples"]))
    files["metrics"] = str(out / FILES["metrics"])
    metrics["files"] = files
    write_json(out / FILES["metrics"], metrics)
    return files


def summary_table(result: dict[str, Any]) -> str:
    """The headline numbers as a small text table."""
    d = result["data"]
    lines = [
        f"{d['images']} images, {d['masks']} masks ({d['kind']}: {d['path']}); "
        f"{d['images_without_annotations']} without annotations, {d['empty_masks']} empty masks, "
        f"{d['skipped_images']} images skipped",
        f"{'mIoU':<26}" + "".join(f"{k:>12}" for k in PROMPT_TYPES),
    ]
    for comp in COMPARISONS:
        if comp in result:
            lines.append(f"{comp:<26}" + "".join(f"{result[comp][k]:>12.4f}" for k in PROMPT_TYPES))
    if "embedding_mse" in result:
        lines.append(f"{'embedding MSE vs teacher':<26}{result['embedding_mse']:>12.6f}")
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("files"):
        lines.append(f"report: {Path(result['files']['metrics']).parent}")
    return "\n".join(lines)
