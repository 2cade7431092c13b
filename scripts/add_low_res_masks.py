"""Adds low-resolution masks to existing shards: `python scripts/add_low_res_masks.py DIR [--workers N] [--force]`.

Each shard is rewritten atomically (temp file, checked, renamed); a rerun skips shards that are done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.add_low_res import add_low_res_masks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", help="the shard directory (holds dataset.json)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one shard each at a time)")
    ap.add_argument("--force", action="store_true", help="recompute the member where it exists")
    args = ap.parse_args(argv)
    r = add_low_res_masks(args.root, args.workers, args.force)
    print(
        f"{r['shards']} shards ({r['rewritten']} rewritten), {r['added']} masks members added, "
        f"{r['samples_with_masks']} samples carry them; {r['manifest']} declares them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
