"""What the deployment benchmarks share: one timed call, the median-and-ratio report, relative error."""

from __future__ import annotations

import statistics
import time

import numpy as np


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def report(name: str, times: dict[str, list[float]], base: str) -> None:
    """Median time of each contender and its median per-round ratio to `base`."""
    parts = []
    for k, v in times.items():
        ratio = statistics.median(a / b for a, b in zip(v, times[base]))
        parts.append(f"{k} {statistics.median(v) * 1e3:.1f} ms" + ("" if k == base else f" (x{ratio:.2f})"))
    print(f"{name}: " + ", ".join(parts) + f"  [median of {len(times[base])}, ratios to {base}]")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b| (the project's relative error)."""
    return float(np.abs(a - b).max() / np.abs(b).max())
