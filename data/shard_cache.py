"""`ShardCache`: a user's images (and labels) -> teacher shards, made once and cached, reused while the inputs hold.

The cache lives under `cache_dir` (configs: `${paths.data_dir}/finetune`), one folder per input set and teacher:

    <cache_dir>/<images folder name>-<12 hex>/
        key.json    what the hex digest covers: the source (kind, resolved paths), the teacher (variant, sha256 of its
                    checkpoint, precision), img_size, embedding encoding, JPEG quality, the held-out share
        train/      shards + dataset.json of the training part (data.precompute's format)
        val/        shards of the held-out part (a stable share of the images, chosen by a hash of each key)

A second run with the same folder, teacher checkpoint and img_size finds the same folder and reuses its shards. The
input list is not in the digest: every run lists the inputs again and compares them (and, for COCO / mask labels,
their content) with the shards' `_plan.json`, so added, removed or relabelled images are reported instead of being
silently ignored. A killed precompute resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mobilesam.files import write_json

from .inputs import list_inputs
from .manifest import MANIFEST, PLAN, ManifestError
from .precompute_config import PrecomputeConfig
from .sources import IMAGE_EXTS

log = logging.getLogger(__name__)

# A user's folder is small next to SA-1B: shards of 256 inputs (the unit of resume) instead of the precompute's 1000.
# Every other precompute setting is `PrecomputeConfig`'s default unless `precompute=` overrides it.
CUSTOM_SHARD_SIZE = 256
# What a custom dataset decides itself, so `precompute=` may not override it
_OWN_SETTINGS = ("source", "teacher", "out_dir", "img_size", "encoding", "rank", "world_size", "limit")
# The label reader's options that apply to each kind (data.labels.read_coco / read_mask_folder)
LABEL_OPTIONS = {"coco": ("include_crowd",), "masks": ("layout", "ignore_values")}
# What may differ between the run that made the shards and a run that reuses them
_REUSABLE_ACROSS = ("world_size", "shard_size")


class DataChangedError(ManifestError):
    """The cached shards were made from other inputs than the source now lists."""


def resolve_kind(source: str, annotations: str | os.PathLike | None) -> str:
    """`auto`: no annotations -> folder; a .json file -> coco; a folder -> masks. Other values are checked."""
    if source != "auto":
        if source not in ("folder", "coco", "masks"):
            raise ValueError(f"data.source={source!r}; use auto, folder, coco or masks")
        if source != "folder" and not annotations:
            raise ValueError(f"data.source={source} needs data.annotations (a COCO JSON or a folder of mask PNGs)")
        return source
    if not annotations:
        return "folder"
    path = Path(annotations)
    if path.is_dir():
        return "masks"
    if path.is_file():
        return "coco"
    raise FileNotFoundError(f"data.annotations={annotations} does not exist (a COCO JSON file or a mask folder)")


class ShardCache:
    """The teacher shards of a user's images (and labels), made on first use and found again by a key.

    Each process makes its share of the missing shards and waits for the others by watching the file system, so a
    precompute longer than a process group's timeout cannot break a multi-GPU run. A complete cache is reused under
    any number of processes.

    Args:
        images: the image folder (searched recursively; jpg, png, tif, bmp, webp).
        annotations: None (unlabelled), a COCO instances JSON, or a folder of mask PNGs.
        source: "auto" (from `annotations`), "folder", "coco" or "masks".
        cache_dir: where the shard sets live.
        teacher: {"variant", "checkpoint", "precision"}: the model whose embeddings are stored.
        img_size: the shards' input side.
        holdout: share of the images held out for validation and the final evaluation (0: none).
        encoding: stored embedding encoding, "float16" or "int8".
        extensions: image file suffixes to use (default: all that `mobilesam.io` reads).
        labels: options of the label reader (`data.labels`).
        precompute: overrides of `PrecomputeConfig`'s defaults (batch_size, num_workers, shard_size, ...).
        wait_timeout_s: how long a process waits for the others to finish their share of the precompute.
    """

    def __init__(
        self,
        images: str | os.PathLike,
        annotations: str | os.PathLike | None = None,
        source: str = "auto",
        cache_dir: str | os.PathLike = "outputs/data/finetune",
        teacher: Mapping[str, Any] | None = None,
        img_size: int = 1024,
        holdout: float = 0.1,
        encoding: str = "float16",
        extensions: Sequence[str] | None = None,
        labels: Mapping[str, Any] | None = None,
        precompute: Mapping[str, Any] | None = None,
        wait_timeout_s: float = 24 * 3600.0,
    ) -> None:
        if not 0.0 <= float(holdout) < 1.0:
            raise ValueError(f"data.holdout={holdout}; give the held-out share in [0, 1), e.g. 0.1")
        self.cache_dir = Path(cache_dir)
        self.images, self.annotations = Path(images), Path(annotations) if annotations else None
        self.source = source
        self.teacher = dict(teacher or {"variant": "vit_t", "checkpoint": None, "precision": "fp32"})
        self.teacher.setdefault("precision", "fp32")
        self.img_size = int(img_size)
        self.holdout, self.encoding = float(holdout), encoding
        self.extensions = list(extensions) if extensions else list(IMAGE_EXTS)
        self.labels = {
            k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
            for k, v in dict(labels or {}).items()
            if v is not None
        }
        self.precompute = {"shard_size": CUSTOM_SHARD_SIZE} | dict(precompute or {})
        fixed = sorted(set(self.precompute) & set(_OWN_SETTINGS))
        if fixed:
            raise ValueError(f"data.precompute may not set {fixed}: the dataset sets them (use data.img_size, ...)")
        self.wait_timeout_s = wait_timeout_s
        self.key: dict[str, Any] | None = None
        self.dataset_dir: Path | None = None

    # ------------------------------------------------------------------------------------------------ the key
    def source_config(self, part: str | None) -> dict[str, Any]:
        """The precompute's `source` for one part of the split (see `data.inputs.list_inputs`)."""
        kind = resolve_kind(self.source, self.annotations)
        if not self.images.is_dir():
            raise FileNotFoundError(f"data.images={self.images} is not a folder of images")
        src: dict[str, Any] = {"kind": kind, "root": str(self.images.resolve())}
        if kind == "folder":
            src["extensions"] = self.extensions
        else:
            src["annotations"] = str(self.annotations.resolve())
            options = {k: v for k, v in self.labels.items() if k in LABEL_OPTIONS[kind]}
            if options:
                src["options"] = options
        if part is not None:
            src |= {"holdout": self.holdout, "part": part}
        return src

    def cache_key(self) -> dict[str, Any]:
        """What names the cache folder (see the module docstring); hashes the teacher checkpoint (once)."""
        from .teacher import describe_teacher

        t = describe_teacher(self.teacher["variant"], self.teacher.get("checkpoint"))
        teacher = {k: t[k] for k in ("variant", "checkpoint_sha256", "seed")} | {"precision": self.teacher["precision"]}
        return {
            "source": self.source_config(None),
            "teacher": teacher,
            "img_size": self.img_size,
            "encoding": self.encoding,
            "jpeg_quality": int(self.precompute.get("jpeg_quality", PrecomputeConfig.jpeg_quality)),
            "holdout": self.holdout,
        }

    def resolve(self) -> Path:
        """Computes the key and the cache folder (no precompute); sets `dataset_dir`."""
        if self.dataset_dir is None:
            self.key = self.cache_key()
            digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]
            name = re.sub(r"[^A-Za-z0-9_-]", "_", self.images.resolve().name) or "images"
            self.dataset_dir = self.cache_dir / f"{name}-{digest}"
        return self.dataset_dir

    def parts(self) -> list[str]:
        return ["train", "val"] if self.holdout > 0 else ["train"]

    def precompute_config(self, part: str, rank: int, world: int) -> PrecomputeConfig:
        """`data.precompute.run`'s config for one part, as this rank's share."""
        return PrecomputeConfig.of(
            {
                "source": self.source_config(part),
                "teacher": self.teacher,
                "out_dir": str(self.resolve() / part),
                "img_size": self.img_size,
                "encoding": self.encoding,
                "rank": rank,
                "world_size": world,
            }
            | self.precompute
        )

    # ---------------------------------------------------------------------------------------- making shards
    def ensure_shards(self, rank: int = 0, world: int = 1) -> Path:
        """Makes (this rank's share of) every missing part, waits for the other ranks, checks reused parts.

        Returns:
            The dataset folder (holding train/ and val/).

        Raises:
            DataChangedError: the inputs differ from those the cached shards were made from.
        """
        from .precompute import run

        base = self.resolve()
        base.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            write_json(base / "key.json", self.key)
        for part in self.parts():
            cfg = self.precompute_config(part, rank, world)
            out = Path(cfg.out_dir)
            if (out / MANIFEST).is_file():
                self.check_unchanged(cfg)
                log.info("reusing the %s shards in %s", part, out)
                continue
            log.info("making the %s shards of %s in %s (teacher %s)", part, self.images, out, self.teacher["variant"])
            try:
                run(cfg)
            except ManifestError as e:
                raise DataChangedError(f"{e}\n{self._changed_hint()}") from e
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # the teacher's memory goes back before training starts
            self._wait_for(out / MANIFEST)
        return base

    def check_unchanged(self, cfg: PrecomputeConfig) -> None:
        """Compares the inputs listed now (and their labels) with those the finished shards were made from."""
        from .precompute import make_plan

        out = Path(cfg.out_dir)
        refs, _ = list_inputs(cfg.source)
        now = make_plan(cfg, refs, int(cfg.world_size))
        then = json.loads((out / PLAN).read_text())
        for plan in (now, then):  # the same checkpoint (by sha256) may have moved
            plan["teacher"] = {k: v for k, v in plan.get("teacher", {}).items() if k != "checkpoint"}
        diff = [k for k in now if k not in _REUSABLE_ACROSS and then.get(k) != now[k]]
        if diff:
            detail = "; ".join(f"{k}: {then.get(k)!r} then, {now[k]!r} now" for k in diff if k != "inputs_sha256")
            if "inputs_sha256" in diff and "inputs" not in diff:
                detail = (detail + "; " if detail else "") + "same number of inputs, but other files or labels"
            raise DataChangedError(f"{out} was made from other inputs ({detail}).\n{self._changed_hint()}")

    def _changed_hint(self) -> str:
        return (
            f"The images or labels under {self.images} changed since their shards were made. Delete "
            f"{self.dataset_dir} to make them again from what is there now (the teacher runs over every image), "
            "or restore the inputs."
        )

    def _wait_for(self, manifest: Path) -> None:
        t0 = last = time.monotonic()
        while not manifest.is_file():
            now = time.monotonic()
            if now - t0 > self.wait_timeout_s:
                raise TimeoutError(
                    f"waited {self.wait_timeout_s:.0f} s for {manifest}: another rank's share of the precompute "
                    "has not finished (did it crash?). Rerun: finished shards are kept."
                )
            if now - last > 60:
                log.info("waiting for the other ranks to finish their shards (%s)", manifest.parent)
                last = now
            time.sleep(2.0)
