"""The one measuring rule of every benchmark: header, warm-up, ABBA rounds, medians, paired ratios, peak memory."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The CPU model (from /proc/cpuinfo, else `platform`) and its logical core count."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical cores"


def header(title: str, device: str = "cpu") -> str:
    """What every printed table states: what was measured, the machine, torch, the thread count and the date."""
    import torch

    where = machine()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        where += f"; GPU {torch.cuda.get_device_name()}"
    return (
        f"# {title}\n"
        f"# machine: {where}; torch {torch.__version__}; threads: {torch.get_num_threads()}; "
        f"measured: {datetime.date.today().isoformat()}"
    )


def print_header(title: str, device: str = "cpu") -> None:
    print(header(title, device), flush=True)


def sync_for(device: Any) -> Callable[[], None]:
    """A function that waits for the device's queued work (CUDA), or does nothing (CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def timed(
    fn: Callable[..., Any], *args: Any, sync: Callable[[], None] | None = None, **kwargs: Any
) -> tuple[float, Any]:
    """(seconds, result) of one call; `sync` runs inside the timed span (device work counted)."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    if sync is not None:
        sync()
    return time.perf_counter() - t, out


@dataclass
class Rounds:
    """Per-contender times of interleaved rounds (seconds, in round order) and, where measured, peak memory (MiB)."""

    times: dict[str, list[float]]
    outputs: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, base: str) -> float:
        """Median over rounds of name's time / base's time in the same round (paired, so drift cancels)."""
        return statistics.median(a / b for a, b in zip(self.times[name], self.times[base]))

    def rate(self, name: str, items: int) -> float:
        """Items per second at the median time."""
        return items / self.median(name)

    def peak(self, name: str) -> float:
        return max(self.peaks[name])

    def cell(self, name: str, base: str | None = None, unit: str = "ms") -> str:
        """'1258 ms (x0.52)': the median and, unless name is base, the paired ratio to base."""
        text = seconds(self.median(name), unit)
        return text if base is None or name == base else f"{text} ({ratio_text(self.ratio(name, base))})"

    def table(self, base: str, unit: str = "ms", label: str = "") -> str:
        """One row per contender: median, paired ratio to base, peak memory when measured."""
        head = [label, f"median ({unit})", f"ratio to {base}"] + (["peak MiB"] if self.peaks else [])
        rows = []
        for name in self.times:
            row = [name, seconds(self.median(name), unit), ratio_text(self.ratio(name, base))]
            rows.append(row + ([f"{self.peak(name):.0f}"] if self.peaks else []))
        return table(head, rows) + f"\n{self.note(base)}"

    def note(self, base: str | None = None) -> str:
        n = len(next(iter(self.times.values())))
        return f"(median of {n} interleaved rounds" + (f"; ratios paired per round against {base})" if base else ")")


def interleave(
    contenders: dict[str, Callable[..., Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    inputs: Callable[[int], tuple] | None = None,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
) -> Rounds:
    """Runs every contender once per round, in alternating order (A B, B A, A B, ...), after `warmup` untimed rounds.

    `inputs(r)` gives the arguments of round r (the same for every contender; warm-up rounds are r < 0);
    `on_round(r, outputs)` sees each timed round's results (e.g. to compare masks). The last outputs are kept.
    """
    names = list(contenders)
    result = Rounds({k: [] for k in names})
    for r in range(-warmup, rounds):
        args = inputs(r) if inputs is not None else ()
        outs = {}
        for k in names if r % 2 == 0 else names[::-1]:
            t, outs[k] = timed(contenders[k], *args, sync=sync)
            if r >= 0:
                result.times[k].append(t)
        result.outputs = outs
        if r >= 0 and on_round is not None:
            on_round(r, outs)
    return result


def repeat(fn: Callable[[], Any], iters: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of `iters` calls of one contender after `warmup` untimed ones (for rates with nothing to compare)."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    return [timed(fn, sync=sync)[0] for _ in range(iters)]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM; ru_maxrss would keep a parent's peak across fork+exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux and BSD


_CHILD = (
    "import json, sys\n"
    "from importlib import import_module\n"
    "from benchmarks.timing import peak_rss_mib\n"
    "module, _, name = sys.argv[1].partition(':')\n"
    "out = getattr(import_module(module), name)(**json.loads(sys.argv[2]))\n"
    "out['peak_mib'] = peak_rss_mib()\n"
    "print(json.dumps(out))\n"
)


def in_subprocess(func: str, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Calls `module:function(**kwargs)` in a fresh Python process at the repo root; returns its dict + `peak_mib`.

    The function returns a JSON-able dict; it times its own measured span (`seconds`), so start-up is not counted.
    """
    cmd = [sys.executable, "-c", _CHILD, func, json.dumps(kwargs)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"{func}({kwargs}) failed in its subprocess (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def isolated(sides: dict[str, tuple[str, dict[str, Any]]], rounds: int) -> Rounds:
    """Each side `name: (module:function, kwargs)` in its own process per round, alternating order (ABBA).

    Times are the `seconds` each child reports, peaks its whole-process peak resident memory; the child outputs
    of the last round are kept. No warm-up round: every child starts cold alike.
    """
    names = list(sides)
    result = Rounds({k: [] for k in names}, peaks={k: [] for k in names})
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            func, kwargs = sides[k]
            out = in_subprocess(func, **kwargs)
            result.times[k].append(out["seconds"])
            result.peaks[k].append(out["peak_mib"])
            result.outputs[k] = out
    return result


def seconds(value: float, unit: str = "ms") -> str:
    """A time in the given unit: ms with 1 decimal under 100, s with 2 decimals under 10."""
    if unit == "ms":
        ms = value * 1e3
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def ratio_text(value: float) -> str:
    """How every table writes a ratio: 'x0.52' (this time / the base's)."""
    return f"x{value:.2f}"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (what docs/speed.md pastes)."""
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def rel(a: Any, b: Any) -> float:
    """The project's relative error, max|a - b| / max|b| over the whole tensor."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def image_size(text: str) -> tuple[int, int]:
    """'1500x2250' -> (1500, 2250), as H x W."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size {text!r} is not HxW; write it like 1500x2250") from None
    return h, w
