"""Training entry point: `python train.py [+experiment=NAME] [key=value ...]` (Hydra composes configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

from train.entry import one_line_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    from train.run import run

    return run(cfg).get("objective")


if __name__ == "__main__":
    main()
