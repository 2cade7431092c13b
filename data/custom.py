"""`CustomDataModule`: a user's images (and labels) -> the teacher shards of `ShardCache` -> `ShardDataModule`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .datamodule import ShardDataModule
from .manifest import MANIFEST, ManifestError, read_manifest
from .shard_cache import DataChangedError, ShardCache, resolve_kind

log = logging.getLogger(__name__)

__all__ = ["CustomDataModule", "DataChangedError", "resolve_kind"]


class CustomDataModule(ShardDataModule):
    """Shards of a user's data, made on first use by the teacher (`ShardCache`, in `setup`), then read like any
    shard set.

    Args:
        images: the image folder (searched recursively; jpg, png, tif, bmp, webp).
        annotations: None (unlabelled), a COCO instances JSON, or a folder of mask PNGs.
        source: "auto" (from `annotations`), "folder", "coco" or "masks".
        root: another name for `images` (`data.root=IMAGES` in finetune_domain).
        cache_dir: where the shard sets live.
        teacher: {"variant", "checkpoint", "precision"}: the model whose embeddings are stored (SAM ViT-H for
            domain distillation; the starting MobileSAM itself for supervised fine-tuning).
        img_size: input side of training; the shards are made at this size.
        holdout: share of the images held out for validation and the final evaluation (0: none).
        encoding: stored embedding encoding, "float16" or "int8".
        extensions: image file suffixes to use (default: all that `mobilesam.io` reads).
        labels: options of the label reader (`data.labels`): `include_crowd` for COCO; `layout` ("auto",
            "objects": masks/NAME/*.png, "labels": masks/NAME.png) and `ignore_values` for mask folders.
        precompute: overrides of `PrecomputeConfig`'s defaults (batch_size, num_workers, shard_size, ...).
        wait_timeout_s: how long a rank waits for the others to finish their share of the precompute.
        **kwargs: `ShardDataModule`'s loader arguments (batch_size, num_workers, masks_per_image, ...).
    """

    def __init__(
        self,
        images: str | os.PathLike | None = None,
        annotations: str | os.PathLike | None = None,
        source: str = "auto",
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike = "outputs/data/finetune",
        teacher: Mapping[str, Any] | None = None,
        img_size: int = 1024,
        holdout: float = 0.1,
        encoding: str = "float16",
        extensions: list[str] | None = None,
        labels: Mapping[str, Any] | None = None,
        precompute: Mapping[str, Any] | None = None,
        wait_timeout_s: float = 24 * 3600.0,
        **kwargs: Any,
    ) -> None:
        if images is not None and root is not None and str(images) != str(root):
            raise ValueError(f"data.images={images} and data.root={root} disagree: give the image folder once")
        images = images if images is not None else root
        if images is None:
            raise ValueError("give the image folder: data.images=DIR (or data.root=DIR)")
        for name in ("val_root", "val_fraction", "val_shards", "synthesize"):
            if kwargs.get(name):
                raise ValueError(f"data.{name} is not used here: the held-out part is data.holdout of the images")
            kwargs.pop(name, None)
        self.cache = ShardCache(
            images, annotations, source, cache_dir, teacher, img_size, holdout, encoding, extensions, labels,
            precompute, wait_timeout_s,
        )  # fmt: skip
        # the shard folders are known once the key is (setup): a placeholder until then
        super().__init__(root=self.cache.cache_dir / "unresolved", img_size=img_size, **kwargs)

    @property
    def dataset_dir(self) -> Path | None:
        """The cache folder of this data (holding train/ and val/), once resolved."""
        return self.cache.dataset_dir

    # ------------------------------------------------------------------------------------------ Lightning
    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            base = self.cache.ensure_shards(*self._dist())
            self.root = base / "train"
            train = read_manifest(self.root)
            if train["sample_count"] == 0:
                raise ManifestError(
                    f"no usable training images in {self.cache.images} ({train['skipped_count']} skipped; reasons in "
                    f"{self.root / MANIFEST})"
                )
            self.val_root = None
            if self.cache.holdout > 0:
                val = read_manifest(base / "val")
                if val["sample_count"] == 0:
                    log.warning(
                        "data.holdout=%s left no image of %s for validation: there is no validation and no final "
                        "evaluation; raise data.holdout or add images",
                        self.cache.holdout,
                        self.cache.images,
                    )
                else:
                    self.val_root = base / "val"
        super().setup(stage)
