"""The precompute's settings as one typed, checked record: `configs/precompute.yaml`, the custom datasets' cache and
the demo all build a `PrecomputeConfig`, so its defaults and its checks live here and only here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mobilesam.variants import VariantError, check_img_size, check_variant

from .codec import ENCODINGS

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher (configs/teacher/*.yaml): variant, checkpoint (None: seeded random weights), precision."""

    variant: str = "vit_h"
    checkpoint: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        try:
            check_variant(self.variant, "teacher.variant")
        except VariantError as e:
            raise ValueError(str(e)) from e
        if self.precision not in PRECISIONS:
            raise ValueError(f"teacher.precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))


@dataclass(frozen=True)
class PrecomputeConfig:
    """Everything `data.precompute.run` needs. Defaults are configs/precompute.yaml's (a test holds them equal).

    Attributes:
        source: what to read (configs/source/*.yaml; see `data.inputs.list_inputs`).
        out_dir: the shard directory (dataset.json is written there).
        teacher: the teacher that embeds the images.
        img_size: long side of the stored JPEG and the teacher's input side (a multiple of 64).
        limit: use only the first N inputs (sorted by key); None for all.
        batch_size: images per teacher forward.
        num_workers: CPU processes reading, resizing and re-encoding inputs.
        shard_size: inputs per shard (the unit of resume).
        jpeg_quality: of the stored JPEG, 1..100.
        encoding: "float16" or "int8" embeddings.
        device: "auto" (cuda:LOCAL_RANK when there is a GPU, else cpu), "cpu", "cuda", ...
        rank, world_size: this process's share; None takes torchrun's RANK / WORLD_SIZE (1 process otherwise).
        progress: show a progress bar.
    """

    source: Mapping[str, Any]
    out_dir: str
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    img_size: int = 1024
    limit: int | None = None
    batch_size: int = 8
    num_workers: int = 4
    shard_size: int = 1000
    jpeg_quality: int = 95
    encoding: str = "float16"
    device: str = "auto"
    rank: int | None = None
    world_size: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, TeacherConfig):
            object.__setattr__(self, "teacher", TeacherConfig(**dict(self.teacher)))
        object.__setattr__(self, "source", dict(self.source))
        object.__setattr__(self, "out_dir", str(self.out_dir))
        if self.out_dir in ("", "???"):
            raise ValueError("out_dir is not set: pass out_dir=PATH (the shard directory to write)")
        try:
            check_img_size(self.img_size)
        except VariantError as e:
            raise ValueError(str(e)) from e
        for name, low in (("batch_size", 1), ("shard_size", 1), ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise ValueError(f"limit={self.limit!r} must be null (every input) or an integer >= 0")
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality!r} must be an integer in 1..100 (95 is the default)")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding={self.encoding!r}; use one of {', '.join(ENCODINGS)}")
        if self.world_size is not None and self.world_size < 1:
            raise ValueError(f"world_size={self.world_size} must be >= 1 (or null: torchrun's WORLD_SIZE)")
        if self.rank is not None and not 0 <= self.rank < (self.world_size or 1 << 30):
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")

    @classmethod
    def of(cls, cfg: PrecomputeConfig | Mapping[str, Any]) -> PrecomputeConfig:
        """A composed Hydra config (DictConfig) or a plain mapping -> a checked `PrecomputeConfig`.

        Unknown keys are refused by name (a misspelt option would otherwise be ignored); `hydra` is skipped.
        """
        if isinstance(cls, type) and isinstance(cfg, cls):
            return cfg
        if hasattr(cfg, "_metadata"):  # an OmegaConf DictConfig, resolved into plain containers
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        values = {k: v for k, v in dict(cfg).items() if k != "hydra"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown precompute options {unknown}; the options are {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> PrecomputeConfig:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers (JSON-serialisable), e.g. to pass to another process."""
        return dataclasses.asdict(self)
