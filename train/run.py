"""`run(cfg)`: build everything from the composed config, train, export `mobile_sam.pt`, report where things are."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mobilesam.checkpoint import CheckpointError, is_lightning_checkpoint, load_file
from mobilesam.device import choose_device

from .callbacks import ExportMobileSam

log = logging.getLogger(__name__)


def _resolve_ckpt(ckpt_path: str | None, out_dir: Path) -> str | None:
    """`last` means this run folder's checkpoints/last.ckpt (when rerunning with hydra.run.dir=that folder)."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist; rerun with hydra.run.dir=<the run folder to resume>"
            )
        return str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
        found = f"; the checkpoints in {path.parent} are {near}" if near else f" (no .ckpt file in {path.parent})"
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist{found}")
    check_resumable(path)
    return str(path)


def check_resumable(path: Path) -> None:
    """Refuses a `ckpt_path` that Lightning could not resume from, saying what the file is and what is wanted."""
    try:
        obj = load_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"ckpt_path: {e}. Resume from another checkpoint (e.g. checkpoints/last.ckpt)") from e
    if not is_lightning_checkpoint(obj):
        raise CheckpointError(
            f"ckpt_path={path} is not a Lightning training checkpoint (it holds {type(obj).__name__}, e.g. an exported "
            "mobile_sam.pt): ckpt_path resumes a run from checkpoints/last.ckpt; to start from a mobile_sam.pt, "
            "set model.init=PATH instead"
        )


def place_trainer(trainer_cfg: DictConfig) -> DictConfig:
    """The one device rule for training: `accelerator: auto` (or `gpu`) takes the GPU when there is one and the
    CPU otherwise, with a one-line notice; half precision (bf16/fp16) is kept only on a GPU.

    Returns a copy of `trainer_cfg` with `accelerator` (and, on the CPU, `precision`) made explicit.
    """
    trainer_cfg = trainer_cfg.copy()
    asked = str(trainer_cfg.get("accelerator", "auto"))
    if asked not in ("auto", "gpu", "cuda"):
        return trainer_cfg  # "cpu", "mps", ...: as asked
    on_gpu = choose_device("auto").type == "cuda"
    precision = str(trainer_cfg.get("precision", "32-true"))
    with open_dict(trainer_cfg):
        trainer_cfg.accelerator = "gpu" if on_gpu else "cpu"
        if not on_gpu:
            half = "16" in precision and not precision.startswith("32")
            trainer_cfg.precision = "32-true" if half else precision
            strategy = str(trainer_cfg.get("strategy", "auto"))
            print(
                f"no GPU found: training on the CPU (trainer.accelerator={asked} -> cpu"
                + (f", precision {precision} -> 32-true" if half else "")
                + (
                    f", strategy {strategy} on {trainer_cfg.get('devices', 1)} CPU process(es)"
                    if "ddp" in strategy
                    else ""
                )
                + ")"
            )
    return trainer_cfg


def wandb_online_ok() -> bool:
    """True when wandb can log online: an API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def place_loggers(logger_cfg: DictConfig | None) -> DictConfig | None:
    """wandb asked to log online without credentials falls back to offline with a one-line notice (instead of an
    error deep inside the first logging call); sync later with `wandb sync`."""
    if not logger_cfg:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    for name, c in logger_cfg.items():
        if c is not None and "WandbLogger" in str(c.get("_target_", "")) and c.get("offline") is False:
            if not wandb_online_ok():
                print(f"logger.{name}: no wandb credentials (WANDB_API_KEY or `wandb login`): logging offline instead")
                with open_dict(c):
                    c.offline = True
    return logger_cfg


def run(cfg: DictConfig) -> dict[str, Any]:
    """Trains as `cfg` says. Returns {"mobile_sam": path, "metrics": {...}, "objective": val/miou_point}."""
    t0 = time.time()
    # The frozen prompt encoder and mask decoder are in eval mode on purpose (the module sets its own modes at
    # train start); Lightning's notice about it would only alarm users
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("demo") and cfg.demo.get("enabled"):
        from .demo import prepare_demo

        prepare_demo(cfg)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    export = ExportMobileSam(str(out_dir), config=resolved)
    callbacks.append(export)
    loggers = [instantiate(c) for c in (place_loggers(cfg.get("logger")) or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(place_trainer(cfg.trainer), callbacks=callbacks, logger=loggers or False)

    trainer.fit(model, datamodule=datamodule, ckpt_path=_resolve_ckpt(cfg.get("ckpt_path"), out_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result: dict[str, Any] = {
        "mobile_sam": export.path,
        "metrics": metrics,
        "out_dir": out_dir,
        "objective": metrics.get("val/miou_point"),
    }
    if trainer.is_global_zero:
        deploy = getattr(model, "deploy", None)  # a module that ends in deployment files (train.qat: int8 .pte)
        if deploy is not None and export.path is not None:
            result["deploy"] = deploy(out_dir, export.path)
        if cfg.get("predict_after") and export.path is not None:
            from .demo import predict_with

            result["overlay"] = predict_with(export.path, cfg, out_dir)
        _summary(result, trainer, time.time() - t0)
    return result


def _summary(result: dict[str, Any], trainer: L.Trainer, seconds: float) -> None:
    out = result["out_dir"]
    lines = [
        "",
        f"done in {seconds / 60:.1f} min, {trainer.global_step} steps",
        f"  run folder    {out}",
        f"  mobile_sam.pt {result['mobile_sam']}  (+ mobile_sam.json beside it)",
        f"  checkpoints   {out / 'checkpoints'}  (resume: ckpt_path={out / 'checkpoints' / 'last.ckpt'})",
        f"  logs          {out / 'csv' / 'metrics.csv'}",
        f"  pictures      {out / 'pictures'}",
    ]
    for role, path in (result.get("deploy") or {}).items():
        lines.append(f"  {role:<13} {path}")
    if result.get("overlay"):
        lines.append(f"  prediction    {result['overlay']}")
    for k in sorted(result["metrics"]):
        if k.startswith("val/"):
            lines.append(f"  {k:<22}{result['metrics'][k]:.4f}")
    print("\n".join(lines))
