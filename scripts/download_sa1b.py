"""Downloads SA-1B tars with resume: `python scripts/download_sa1b.py LINKS.txt OUT_DIR [--split NAME | --files ...]`.

LINKS.txt is your own links file from the SA-1B download page (tab-separated file_name, cdn_link); the links expire,
so the project never ships one. Splits: data/splits/sa1b_train_1pct.txt (default) and sa1b_val.txt.
Run it again after an interruption: finished tars are checked and kept, partial ones resume (HTTP Range).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.download import DownloadError, download_split, read_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("links", help="the SA-1B links file (file_name<TAB>cdn_link)")
    ap.add_argument("out_dir")
    ap.add_argument("--split", action="append", help="split name or file (repeatable); default sa1b_train_1pct")
    ap.add_argument("--files", nargs="+", help="explicit tar names instead of a split")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    names = args.files or [n for s in (args.split or ["sa1b_train_1pct"]) for n in read_split(s)]
    try:
        paths = download_split(args.links, names, args.out_dir, progress=not args.no_progress)
    except (DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(paths)} tars complete in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
