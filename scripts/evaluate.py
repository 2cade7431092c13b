"""Evaluation (Hydra): `python scripts/evaluate.py checkpoint=PATH shards=DIR out_dir=DIR [key=value ...]`.

See configs/evaluate.yaml for the keys and README.md (Evaluation) for the protocol and the paper's numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.entry import one_line_errors  # noqa: E402


@hydra.main(config_path=str(ROOT / "configs"), config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from evaluation.evaluate import run

    run(cfg)


if __name__ == "__main__":
    main()
