"""Learning-rate schedules: linear warm-up then cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """Multiplier of the base learning rate at a step: 0 -> 1 linearly over `warmup_steps`, then a cosine down to
    `min_ratio` at `total_steps`. A callable object (not a lambda) so LambdaLR's state stays plain data."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_fraction: float = 0.0, min_ratio: float = 0.01
) -> LambdaLR:
    """LambdaLR with `WarmupCosine`; warm-up given in steps or as a fraction of `total_steps`."""
    warmup = warmup_steps or int(warmup_fraction * total_steps)
    return LambdaLR(optimizer, WarmupCosine(warmup, total_steps, min_ratio))
