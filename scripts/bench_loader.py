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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.batch import SampleDecoder  # noqa: E402
from data.codec import as_bytes, decode_jpeg, encode_embedding, encode_jpeg  # noqa: E402
from data.low_res import LOW_RES_KEY, encode_low_res  # noqa: E402
from data.stream import Shard, ShardStream, raw_samples  # noqa: E402
from data.synthetic import make_sa1b_image  # noqa: E402
from mobilesam.transforms import resize_image  # noqa: E402

S = 1024


def build(root: Path, n: int, per_shard: int, size: tuple[int, int], encoding: str) -> list[Shard]:
    """Writes the shards and the naive loader's files (skipped when already there)."""
    marker = root / f"built-v2-{n}-{per_shard}-{encoding}.json"
    if marker.is_file():
        return [Shard(**s) for s in json.loads(marker.read_text())]
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base, anns = make_sa1b_image(rng, size, 100)
    shards, writer, count, path = [], None, 0, root
    for i in range(n):
        img = np.roll(base, 37 * i, axis=1)  # different pixels, same statistics
        orig_jpg = encode_jpeg(img, 90)
        (root / f"orig_{i}.jpg").write_bytes(orig_jpg)
        emb = torch.from_numpy(rng.standard_normal((256, S // 16, S // 16), dtype=np.float32))
        np.save(root / f"emb_{i}.npy", emb.half().numpy())
        jpg = encode_jpeg(resize_image(img, S), 95)
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
        sample[LOW_RES_KEY] = encode_low_res(meta["annotations"], (h, w), S)
        writer.write(sample | encode_embedding(emb, encoding))
        count += 1
    writer.close()
    shards.append(Shard(str(path), count))
    marker.write_text(json.dumps([s.__dict__ for s in shards]))
    return shards


class RleDecoder(SampleDecoder):
    """The loader with the low-resolution masks member hidden: every mask decoded from its RLE."""

    def __call__(self, raw: dict, epoch: int | None) -> dict:
        return super().__call__({k: v for k, v in raw.items() if k != LOW_RES_KEY}, epoch)


def naive_batch(root: Path, ids: list[int]) -> dict:
    """What a straightforward loader does per sample: decode the original, resize, pad, np.load."""
    images, embs = [], []
    for i in ids:
        img = resize_image(np.asarray(Image.open(root / f"orig_{i}.jpg").convert("RGB")), S)
        x = torch.zeros(3, S, S, dtype=torch.uint8)
        t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)
        x[:, : t.shape[1], : t.shape[2]] = t
        images.append(x)
        embs.append(torch.from_numpy(np.load(root / f"emb_{i}.npy")))
    return {"image": torch.stack(images), "embedding": torch.stack(embs)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py loader", description=__doc__)
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--per-shard", type=int, default=32)
    ap.add_argument("--naive-samples", type=int, default=16, help="per round (the naive loader is slow)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--masks", type=int, default=0, help="masks_per_image for ours (0: encoder distillation)")
    ap.add_argument("--encoding", default="float16", choices=["float16", "int8"])
    ap.add_argument("--dir", default=None, help="keep the generated data here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t = time.perf_counter()
        shards = build(root, args.samples, args.per_shard, (1500, 2250), args.encoding)
        print(f"data: {args.samples} samples in {len(shards)} shards under {root} ({time.perf_counter() - t:.0f} s)")
        size = sum(os.path.getsize(s.path) for s in shards) / args.samples / 2**20
        print(f"shard bytes per sample: {size:.2f} MiB; torch {torch.__version__}, 1 thread, 1 process")
        first = next(iter(raw_samples(shards[0].path)))
        member = len(as_bytes(first[LOW_RES_KEY]))
        print(f"low-resolution masks member: {member / 1024:.1f} KiB per sample (100 masks, zlib of packed bits)")
        decoder = SampleDecoder(S, args.encoding, args.masks)
        stream = ShardStream(shards, decoder, args.batch_size, shuffle_buffer=64, train=True)

        rle_stream = ShardStream(
            shards, RleDecoder(S, args.encoding, args.masks), args.batch_size, shuffle_buffer=64, train=True
        )
        ours, naive, rle = [], [], []
        for r in range(args.rounds + 1):  # round 0 warms the page cache and the code paths
            stream.set_epoch(r)
            t, n = time.perf_counter(), 0
            for b in stream:
                n += len(b["key"])
            a = n / (time.perf_counter() - t)
            if args.masks:
                rle_stream.set_epoch(r)
                t, n = time.perf_counter(), 0
                for b in rle_stream:
                    n += len(b["key"])
                    if n >= args.naive_samples:  # the RLE path is slow: a part of the epoch
                        break
                c = n / (time.perf_counter() - t)
            ids = [(r * args.naive_samples + j) % args.samples for j in range(args.naive_samples)]
            t = time.perf_counter()
            for k in range(0, len(ids), args.batch_size):
                naive_batch(root, ids[k : k + args.batch_size])
            b = len(ids) / (time.perf_counter() - t)
            if r:
                ours.append(a)
                naive.append(b)
                rle += [c] if args.masks else []
                extra = f", ours from the RLE {c:.1f} samples/s" if args.masks else ""
                print(f"round {r}: ours {a:.1f} samples/s{extra}, naive {b:.1f} samples/s")
        mo, mn = statistics.median(ours), statistics.median(naive)
        ratio = statistics.median(a / b for a, b in zip(ours, naive))
        print(
            f"loader (masks_per_image={args.masks}, {args.encoding}): ours {mo:.1f} samples/s per core, "
            f"naive {mn:.1f} samples/s per core, ratio {ratio:.1f}x (median of {args.rounds} rounds)"
        )
        if args.masks:
            r2 = statistics.median(a / c for a, c in zip(ours, rle))
            print(
                f"masks from the stored low-resolution member {mo:.1f} samples/s per core, from the RLE "
                f"{statistics.median(rle):.1f}: {r2:.1f}x (median of {args.rounds} rounds)"
            )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
