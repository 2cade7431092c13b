"""Which samples each rank and worker reads in each epoch, and the iterable dataset that streams them as batches.

Slots: a DataLoader worker of a rank is slot `rank * W + worker` of S = world_size * W. Each epoch the shard
list is put in an order (shuffled by (seed, epoch) when training; the same order on every rank) and slot s takes
shards s, s + S, s + 2S, ... of it ("shard-level"). When there are fewer shards than slots, every slot reads all
shards and keeps samples s, s + S, ... ("sample-level"), so no slot is idle.

Training epochs have a fixed length: every slot yields exactly n = total // S samples (so every rank gets the
same number of batches and DDP never waits on a rank that ran dry). A slot's samples form an endless stream over
the shard-epochs 0, 1, 2, ...; training epoch k takes samples [k n, (k + 1) n) of it. When every slot's share of
a shard-epoch holds exactly n samples (the shard counts divide evenly), epoch k is shard-epoch k and every sample
is seen exactly once; otherwise a slot with more than n samples carries the rest into the next epoch and a slot
with fewer starts the next shard order early (at most the difference of the shares is repeated or postponed).
Validation takes shard-epoch 0 once, unshuffled: every sample exactly once over all ranks, batch counts may differ.
"""

from __future__ import annotations

import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from .batch import SampleDecoder, collate
from .codec import Member, ShardFormatError
from .manifest import ManifestError


@dataclass(frozen=True)
class Shard:
    """A shard file and its sample count (from the manifest)."""

    path: str
    count: int


def split_shards(
    manifest: dict[str, Any], root: Path, val_fraction: float, val_shards: Sequence[str] | None
) -> tuple[list[Shard], list[Shard]]:
    """(train, val) shards: the named `val_shards`, else the last shards (by name) holding >= val_fraction of the
    samples (at least one when val_fraction > 0), else no validation split."""
    shards = sorted((Shard(str(root / s["name"]), int(s["count"])) for s in manifest["shards"]), key=lambda s: s.path)
    missing = [s.path for s in shards if not Path(s.path).is_file()]
    if missing:
        raise ManifestError(f"{len(missing)} shards listed in {root}/dataset.json are missing, e.g. {missing[0]}")
    if val_shards:
        names = set(val_shards)
        unknown = names - {Path(s.path).name for s in shards}
        if unknown:
            raise ManifestError(f"val_shards names shards not in {root}/dataset.json: {sorted(unknown)}")
        return [s for s in shards if Path(s.path).name not in names], [s for s in shards if Path(s.path).name in names]
    if val_fraction <= 0:
        return shards, []
    total, n_val, acc = sum(s.count for s in shards), 0, 0
    while n_val < len(shards) - 1 and (n_val == 0 or acc < val_fraction * total):
        acc += shards[-1 - n_val].count
        n_val += 1
    if len(shards) < 2:
        raise ManifestError(f"val_fraction={val_fraction} needs at least 2 shards in {root}; there is {len(shards)}")
    return shards[:-n_val], shards[-n_val:]


