"""Test-only Lightning callbacks that record what each process did, for assertions from outside the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RankProbe(L.Callback):
    """Writes `<out_dir>/rank<r>.json`: this rank, the world size and the sample keys it trained on."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: dict, batch_idx: int) -> None:
        self.keys.extend(batch["key"])

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "keys": self.keys}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class FailAt(L.Callback):
    """Raises after training step `step` (a run killed part-way), to test what it leaves behind."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"killed at step {trainer.global_step}")
