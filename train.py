"""Training entry point: `python train.py [+experiment=NAME] [key=value ...]` (Hydra composes configs/train.yaml)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from train.run import run

    return run(cfg).get("objective")


if __name__ == "__main__":
    main()
