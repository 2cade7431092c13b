"""The teacher precompute: inputs -> resized stored JPEG -> frozen teacher -> resumable webdataset shards."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mobilesam.device import choose_device
from mobilesam.files import sha256_file
from mobilesam.transforms import resize_image

from .annotations import AnnotationError, parse_sa1b_json
from .codec import ENCODINGS, decode_jpeg, encode_embedding, encode_jpeg
from .inputs import SOURCE_KINDS, list_inputs, ref_identity
from .low_res import LOW_RES_KEY, encode_low_res
from .manifest import (
    MANIFEST,
    assemble_manifest,
    check_plan,
    chunk_ranges,
    inputs_digest,
    record_path,
    sample_crc32,
    shard_name,
    write_json,
)
from .precompute_config import PrecomputeConfig
from .sources import InputError, InputRef, decode_image
from .teacher import PRECISIONS, describe_teacher, embed, load_teacher

log = logging.getLogger(__name__)


def prepare(ref: InputRef, img_size: int, quality: int, need_annotations: bool) -> dict[str, Any]:
    """Reads one input and makes its stored form: the resized JPEG, its decoded pixels, and the sample json.

    Raises:
        InputError / AnnotationError: the input is unusable (the caller skips it and records why).
    """
    src = ref.image.describe()
    rgb = decode_image(ref.image.read(), src)
    orig = (int(rgb.shape[0]), int(rgb.shape[1]))
    anns: list[dict[str, Any]] = []
    if ref.annotation is not None:
        anns = parse_sa1b_json(ref.annotation.read(), orig)
    elif need_annotations:
        raise AnnotationError(f"{src} has no annotation json")
    jpg = encode_jpeg(resize_image(rgb, img_size), quality)
    stored = decode_jpeg(jpg)  # the teacher sees exactly what the loader will decode
    # sizes first: the loader reads them from the json's first bytes without parsing the annotations
    meta = {"orig_size": list(orig), "size": list(stored.shape[1:]), "key": ref.key, "source": src, "annotations": anns}
    out = {"key": ref.key, "jpg": jpg, "image": stored, "json": json.dumps(meta).encode()}
    if anns:  # every annotation on the loader's S/4 grid, so the loader never decodes the RLE (data/low_res.py)
        out[LOW_RES_KEY] = encode_low_res(anns, tuple(stored.shape[1:]), img_size)
    return out


class _Prepared(Dataset):
    """Map-style view over the inputs a rank still has to do; workers read and resize in parallel."""

    def __init__(self, refs: list[InputRef], img_size: int, quality: int, need_annotations: bool) -> None:
        self.refs, self.img_size, self.quality, self.need = refs, img_size, quality, need_annotations

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ref = self.refs[i]
        try:
            return prepare(ref, self.img_size, self.quality, self.need)
        except (InputError, AnnotationError, OSError) as e:
            return {"key": ref.key, "skip": {"source": ref.image.describe(), "reason": str(e)}}


def _dist_env(cfg: PrecomputeConfig) -> tuple[int, int, int]:
    rank, world = cfg.rank, cfg.world_size
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else int(world)
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world})")
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def _device(name: str, local_rank: int) -> torch.device:
    """`auto`: this process's GPU (cuda:LOCAL_RANK) when there is one, else the CPU."""
    return choose_device(f"cuda:{local_rank}" if name == "auto" and torch.cuda.is_available() else name)


class _ShardSink:
    """Writes one chunk's samples to a hidden temp tar, renames it into place, then commits its record."""

    def __init__(self, out_dir: Path, rank: int, chunk: int, inputs: list[int]) -> None:
        self.final = out_dir / shard_name(rank, chunk)
        self.tmp = out_dir / f".{self.final.name}.tmp"
        self.record = record_path(out_dir, rank, chunk)
        self.rank, self.chunk, self.inputs = rank, chunk, inputs
        self.file = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.file, encoder=False)
        self.keys: list[str] = []
        self.crc32: dict[str, int] = {}
        self.skipped: list[dict[str, str]] = []
        self.low_res = 0  # samples written with the low-resolution masks member

    def write(self, sample: dict[str, Any]) -> None:
        """Writes one sample and records the crc32 of its members (in name order), for `verify_shards`."""
        self.writer.write(sample)
        self.keys.append(sample["__key__"])
        self.crc32[sample["__key__"]] = sample_crc32(sample)

    def close(self) -> None:
        self.writer.close()  # closes the tar stream, not our file
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.final)
        rec = {"shard": self.final.name, "rank": self.rank, "chunk": self.chunk, "count": len(self.keys)}
        rec |= {"sha256": sha256_file(self.final), "crc32": self.crc32}
        rec |= {"inputs": [self.inputs[0], self.inputs[-1]], "keys": self.keys, "skipped": self.skipped}
        rec["low_res_masks"] = self.low_res
        write_json(self.record, rec)


