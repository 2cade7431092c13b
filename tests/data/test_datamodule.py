"""The batch contract of ShardDataModule, the split across ranks and workers, and refusals."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.annotations import low_res_masks, prompts_in_frame
from data.batch import SampleDecoder
from data.codec import ShardFormatError, decode_jpeg, npy_view
from data.datamodule import ShardDataModule
from data.manifest import ManifestError
from data.stream import Shard, ShardStream, slot_samples
from tests.data.test_precompute import shard_samples


def test_batches_follow_the_contract(shards: Path) -> None:
    dm = ShardDataModule(shards, batch_size=4, num_workers=0, val_fraction=0.25, masks_per_image=3, img_size=256)
    dm.setup("fit")
    assert sum(s.count for s in dm.val_shards_) == 3 and sum(s.count for s in dm.train_shards) == 9
    stored = shard_samples(shards)
    batches = list(dm.train_dataloader())
    assert [len(b["key"]) for b in batches] == [4, 4, 1] == [len(b["image"]) for b in batches]
    b = batches[0]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 256, 256)
    assert b["embedding"].dtype == torch.float16 and b["embedding"].shape == (4, 256, 16, 16)
    assert b["size"].dtype == b["orig_size"].dtype == b["num_masks"].dtype == b["mask_ids"].dtype == torch.int64
    assert b["masks"].dtype == torch.bool and b["masks"].shape == (4, 3, 64, 64)
    assert b["boxes"].shape == (4, 3, 4) and b["points"].shape == (4, 3, 2) and b["boxes"].dtype == torch.float32
    for i, key in enumerate(b["key"]):
        s = stored[key]
        meta = json.loads(s["json"])
        h, w = meta["size"]
        assert b["size"][i].tolist() == [h, w] and b["orig_size"][i].tolist() == meta["orig_size"]
        assert torch.equal(b["image"][i, :, :h, :w], decode_jpeg(s["jpg"]))
        assert b["image"][i, :, h:].sum() == 0 and b["image"][i, :, :, w:].sum() == 0  # zero padding
        assert np.array_equal(b["embedding"][i].numpy(), npy_view(s["emb.npy"]))
        n = int(b["num_masks"][i])
        ids = b["mask_ids"][i, :n].tolist()
        assert n == min(3, len(meta["annotations"])) and (b["mask_ids"][i, n:] == -1).all()
        ref = low_res_masks(meta["annotations"], ids, (h, w), 256)
        assert np.array_equal(b["masks"][i, :n].numpy(), ref) and not b["masks"][i, n:].any()
        boxes, points = prompts_in_frame(meta["annotations"], ids, meta["orig_size"], (h, w))
        assert np.allclose(b["boxes"][i, :n].numpy(), boxes) and np.allclose(b["points"][i, :n].numpy(), points)
    val = [k for vb in dm.val_dataloader() for k in vb["key"]]
    again = [k for vb in dm.val_dataloader() for k in vb["key"]]
    assert val == again and len(val) == 3 and not set(val) & {k for tb in batches for k in tb["key"]}


def _rank_keys(stream: ShardStream, workers: int) -> list[list[str]]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [b["key"] for b in loader]


# training over 4 shards (shard-level split, 12 samples divide by 4 slots); validation over 2 shards (fewer shards
# than slots: sample-level split, 6 samples over 4 slots, still each exactly once)
@pytest.mark.parametrize(("n_shards", "train"), [(4, True), (2, False)])
def test_two_ranks_two_workers_are_disjoint_and_cover_every_sample(shards: Path, n_shards: int, train: bool) -> None:
    all_shards = [Shard(str(p), 3) for p in sorted(shards.glob("shard-*.tar"))][:n_shards]
    decoder = SampleDecoder(256, "float16")
    seen: list[str] = []
    lengths = []
    for rank in (0, 1):
        stream = ShardStream(all_shards, decoder, 2, rank=rank, world_size=2, num_workers=2, seed=3, train=train)
        stream.set_epoch(1)
        batches = _rank_keys(stream, 2)
        lengths.append((len(batches), len(stream)))
        seen += [k for b in batches for k in b]
    assert len(seen) == len(set(seen)) == 3 * n_shards  # disjoint, and together every sample once
    assert all(n == expected for n, expected in lengths)  # len() is what the loader yields
    if train:
        assert lengths[0] == lengths[1]


def test_uneven_shards_give_every_rank_the_same_number_of_batches(shards: Path) -> None:
    # 3 shards over 2 ranks x 1 worker: shard counts cannot be split evenly
    sh = [Shard(str(p), 3) for p in sorted(shards.glob("shard-*.tar"))][:3]
    decoder = SampleDecoder(256, "float16")
    per_epoch = []
    for epoch in range(3):
        counts, keys = [], Counter()
        for rank in (0, 1):
            stream = ShardStream(sh, decoder, 2, rank=rank, world_size=2, num_workers=0, seed=0)
            stream.set_epoch(epoch)
            batches = list(stream)
            counts.append(len(batches))
            keys.update(k for b in batches for k in b["key"])
            assert sum(len(b["key"]) for b in batches) == 9 // 2  # fixed epoch length per slot
        assert counts[0] == counts[1] == len(stream)  # no rank waits on another (no DDP hang)
        per_epoch.append(keys)
    total = sum(per_epoch, Counter())
    assert set(total) == {
        k for s in sh for k in (x["__key__"] for x in __import__("data.stream").stream.raw_samples(s.path))
    }
    assert max(total.values()) - min(total.values()) <= 2  # carry-over spreads visits evenly over epochs


def test_shard_order_is_reshuffled_each_epoch(shards: Path) -> None:
    sh = [Shard(str(p), 3) for p in sorted(shards.glob("shard-*.tar"))]
    orders = {tuple(s["__key__"] for s in slot_samples(sh, 0, 1, 0, True, e, 12)) for e in range(4)}
    assert len(orders) > 1
    assert all(sorted(o) == sorted(next(iter(orders))) for o in orders)  # each epoch: every sample once


def test_mismatched_shards_are_refused(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="img_size 256 but the run asks for img_size=1024"):
        ShardDataModule(shards, img_size=1024).setup("fit")
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    m = json.loads((bad / "dataset.json").read_text())
    m["embedding"]["encoding"] = "int8"
    (bad / "dataset.json").write_text(json.dumps(m))
    dm = ShardDataModule(bad, batch_size=2, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ShardFormatError, match="manifest declares int8"):
        next(iter(dm.train_dataloader()))
    with pytest.raises(ManifestError, match="precompute"):
        ShardDataModule(tmp_path / "nothing").setup("fit")


def test_int8_shards_decode_transparently(sa1b_tars: list[Path], shards: Path, tmp_path: Path) -> None:
    from data.demo import precompute_config
    from data.precompute import run

    out = tmp_path / "int8"
    run(precompute_config(sa1b_tars[0].parent, out, encoding="int8", shard_size=6, limit=6))
    dm = ShardDataModule(out, batch_size=6, num_workers=0, shuffle_buffer=0)
    dm.setup("fit")
    (b,) = list(dm.train_dataloader())
    ref = shard_samples(shards)
    for i, key in enumerate(b["key"]):
        want = torch.from_numpy(npy_view(ref[key]["emb.npy"]).astype(np.float32))
        err = float((b["embedding"][i].float() - want).abs().max() / want.abs().max())
        assert b["embedding"].dtype == torch.float16 and err < 6e-3
