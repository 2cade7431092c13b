"""Callbacks: export `mobile_sam.pt` + sidecar at the end of training, pictures of student vs teacher masks, and what
a stopped run leaves to resume from."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

import mobilesam
from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict, student_meta, weights_name
from mobilesam.files import sha256_file
from mobilesam.viz import overlay

log = logging.getLogger(__name__)


def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def _data_record(trainer: L.Trainer) -> dict[str, Any]:
    dm = getattr(trainer, "datamodule", None)
    record: dict[str, Any] = {}
    root = getattr(dm, "root", None)
    path = Path(root) / "dataset.json" if root is not None else None
    if path is not None and path.is_file():
        record["manifest"] = str(path)
        record["manifest_sha256"] = sha256_file(path)
    manifest = getattr(dm, "manifest", None)
    if isinstance(manifest, dict):
        for key in ("num_samples", "sample_count", "count"):
            if key in manifest:
                record["samples"] = manifest[key]
                break
    return record


def resume_advice(trainer: L.Trainer) -> str:
    """What a run stopped now can resume from, in words: the newest `last.ckpt` (else the newest checkpoint) its
    checkpoint callbacks have written, or that nothing was saved (no callback had written one yet)."""
    folders = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    found = [p for d in folders if d.is_dir() for p in d.glob("*.ckpt") if p.is_file()]
    if not found:
        return (
            "start the run again: it stopped before its first checkpoint, so nothing was saved and there is no last "
            "good checkpoint to resume from"
        )
    newest = max(found, key=lambda p: p.stat().st_mtime)
    last = max((p for p in found if p.name == "last.ckpt"), key=lambda p: p.stat().st_mtime, default=newest)
    return f"resume from the last good checkpoint, {last} (ckpt_path={last})"


class ExportMobileSam(L.Callback):
    """When training ends, saves `checkpoints/last.ckpt`, writes `mobile_sam.pt` (official key set, atomic) and
    `mobile_sam.json` into `out_dir`, then reloads the file strictly and compares every tensor before declaring it
    done.

    Args:
        out_dir: the run's output folder.
        config: the resolved training config to record in the sidecar.
        filename: must end in `mobile_sam.pt` for Ultralytics to pick the right builder.
    """

    def __init__(self, out_dir: str, config: dict | None = None, filename: str = "mobile_sam.pt") -> None:
        if not filename.endswith("mobile_sam.pt"):
            raise ValueError(f"filename={filename!r} must end in 'mobile_sam.pt' (Ultralytics picks its builder so)")
        self.out_dir = Path(out_dir)
        self.config = config
        self.filename = filename
        self.path: Path | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run that stops on max_steps mid-epoch has no epoch-end checkpoint: keep its final state resumable
        trainer.save_checkpoint(self.out_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full: resumable
        if trainer.is_global_zero:
            self.path = export_module(pl_module, self.out_dir / self.filename, trainer, self.config)
        trainer.strategy.barrier("export_mobile_sam")


def export_module(pl_module: Any, path: Path, trainer: L.Trainer | None = None, config: dict | None = None) -> Path:
    """Writes the module's SAM as `mobile_sam.pt` with its sidecar, then verifies a strict reload."""
    state = pl_module.export_state_dict()
    hp = pl_module.hparams
    teacher = dict(hp.get("teacher") or {})
    ckpt = teacher.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        teacher["sha256"] = sha256_file(ckpt)
    meta = {
        "img_size": int(hp["img_size"]),
        **student_meta(hp.get("variant", "vit_t")),  # vit_t: mobile_sam.pt; another student: <student>.pt
        "teacher": teacher,
        "init": hp.get("init"),
        "data": _data_record(trainer) if trainer is not None else {},
        "metrics": _scalar_metrics(trainer) if trainer is not None else {},
        "global_step": int(trainer.global_step) if trainer is not None else None,
        "config": config,
        "mobilesam_version": mobilesam.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if meta["variant"] != "vit_t":  # not a MobileSAM: its own file name, beside its sidecar (DESIGN.md)
        path = path.with_name(weights_name(meta["variant"]))
    save_state_dict(state, path, meta=meta)
    reloaded = build_sam(meta["variant"], path).state_dict()
    bad = [k for k, v in state.items() if not torch.equal(reloaded[k], v)]
    if bad or len(reloaded) != len(state):
        raise RuntimeError(f"{path} did not reload identically: {bad[:5]}")
    log.info("exported %s (%d tensors, img_size %d), reloaded strictly", path, len(state), meta["img_size"])
    return path


class MaskPictures(L.Callback):
    """After each validation, draws a few images with the student's and the teacher's point-prompt masks side by
    side: logged to wandb when it is the logger, and always written as PNG under `out_dir`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        examples = getattr(pl_module, "examples", [])
        if not trainer.is_global_zero or not examples or trainer.sanity_checking:
            return
        panels = []
        for ex in examples:
            image = ex["image"].permute(1, 2, 0).numpy()  # CHW -> HWC
            pts = ex["points"].numpy()
            left = np.asarray(overlay(image, ex["student"].numpy(), points=pts))
            right = np.asarray(overlay(image, ex["teacher"].numpy(), points=pts))
            panels.append(np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], axis=1))
        width = max(p.shape[1] for p in panels)
        grid = np.concatenate(
            [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"masks_step{trainer.global_step:07d}.png"
        from PIL import Image

        Image.fromarray(grid).save(path)
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(
                    key="val/masks_student_vs_teacher",
                    images=[grid],
                    step=trainer.global_step,
                    caption=["left: student, right: teacher (point prompts)"],
                )


class Throughput(L.Callback):
    """Logs `train/samples_per_s` (all ranks together) averaged over each logging interval."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._samples = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        import time

        if self._t0 is None:
            self._t0, self._samples = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        import time

        self._samples += int(batch["image"].shape[0]) * trainer.world_size
        if (trainer.global_step % max(1, trainer.log_every_n_steps)) == 0 and self._t0 is not None:
            elapsed = time.perf_counter() - self._t0
            if elapsed > 0:
                pl_module.log("train/samples_per_s", self._samples / elapsed, rank_zero_only=True)
            self._t0 = None
