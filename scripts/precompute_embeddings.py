"""Teacher precompute (Hydra): `python scripts/precompute_embeddings.py source.root=DIR out_dir=DIR [key=value ...]`.

See configs/precompute.yaml for the keys; torchrun splits the inputs across ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.entry import one_line_errors  # noqa: E402


@hydra.main(config_path=str(ROOT / "configs"), config_name="precompute", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from data.precompute import run

    result = run(OmegaConf.to_container(cfg, resolve=True))
    print(result)


if __name__ == "__main__":
    main()
