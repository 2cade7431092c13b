"""The project's benchmarks, one module each, run as `python -m benchmarks NAME [options]` (timing.py is the rule)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "__main__", "timing"}


def available() -> dict[str, str]:
    """Every benchmark's name and the first line of its docstring (read from the file: no import, no torch)."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem not in NOT_BENCHMARKS:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            out[path.stem] = doc.splitlines()[0] if doc else ""
    return out


def main(argv: list[str]) -> int:
    """`NAME [options]` runs one benchmark; no name lists them; `NAME --help` gives its options."""
    benches = available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in benches:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"no benchmark named {argv[0]!r}; pick one of these:")
        width = max(map(len, benches))
        print("usage: python -m benchmarks NAME [--quick] [options]   (NAME --help lists the options)\n")
        for name, line in benches.items():
            print(f"  {name:<{width}}  {line}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    return int(module.main(argv[1:]) or 0)
