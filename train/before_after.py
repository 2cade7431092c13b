"""`EvaluateBeforeAfter`: when a fine-tune ends, `evaluation.evaluate` of the model it started from and of
the exported `mobile_sam.pt` on the held-out shards, side by side."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from mobilesam.checkpoint import read_sidecar, sidecar_path
from mobilesam.files import write_json
from mobilesam.protocol import PROMPT_TYPES

from .callbacks import ExportMobileSam

log = logging.getLogger(__name__)

COMPARISONS = ("vs_ground_truth", "vs_teacher")


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{comparison: {prompt type: {"before", "after", "change"}}} for the comparisons both reports hold, and
    {"embedding_mse": {"vs_teacher": ...}} when both measured the embedding error (shards)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if "embedding_mse" in before and "embedding_mse" in after:
        b, a = before["embedding_mse"], after["embedding_mse"]
        out["embedding_mse"] = {"vs_teacher": {"before": b, "after": a, "change": a - b}}
    for comp in COMPARISONS:
        if comp in before and comp in after:
            out[comp] = {
                k: {"before": before[comp][k], "after": after[comp][k], "change": after[comp][k] - before[comp][k]}
                for k in PROMPT_TYPES
            }
    return out


def table(comparison: dict[str, dict[str, dict[str, float]]]) -> str:
    """The comparison as a markdown table (mIoU per prompt type, before -> after), then the embedding MSE."""
    lines = []
    if any(comp in comparison for comp in COMPARISONS):  # unlabelled held-out images have no masks to score
        lines = ["| mIoU | " + " | ".join(PROMPT_TYPES) + " |", "| --- |" + " --- |" * len(PROMPT_TYPES)]
    for comp in COMPARISONS:
        if comp in comparison:
            cells = [f"{v['before']:.4f} -> {v['after']:.4f} ({v['change']:+.4f})" for v in comparison[comp].values()]
            lines.append(f"| {comp} | " + " | ".join(cells) + " |")
    if "embedding_mse" in comparison:
        v = comparison["embedding_mse"]["vs_teacher"]
        mse = f"embedding MSE vs the teacher: {v['before']:.6f} -> {v['after']:.6f} ({v['change']:+.6f})"
        lines += ["", mse] if lines else [mse]
    return "\n".join(lines)


class EvaluateBeforeAfter(L.Callback):
    """After training (and after `ExportMobileSam` wrote `mobile_sam.pt`), evaluates the starting checkpoint
    (`model.init`) and the exported one on the DataModule's held-out shards (`val_root`), writes both reports and
    `before_after.json` under `out_dir`, prints the table, and records it in `mobile_sam.json` (`evaluation`).

    Args:
        out_dir: where `before/`, `after/` (evaluation.evaluate's reports) and `before_after.json` go.
        teacher_checkpoint: the teacher that made the shards (domain distillation: SAM ViT-H) to score against
            its masks; None uses each model's own decoder on the stored embeddings.
        masks_per_image: masks scored per image (None: all).
        batch_size, num_workers, device, limit: as `evaluation.evaluate.evaluate`.
    """

    def __init__(
        self,
        out_dir: str,
        teacher_checkpoint: str | None = None,
        masks_per_image: int | None = 16,
        batch_size: int = 8,
        num_workers: int = 0,
        device: str = "auto",
        limit: int | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.teacher_checkpoint = teacher_checkpoint
        self.options = {
            "masks_per_image": masks_per_image,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "device": device,
            "limit": limit,
            "progress": False,
        }
        self.result: dict[str, Any] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_fit_end comes after every on_train_end, so the export is written; the ranks are torn down by now
        if not trainer.is_global_zero:
            return
        shards = getattr(trainer.datamodule, "val_root", None)
        export = next((c for c in trainer.callbacks if isinstance(c, ExportMobileSam)), None)
        start = pl_module.hparams.get("init")
        if shards is None or export is None or export.path is None or not start or str(start).startswith("timm:"):
            log.warning(
                "no before/after evaluation: it needs held-out shards (data.holdout > 0), the exported "
                "mobile_sam.pt and a starting checkpoint (model.init); found %s, %s, %s",
                shards,
                export.path if export else None,
                start,
            )
            return
        self.result = self.evaluate(start, export.path, Path(shards), int(pl_module.hparams["img_size"]))

    def evaluate(self, before: str, after: str | Path, shards: Path, img_size: int) -> dict[str, Any]:
        """Runs both evaluations and writes the comparison; returns {"before", "after", "comparison"}."""
        from evaluation.evaluate import evaluate

        reports = {}
        for name, ckpt in (("before", before), ("after", after)):
            log.info("evaluating %s (%s) on %s", name, ckpt, shards)
            reports[name] = evaluate(
                ckpt,
                shards,
                self.out_dir / name,
                teacher_checkpoint=self.teacher_checkpoint,
                img_size=img_size,
                **self.options,
            )
        comparison = compare(reports["before"], reports["after"])
        summary = {"shards": str(shards), "before": str(before), "after": str(after), "miou": comparison}
        write_json(self.out_dir / "before_after.json", summary, indent=1)
        meta = read_sidecar(after)
        if meta is not None:
            meta["evaluation"] = summary
            write_json(sidecar_path(after), meta)
        print(f"\nheld-out evaluation ({shards}), before -> after fine-tuning:\n{table(comparison)}")
        return reports | {"comparison": comparison}
