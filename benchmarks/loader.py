"""Loader throughput on SA-1B-sized data: the project's shard loader against a naive per-sample loader.

Builds (once, in --dir) shards as the precompute writes them at img_size 1024: 1500x2250 originals re-encoded
to 1024x683 JPEGs, 2 MiB float16 embeddings, SA-1B-like json (100 RLE masks of ~40 distinct shapes) and the
low-resolution masks member (`data/low_res.py`); and, for the naive loader, the originals as JPEG files beside one
.npy embedding file per image. Then, interleaved round by round in one process on one thread (samples/s per core):
- ours: ShardStream (tar read, shuffle buffer, JPEG decode, checks, batch of 8 padded to 1024, one copy of the
  embedding into the batch; with --masks N, N masks read from the stored low-resolution member);
- ours, RLE path (only with --masks): the same with the member hidden, so each mask is decoded from its RLE;
- naive: per sample, full-resolution JPEG decode (PIL) + resize to 1024 + pad + np.load of the embedding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import timing


def build(root: Path, n: int, per_shard: int, size: tuple[int, int], encoding: str, s: int) -> list:
    """Writes the shards and the naive loader's files (skipped when already there)."""
    import webdataset as wds

    from data.codec import decode_jpeg, encode_embedding, encode_jpeg
    from data.low_res import LOW_RES_KEY, encode_low_res
    from data.stream import Shard
    from data.synthetic import make_sa1b_image
    from mobilesam.transforms import resize_image

    marker = root / f"built-v3-{n}-{per_shard}-{encoding}-{size[0]}x{size[1]}-{s}.json"
    if marker.is_file():
        return [Shard(**sh) for sh in json.loads(marker.read_text())]
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base, anns = make_sa1b_image(rng, size, 100)
    shards, writer, count, path = [], None, 0, root
    for i in range(n):
        img = np.roll(base, 37 * i, axis=1)  # different pixels, same statistics
        (root / f"orig_{i}.jpg").write_bytes(encode_jpeg(img, 90))
        emb = torch.from_numpy(rng.standard_normal((256, s // 16, s // 16), dtype=np.float32))
        np.save(root / f"emb_{i}.npy", emb.half().numpy())
        jpg = encode_jpeg(resize_image(img, s), 95)
        h, w = decode_jpeg(jpg).shape[1:]
        meta = {"orig_size": list(size), "size": [h, w], "key": f"sa_{i}", "source": f"orig_{i}.jpg"}
        meta["annotations"] = [anns[j % len(anns)] | {"id": j} for j in range(100)]
        if i % per_shard == 0:
            if writer is not None:
                writer.close()
                shards.append(Shard(str(path), count))
            path, count = root / f"shard-{i // per_shard:04d}.tar", 0
            writer = wds.TarWriter(str(path), encoder=False)
        sample = {"__key__": f"sa_{i}", "jpg": jpg, "json": json.dumps(meta).encode()}
        sample[LOW_RES_KEY] = encode_low_res(meta["annotations"], (h, w), s)
        writer.write(sample | encode_embedding(emb, encoding))
        count += 1
    writer.close()
    shards.append(Shard(str(path), count))
    marker.write_text(json.dumps([sh.__dict__ for sh in shards]))
    return shards


def rle_decoder(s: int, encoding: str, masks: int):
    """The loader's decoder with the low-resolution masks member hidden: every mask decoded from its RLE."""
    from data.batch import SampleDecoder
    from data.low_res import LOW_RES_KEY

    class RleDecoder(SampleDecoder):
        def __call__(self, raw: dict, epoch: int | None) -> dict:
            return super().__call__({k: v for k, v in raw.items() if k != LOW_RES_KEY}, epoch)

    return RleDecoder(s, encoding, masks)


def naive_batch(root: Path, ids: list[int], s: int) -> dict:
    """What a straightforward loader does per sample: decode the original, resize, pad, np.load."""
    from PIL import Image

    from mobilesam.transforms import resize_image

    images, embs = [], []
    for i in ids:
        img = resize_image(np.asarray(Image.open(root / f"orig_{i}.jpg").convert("RGB")), s)
        x = torch.zeros(3, s, s, dtype=torch.uint8)
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # a writable copy
        x[:, : t.shape[1], : t.shape[2]] = t
        images.append(x)
        embs.append(torch.from_numpy(np.load(root / f"emb_{i}.npy")))
    return {"image": torch.stack(images), "embedding": torch.stack(embs)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks loader", description=__doc__)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--naive-samples", type=int, default=16, help="per round (the naive loader is slow)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--masks", type=int, default=0, help="masks_per_image for ours (0: encoder distillation)")
    ap.add_argument("--encoding", default="float16", choices=["float16", "int8"])
    ap.add_argument("--image", default="1500x2250", help="HxW of the originals")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="keep the generated data here (default: a temp dir, removed)")
    ap.add_argument("--quick", action="store_true", help="8 small samples at 256 with 4 masks, one round: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.per_shard, args.naive_samples, args.rounds, args.batch_size = 8, 4, 4, 1, 4
        args.masks, args.image, args.img_size = 4, "150x225", 256
    from data.batch import SampleDecoder
    from data.codec import as_bytes
    from data.low_res import LOW_RES_KEY
    from data.stream import ShardStream, raw_samples

    torch.set_num_threads(1)
    s, orig = args.img_size, timing.image_size(args.image)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t, shards = timing.timed(build, root, args.samples, args.per_shard, orig, args.encoding, s)
        print(f"data: {args.samples} samples in {len(shards)} shards under {root} ({t:.0f} s)")
        size = sum(os.path.getsize(sh.path) for sh in shards) / args.samples / 2**20
        member = len(as_bytes(next(iter(raw_samples(shards[0].path)))[LOW_RES_KEY]))
        print(f"shard bytes per sample {size:.2f} MiB; low-resolution masks member {member / 1024:.1f} KiB per sample")
        opts = {"shuffle_buffer": 64, "train": True}
        streams = {"ours": ShardStream(shards, SampleDecoder(s, args.encoding, args.masks), args.batch_size, **opts)}
        if args.masks:
            rle = rle_decoder(s, args.encoding, args.masks)
            streams["ours, masks from the RLE"] = ShardStream(shards, rle, args.batch_size, **opts)

        def ours(epoch: int, name: str = "ours") -> int:
            streams[name].set_epoch(epoch)
            limit = args.samples if name == "ours" else args.naive_samples  # the RLE path is slow: part of an epoch
            n = 0
            for b in streams[name]:
                n += len(b["key"])
                if n >= limit:
                    break
            return n

        def naive(epoch: int) -> int:
            ids = [(epoch * args.naive_samples + j) % args.samples for j in range(args.naive_samples)]
            for k in range(0, len(ids), args.batch_size):
                naive_batch(root, ids[k : k + args.batch_size], s)
            return len(ids)

        contenders = {"ours": ours, "naive": naive}
        if args.masks:
            contenders["ours, masks from the RLE"] = lambda epoch: ours(epoch, "ours, masks from the RLE")
        timing.print_header(
            f"loader: masks_per_image={args.masks}, {args.encoding} embeddings, {orig[0]}x{orig[1]} originals at "
            f"img_size {s}, one process"
        )
        # round -1 warms the page cache and the code paths; then each time becomes seconds per sample
        counts: dict[str, int] = {}
        rounds = timing.interleave(
            contenders, args.rounds, inputs=lambda r: (r + 1,), on_round=lambda _, o: counts.update(o)
        )
        rounds.times = {k: [t / counts[k] for t in v] for k, v in rounds.times.items()}
        rows = [
            [k, rounds.cell(k), f"{1 / rounds.median(k):.1f}", timing.ratio_text(rounds.ratio(k, "ours"))]
            for k in contenders
        ]
        print(timing.table(["loader", "median per sample", "samples/s per core", "time ratio to ours"], rows))
        print(rounds.note("ours"))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0