def make_plan(cfg: PrecomputeConfig | Mapping[str, Any], refs: list[InputRef], world: int) -> dict[str, Any]:
    """The run plan (`_plan.json`): everything a resumed run must share with the first (see manifest.check_plan).

    Checks the settings; hashes the teacher checkpoint (sha256) and the ordered inputs.
    """
    cfg = PrecomputeConfig.of(cfg)
    source, teacher = cfg.source, cfg.teacher
    encoding, precision = cfg.encoding, teacher.precision
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}; choose one of {ENCODINGS}")
    if precision not in PRECISIONS:
        raise ValueError(f"teacher.precision={precision!r}; choose one of {PRECISIONS}")
    if source["kind"] not in SOURCE_KINDS:
        raise ValueError(f"source.kind={source['kind']!r}; use one of {SOURCE_KINDS}")
    described = {"kind": source["kind"], "root": str(source["root"])}
    for extra in ("annotations", "holdout", "part"):  # recorded only where given: older plans stay valid
        if source.get(extra) is not None:
            described[extra] = source[extra] if extra != "annotations" else str(source[extra])
    return {
        "img_size": cfg.img_size,
        "encoding": encoding,
        "teacher": describe_teacher(teacher.variant, teacher.checkpoint) | {"precision": precision},
        "jpeg_quality": cfg.jpeg_quality,
        "source": described,
        "inputs": len(refs),
        "inputs_sha256": inputs_digest([(r.key, ref_identity(r)) for r in refs]),
        "world_size": world,
        "shard_size": cfg.shard_size,
    }


def run(cfg: PrecomputeConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Runs (or resumes) the precompute of this rank, and writes dataset.json if every rank is done.

    Args:
        cfg: a `PrecomputeConfig`, or configs/precompute.yaml composed (a mapping with its fields).

    Returns:
        {"rank", "written" (samples written now), "skipped" (inputs skipped now), "manifest" (path or None)}.
    """
    cfg = PrecomputeConfig.of(cfg)
    source, teacher = cfg.source, cfg.teacher
    img_size, encoding, precision = cfg.img_size, cfg.encoding, teacher.precision
    rank, world, local_rank = _dist_env(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs, skipped_listing = list_inputs(source)
    if cfg.limit is not None:
        refs = refs[: cfg.limit]
    plan = make_plan(cfg, refs, world)
    check_plan(out_dir, plan)
    device = _device(cfg.device, local_rank)
    model, _ = load_teacher(teacher.variant, teacher.checkpoint, img_size, device)
    for stale in out_dir.glob(f".shard-r{rank:03d}-*.tmp"):  # half-written shards of a killed run
        stale.unlink()

    chunks = chunk_ranges(len(refs), rank, world, plan["shard_size"])
    todo = [(c, idx) for c, idx in enumerate(chunks) if not record_path(out_dir, rank, c).is_file()]
    done_inputs = sum(len(idx) for c, idx in enumerate(chunks)) - sum(len(idx) for _, idx in todo)
    flat = [i for _, idx in todo for i in idx]
    data = _Prepared([refs[i] for i in flat], img_size, plan["jpeg_quality"], source["kind"] == "sa1b")
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=list)
    bar = tqdm(
        total=done_inputs + len(flat),
        initial=done_inputs,
        unit="img",
        desc=f"rank {rank}",
        disable=not cfg.progress,
    )
    written = skipped = 0
    pending = iter(todo)
    sink: _ShardSink | None = None
    left = 0
    t0 = time.perf_counter()
    for batch in loader:
        ok = [s for s in batch if "skip" not in s]
        embs = embed(model, [s["image"] for s in ok], precision).cpu() if ok else None
        emb_of = {s["key"]: e for s, e in zip(ok, embs)} if ok else {}
        for s in batch:
            if left == 0:
                chunk, idx = next(pending)
                sink, left = _ShardSink(out_dir, rank, chunk, idx), len(idx)
            if "skip" in s:
                log.warning("skipping %s: %s", s["skip"]["source"], s["skip"]["reason"])
                sink.skipped.append(s["skip"])
                skipped += 1
            else:
                sample = {"__key__": s["key"], "jpg": s["jpg"], "json": s["json"]}
                if LOW_RES_KEY in s:
                    sample[LOW_RES_KEY] = s[LOW_RES_KEY]
                    sink.low_res += 1
                sink.write(sample | encode_embedding(emb_of[s["key"]], encoding))
                written += 1
            left -= 1
            if left == 0:
                sink.close()
        bar.update(len(batch))
        bar.set_postfix(img_per_s=f"{(written + skipped) / (time.perf_counter() - t0):.1f}")
    bar.close()
    done = assemble_manifest(out_dir, plan, skipped_listing)
    if not done:
        log.info("rank %d finished; dataset.json is written by the last rank to finish", rank)
    return {"rank": rank, "written": written, "skipped": skipped, "manifest": str(out_dir / MANIFEST) if done else None}
