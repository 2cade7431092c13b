"""`ShardDataModule`: the Lightning DataModule over precomputed shards (train/val loaders yielding THE BATCH)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from .batch import SampleDecoder
from .manifest import ManifestError, read_manifest
from .stream import Shard, ShardStream, split_shards  # noqa: F401 - split_shards: the old import path

log = logging.getLogger(__name__)


class EpochLoader(DataLoader):
    """A DataLoader that tells its ShardStream the epoch before starting workers (workers are not persistent, so
    each epoch's workers see it). The epoch comes from `epoch_fn` (the trainer's) or counts the iterations."""

    def __init__(self, dataset: ShardStream, epoch_fn: Callable[[], int | None], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self._epoch_fn, self._iters = epoch_fn, 0

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch_fn()
        self.dataset.set_epoch(self._iters if epoch is None else epoch)
        self._iters += 1
        return super().__iter__()


class ShardDataModule(L.LightningDataModule):
    """Train and validation loaders over the shards of `data.precompute` (batch contract: data/README.md).

    Args:
        root: the shard directory (holds dataset.json).
        batch_size: samples per batch, per rank.
        num_workers: DataLoader workers per rank (each streams its own shards).
        val_fraction: share of the samples (whole shards, the last by name) held out for validation.
        val_shards: explicit validation shard names (overrides val_fraction).
        val_root: a second shard directory used as the whole validation set (e.g. the held-out SA-1B tar).
        masks_per_image: N > 0 adds masks, boxes, points, num_masks, mask_ids to every batch.
        val_masks_per_image: the same for validation batches (default: masks_per_image); encoder distillation
            needs no masks to train but validates the mask-agreement mIoU with them.
        shuffle_buffer: raw samples per worker held for shuffling (memory: ~2.3 MiB each at img_size 1024).
        seed: shard order, shuffle buffer and mask choice.
        img_size: when set, the manifest must agree (a run configured for 1024 refuses 256-pixel shards).
        rank, world_size: override the trainer's (for tests and custom launchers).
        pin_memory: pinned batches (default: when CUDA is available).
        drop_last: drop each worker's last partial training batch.
        synthesize: when set and `root` holds no manifest, `prepare_data` generates demo shards there with
            `data.demo.ensure_demo_shards(root, **synthesize)` (the embedded demo; never for real data).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 8,
        num_workers: int = 4,
        val_fraction: float = 0.0,
        val_shards: Sequence[str] | None = None,
        val_root: str | os.PathLike | None = None,
        masks_per_image: int = 0,
        val_masks_per_image: int | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        img_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool | None = None,
        drop_last: bool = False,
        synthesize: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("masks_per_image", masks_per_image, 0),
            ("shuffle_buffer", shuffle_buffer, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"data.{name}={value!r} must be an integer >= {low}")
        if val_masks_per_image is not None and val_masks_per_image < 0:
            raise ValueError(f"data.val_masks_per_image={val_masks_per_image} must be >= 0 (or null: masks_per_image)")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1): the share of shards held out")
        self.root, self.val_root = Path(root), Path(val_root) if val_root else None
        self.batch_size, self.num_workers, self.masks_per_image = batch_size, num_workers, masks_per_image
        self.val_masks_per_image = masks_per_image if val_masks_per_image is None else val_masks_per_image
        self.val_fraction, self.val_shards = val_fraction, val_shards
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.expected_img_size, self.rank, self.world_size = img_size, rank, world_size
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last, self.synthesize = drop_last, synthesize
        self.manifest: dict[str, Any] | None = None
        self.train_shards: list[Shard] = []
        self.val_shards_: list[Shard] = []

    @property
    def img_size(self) -> int:
        return int(self._manifest()["img_size"])

    def _manifest(self) -> dict[str, Any]:
        if self.manifest is None:
            self.manifest = read_manifest(self.root)
            if self.expected_img_size is not None and int(self.manifest["img_size"]) != int(self.expected_img_size):
                raise ManifestError(
                    f"{self.root}/dataset.json has img_size {self.manifest['img_size']} but the run asks for "
                    f"img_size={self.expected_img_size}: precompute shards at that size or change img_size"
                )
        return self.manifest

    def _dist(self) -> tuple[int, int]:
        if self.rank is not None:
            return self.rank, self.world_size or 1
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    def prepare_data(self) -> None:
        if self.synthesize is not None:
            from .demo import ensure_demo_shards

            ensure_demo_shards(self.root, **dict(self.synthesize))

    def setup(self, stage: str | None = None) -> None:
        m = self._manifest()
        self.train_shards, self.val_shards_ = split_shards(m, self.root, self.val_fraction, self.val_shards)
        if self.val_root is not None:
            vm = read_manifest(self.val_root)
            for k in ("img_size", "embedding"):
                if vm[k] != m[k]:
                    raise ManifestError(f"val_root {self.val_root} has {k}={vm[k]} but root {self.root} has {m[k]}")
            self.val_shards_ = split_shards(vm, self.val_root, 0.0, None)[0]
        log.info(
            "shards: %d train (%d samples), %d val (%d samples)",
            len(self.train_shards),
            sum(s.count for s in self.train_shards),
            len(self.val_shards_),
            sum(s.count for s in self.val_shards_),
        )

    def _stream(self, shards: list[Shard], train: bool) -> ShardStream:
        m = self._manifest()
        rank, world = self._dist()
        masks = self.masks_per_image if train else self.val_masks_per_image
        decoder = SampleDecoder(int(m["img_size"]), m["embedding"]["encoding"], masks, self.seed)
        return ShardStream(
            shards,
            decoder,
            self.batch_size,
            rank,
            world,
            self.num_workers,
            train=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            drop_last=self.drop_last and train,
        )

    def _epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def _loader(self, stream: ShardStream) -> EpochLoader:
        return EpochLoader(stream, self._epoch, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> EpochLoader:
        if not self.train_shards:
            self.setup("fit")
        return self._loader(self._stream(self.train_shards, train=True))

    def val_dataloader(self) -> EpochLoader | list:
        if not self.train_shards:
            self.setup("validate")
        return self._loader(self._stream(self.val_shards_, train=False)) if self.val_shards_ else []
