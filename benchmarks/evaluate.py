"""Evaluation cost per SA-1B-sized image: preparing ground truth and prompts, the student encoder, the decoding.

SA-1B-sized images (1500x2250 originals, 100 RLE masks) at img_size 1024. Interleaved round by round:
- ground truth and prompt inputs for the scored masks: ours (`evaluation.records.protocol_inputs`: each mask decoded
  once at full size, the low-resolution grid pooled from the resized ground truth) against the straightforward
  way (`data.annotations.low_res_masks` and `decode_masks` each decoding every RLE); both give the same arrays;
- then, as absolute figures, the scoring of one image: the vit_t student encoder and the protocol's decoding
  (3 prompt types, student and teacher side) with `image_ious`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks import timing


def straightforward(anns: list[dict], key: str, orig: tuple, size: tuple, img_size: int, n: int) -> tuple:
    from data.annotations import choose_masks, decode_masks, low_res_masks, prompts_in_frame

    ids = choose_masks(len(anns), n, key, 0, None)
    low = low_res_masks(anns, ids, size, img_size)
    return low, decode_masks(anns, ids, size), prompts_in_frame(anns, ids, orig, size)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks evaluate", description=__doc__)
    ap.add_argument("--images", type=int, default=4, help="distinct images")
    ap.add_argument("--image", default="1500x2250", help="HxW of the originals")
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--masks", type=int, default=16, help="masks scored per image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one small image at 256, 4 masks, one round: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.image, args.img_size, args.rounds, args.masks = 1, "150x225", 256, 1, 4
    from data.synthetic import make_sa1b_image
    from evaluation.records import protocol_inputs
    from mobilesam import build_sam
    from mobilesam.protocol import Decoder, build_prompts, image_ious
    from mobilesam.transforms import normalize, preprocess_shape

    torch.set_num_threads(args.threads)
    s, n = args.img_size, args.masks
    orig = timing.image_size(args.image)
    size = preprocess_shape(*orig, s)
    rng = np.random.default_rng(0)
    images = []
    for i in range(args.images):
        _, anns = make_sa1b_image(rng, orig, 12)
        images.append((f"sa_{i}", [anns[j % len(anns)] | {"id": j} for j in range(100)]))

    # the same masks and prompts either way
    key, anns = images[0]
    rec = protocol_inputs(anns, key, orig, size, s, n)
    low, gt, (boxes, points) = straightforward(anns, key, orig, size, s, n)
    assert np.array_equal(rec["low"].numpy(), low) and np.array_equal(rec["gt"].numpy(), gt)
    assert np.array_equal(rec["boxes"].numpy(), boxes) and np.array_equal(rec["points"].numpy(), points)

    timing.print_header(
        f"evaluate: SA-1B-sized image {orig[0]}x{orig[1]} -> {size[0]}x{size[1]}, {n} of 100 masks, img_size {s}"
    )
    prep = timing.interleave(
        {
            "ours (each mask decoded once)": lambda a, k: protocol_inputs(a, k, orig, size, s, n),
            "straightforward (every mask decoded twice)": lambda a, k: straightforward(a, k, orig, size, s, n),
        },
        args.rounds * args.images,
        inputs=lambda r: images[r % len(images)][::-1],
    )
    sam = build_sam("vit_t", img_size=s)
    dec = Decoder(sam.prompt_encoder, sam.mask_decoder)
    image = torch.randint(0, 256, (1, 3, s, s), dtype=torch.uint8)
    image[:, :, size[0] :] = 0
    prompts = build_prompts(rec["points"], rec["boxes"], rec["low"], key, rec["mask_ids"].tolist(), s)
    with torch.no_grad():
        emb = sam.image_encoder(normalize(image, torch.tensor([size])))
        scoring = {
            "student encoder": lambda: sam.image_encoder(normalize(image, torch.tensor([size]))),
            "decoding, 3 prompt types x 2 sides": lambda: image_ious(dec, emb, prompts, size, s, dec, emb, rec["gt"]),
        }
        score_times = {k: timing.repeat(fn, args.rounds, warmup=0) for k, fn in scoring.items()}
    base = "straightforward (every mask decoded twice)"
    rows = [
        ["ground truth + prompt inputs: " + k, prep.cell(k), timing.ratio_text(prep.ratio(k, base))] for k in prep.times
    ]
    rows += [[k, timing.seconds(float(np.median(v))), ""] for k, v in score_times.items()]
    print(timing.table(["per image", "median", f"time ratio to {base.split(' (')[0]}"], rows))
    print(f"(median of {args.rounds} rounds x {args.images} images; scoring: median of {args.rounds} calls)")
    return 0
