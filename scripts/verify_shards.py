"""Verifies a shard directory: `python scripts/verify_shards.py DIR [--fast]` (exit 1 on any problem)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.verify import verify_shards  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", help="the shard directory (holds dataset.json)")
    ap.add_argument("--fast", action="store_true", help="count samples and keys without decoding images")
    args = ap.parse_args(argv)
    report = verify_shards(args.root, decode=not args.fast)
    for e in report["errors"]:
        print(f"ERROR {e}")
    print(f"{report['shards']} shards, {report['samples']} samples: {'OK' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