def _kept(start: int, n: int, slot: int, n_slots: int) -> int:
    """How many i in [start, start + n) have i % n_slots == slot."""

    def below(x: int) -> int:
        return max(0, (x - slot + n_slots - 1) // n_slots)

    return below(start + n) - below(start)


def shard_order(shards: list[Shard], epoch: int, seed: int, shuffle: bool) -> list[Shard]:
    """The epoch's shard order, identical on every rank."""
    order = list(shards)
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def slot_share(shards: list[Shard], epoch: int, slot: int, n_slots: int, seed: int, shuffle: bool) -> list[tuple]:
    """A slot's part of one shard-epoch: [(shard, first global sample index or None, samples kept)].

    None means shard-level (the whole shard); an index means sample-level (keep i % n_slots == slot)."""
    order = shard_order(shards, epoch, seed, shuffle)
    if len(order) >= n_slots:
        return [(sh, None, sh.count) for sh in order[slot::n_slots]]
    out, start = [], 0
    for sh in order:
        out.append((sh, start, _kept(start, sh.count, slot, n_slots)))
        start += sh.count
    return out


def raw_samples(path: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, as webdataset groups them (members `KEY.EXT` with the same KEY, in order), with
    each member left in the file as a `Member` (read when decoded).

    Only the 512-byte tar headers are read here: the shuffle buffer holds references, not 2 MiB of bytes per
    sample, and the embedding is later read straight into its batch slot. (webdataset's own reader streams the
    tar in 10 KiB blocks into bytes: about 2.7 ms per SA-1B-sized sample, more than the JPEG decode.)
    """
    size = os.path.getsize(path)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                tf.members = []  # headers only; nothing accumulates
                if not m.isreg() or m.name.startswith("__"):
                    continue
                if m.offset_data + m.size > size:
                    raise ShardFormatError(f"{path}: member {m.name} is truncated (the shard is incomplete)")
                key, ext = base_plus_ext(m.name)
                if key is None:
                    continue
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": path}
                current[ext.lower()] = Member(path, m.offset_data, m.size)
    except tarfile.TarError as e:
        raise ShardFormatError(f"{path} is not a readable tar: {e}") from e
    if current is not None:
        yield current


def counted_samples(shard: Shard) -> Iterator[dict[str, Any]]:
    """`raw_samples` of a shard, refusing one whose sample count differs from the manifest's once it has been read
    to its end (a shard cut at a member boundary reads cleanly otherwise: its last samples are simply gone)."""
    n = 0
    for sample in raw_samples(shard.path):
        n += 1
        yield sample
    if n != shard.count:
        raise ShardFormatError(
            f"{shard.path} holds {n} samples but dataset.json says {shard.count}: the shard was cut or replaced. "
            "Run scripts/verify_shards.py on the folder, then delete that shard and its .json record and rerun the "
            "precompute (it redoes exactly that chunk)"
        )


def _share_samples(share: list[tuple], slot: int, n_slots: int, skip: int) -> Iterator[dict[str, Any]]:
    """Raw samples of a slot's share, after skipping the first `skip` of them (whole shards are skipped unread)."""
    for sh, start, kept in share:
        if skip >= kept:
            skip -= kept
            continue
        stream = counted_samples(sh)
        if start is not None:
            stream = (s for i, s in enumerate(stream, start) if i % n_slots == slot)
        yield from islice(stream, skip, None)
        skip = 0


def slot_samples(
    shards: list[Shard], slot: int, n_slots: int, seed: int, shuffle: bool, epoch: int, length: int | None
) -> Iterator[dict[str, Any]]:
    """Raw samples of a slot for one loader epoch.

    length None: the slot's share of shard-epoch `epoch` (validation). Otherwise samples [epoch * length,
    (epoch + 1) * length) of the slot's endless stream over shard-epochs 0, 1, ... (training).
    """
    if length is None:
        yield from _share_samples(slot_share(shards, epoch, slot, n_slots, seed, shuffle), slot, n_slots, 0)
        return
    skip, e = epoch * length, 0
    share = slot_share(shards, e, slot, n_slots, seed, shuffle)
    while skip >= (total := sum(k for _, _, k in share)) and total > 0:
        skip, e = skip - total, e + 1
        share = slot_share(shards, e, slot, n_slots, seed, shuffle)
    left = length
    while left > 0:
        if sum(k for _, _, k in share) == 0:
            raise ValueError(f"slot {slot} of {n_slots} has no samples: fewer samples than ranks x workers")
        for sample in _share_samples(share, slot, n_slots, skip):
            yield sample
            left -= 1
            if left == 0:
                return
        skip, e = 0, e + 1
        share = slot_share(shards, e, slot, n_slots, seed, shuffle)


class ShardStream(IterableDataset):
    """Batches from the shards for one rank; each DataLoader worker streams its own slot (see module docstring).

    Args:
        shards: the split's shards with their counts.
        decoder: turns raw samples into checked arrays.
        batch_size: samples per batch (the last batch of a worker may be smaller unless drop_last).
        rank, world_size: this process's global rank and the number of ranks.
        num_workers: the DataLoader's workers (0 counts as 1 slot).
        train: shuffled shard order per epoch, shuffle buffer, fixed epoch length, random mask choice.
        shuffle_buffer: raw (undecoded) samples held for shuffling, per worker (~2.3 MiB each at 1024).
    """

    def __init__(
        self,
        shards: list[Shard],
        decoder: SampleDecoder,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        train: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.shards, self.decoder, self.batch_size = [s for s in shards if s.count > 0], decoder, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.train, self.shuffle_buffer, self.seed, self.drop_last = train, shuffle_buffer, seed, drop_last
        self.epoch = 0
        self.n_slots = world_size * self.workers
        total = sum(s.count for s in self.shards)
        self.slot_length = total // self.n_slots if train else None
        if train and self.slot_length == 0:
            raise ValueError(
                f"the training split has {total} samples, fewer than ranks x workers = {self.n_slots}: "
                "lower num_workers or add data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def slot_count(self, slot: int) -> int:
        """Samples that `slot` yields per epoch."""
        if self.slot_length is not None:
            return self.slot_length
        return sum(k for _, _, k in slot_share(self.shards, 0, slot, self.n_slots, self.seed, False))

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        slots = range(self.rank * self.workers, (self.rank + 1) * self.workers)
        return sum(self._batches(self.slot_count(s)) for s in slots)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise ValueError(f"ShardStream was built for {self.workers} workers but runs in {info.num_workers}")
        slot = self.rank * self.workers + worker
        epoch = self.epoch if self.train else 0
        raw = slot_samples(self.shards, slot, self.n_slots, self.seed, self.train, epoch, self.slot_length)
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(hash((self.seed, epoch, slot)))
            raw = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(raw)
        buf = []
        for sample in raw:  # shuffled before decoding: the buffer holds compressed bytes
            buf.append(self.decoder(sample, epoch if self.train else None))
            if len(buf) == self.batch_size:
                yield collate(buf, self.decoder.img_size, self.decoder.n)
                buf = []
        if buf and not self.drop_last:
            yield collate(buf, self.decoder.img_size, self.decoder.n)
