"""Benchmarks, each printing ratios measured side by side in one run: `python scripts/benchmark.py NAME [args]`.

Every `scripts/bench_NAME.py` with a `main(argv)` is a benchmark; `python scripts/benchmark.py` lists them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def main(argv: list[str]) -> int:
    benches = available()
    if not argv or argv[0] not in benches:
        print("usage: python scripts/benchmark.py {" + ",".join(benches) + "} [options]")
        return 0 if not argv else 2
    spec = importlib.util.spec_from_file_location(f"bench_{argv[0]}", benches[argv[0]])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
