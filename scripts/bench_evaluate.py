"""Evaluation cost per SA-1B-sized image (1500x2250 original, 100 RLE masks, img_size 1024), on CPU.

Interleaved round by round in one process:
- ground truth and prompt inputs for the scored masks: ours (`evaluation.records.protocol_inputs`: each mask decoded
  once at full size, the low-resolution grid pooled from the resized ground truth) against the straightforward
  way (`data.annotations.low_res_masks` and `decode_masks` each decoding every RLE);
- then, as absolute figures, the scoring of one image: the vit_t student encoder at 1024 and the protocol's
  decoding (3 prompt types, student and teacher side) with `image_ious`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.annotations import choose_masks, decode_masks, low_res_masks, prompts_in_frame  # noqa: E402
from data.synthetic import make_sa1b_image  # noqa: E402
from evaluation.records import protocol_inputs  # noqa: E402
from mobilesam import build_sam  # noqa: E402
from mobilesam.protocol import Decoder, build_prompts, image_ious  # noqa: E402
from mobilesam.transforms import (
    normalize,  # noqa: E402
    preprocess_shape,  # noqa: E402
)

S = 1024


def straightforward(anns: list[dict], key: str, orig: tuple[int, int], size: tuple[int, int], n: int) -> tuple:
    ids = choose_masks(len(anns), n, key, 0, None)
    return low_res_masks(anns, ids, size, S), decode_masks(anns, ids, size), prompts_in_frame(anns, ids, orig, size)


def _ms(fn, out: list[float]) -> object:
    """Calls fn(), appends its wall time in ms to `out`, returns its value."""
    t = time.perf_counter()
    value = fn()
    out.append((time.perf_counter() - t) * 1000)
    return value


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmark.py evaluate", description=__doc__)
    ap.add_argument("--images", type=int, default=4, help="distinct images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--masks", type=int, default=16, help="masks scored per image")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    orig = (1500, 2250)
    size = preprocess_shape(*orig, S)
    rng = np.random.default_rng(0)
    images = []
    for i in range(args.images):
        _, anns = make_sa1b_image(rng, orig, 12)
        images.append((f"sa_{i}", [anns[j % len(anns)] | {"id": j} for j in range(100)]))

    # the same masks and prompts either way
    key, anns = images[0]
    ours = protocol_inputs(anns, key, orig, size, S, args.masks)
    low, gt, (boxes, points) = straightforward(anns, key, orig, size, args.masks)
    assert np.array_equal(ours["low"].numpy(), low) and np.array_equal(ours["gt"].numpy(), gt)
    assert np.array_equal(ours["boxes"].numpy(), boxes) and np.array_equal(ours["points"].numpy(), points)

    sam = build_sam("vit_t", img_size=S)
    dec = Decoder(sam.prompt_encoder, sam.mask_decoder)
    image = torch.randint(0, 256, (1, 3, S, S), dtype=torch.uint8)
    image[:, :, size[0] :] = 0
    sizes = torch.tensor([size])
    rec = protocol_inputs(images[0][1], images[0][0], orig, size, S, args.masks)
    prompts = build_prompts(rec["points"], rec["boxes"], rec["low"], images[0][0], rec["mask_ids"].tolist(), S)
    times: dict[str, list[float]] = {"ours": [], "straightforward": [], "encoder": [], "decoding": []}
    n = args.masks
    with torch.no_grad():
        for _ in range(args.rounds):
            for key, anns in images:
                _ms(lambda a=anns, k=key: straightforward(a, k, orig, size, n), times["straightforward"])
                _ms(lambda a=anns, k=key: protocol_inputs(a, k, orig, size, S, n), times["ours"])
            emb = _ms(lambda: sam.image_encoder(normalize(image, sizes)), times["encoder"])
            teacher = emb.clone()
            _ms(lambda e=emb, t=teacher: image_ious(dec, e, prompts, size, S, dec, t, rec["gt"]), times["decoding"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"SA-1B-sized image {orig[0]}x{orig[1]} -> {size[0]}x{size[1]}, {args.masks} of 100 masks, "
        f"{args.threads} thread(s), medians of {args.rounds} rounds x {args.images} images"
    )
    print(
        f"ground truth + prompt inputs: ours {med['ours']:.0f} ms, straightforward {med['straightforward']:.0f} ms, "
        f"ratio {med['ours'] / med['straightforward']:.2f}"
    )
    print(
        f"scoring: student encoder {med['encoder']:.0f} ms, decoding 3 prompt types x 2 sides "
        f"{med['decoding']:.0f} ms per image"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
