"""What one training step of each fine-tuning recipe costs: memory kept for backward, GFLOP and CPU time.

Runs one optimisation step of each fine-tuning mode on a real batch (generated labelled images, made into shards by
the same `CustomDataModule` the experiments use, at `--img-size`) and measures, per step:
- the bytes autograd saves for the backward pass (every saved tensor, counted once per storage), plus weights,
  gradients and AdamW's two moments of what trains: the device memory a step needs beyond the CUDA context and
  the allocator's slack, in fp32 (bf16 autocast stores most activations at half the size);
- the floating-point operations of forward and backward (torch.utils.flop_counter, with a corrected count for
  grouped convolutions' backward);
- the step's wall time on this machine's CPU (median of --repeat steps after the counted one).

Modes: `masks` (finetune_masks' default: image and prompt encoders frozen, the decoder trains from stored
embeddings), `masks_encoder` (model.freeze=[prompt_encoder]: the image encoder trains too), `domain`
(finetune_domain: the encoder distils the stored teacher embeddings; distill_1pct's stage 1 is the same step
without the padding mask) and `pitl` (distill_1pct_pitl's stage 2: 16 prompts per image, 2 refinement rounds,
teacher and student decoders), each at the experiment's batch settings (`pitl`: --batch-pitl images).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import timing


def _conv_backward_flops(grad_out, x, w, _b, _s, _p, _d, transposed, _op, _g, output_mask, out_shape=None, **_):
    """Each gradient of a convolution costs its forward: 2 x outputs x (input channels / groups) x kernel.
    (torch's own formula ignores `groups` here and counts a depthwise convolution's backward ~C times over.)"""
    forward = 2 * math.prod(x if transposed else grad_out) * math.prod(w[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


CONV_BACKWARD = {torch.ops.aten.convolution_backward: _conv_backward_flops}


def _saved_bytes(fn, *args: Any) -> tuple[Any, int]:
    """Runs fn(*args) and counts the bytes of the distinct storages autograd saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(seen.values())


def _module(mode: str, init: Path, img_size: int, prompts: int, rounds: int):
    from train.distill import DistillModule
    from train.finetune import FinetuneMasksModule

    opt = {"_target_": "torch.optim.AdamW", "lr": 1e-4}
    common = {"img_size": img_size, "init": str(init), "optimizer": opt, "scheduler": None}
    if mode == "domain":
        m = DistillModule(decoder_from="init", mask_padding=True, **common)
    elif mode == "pitl":
        from train.pitl import PromptInTheLoopModule

        m = PromptInTheLoopModule(prompts_per_image=prompts, refine_rounds=rounds, decoder_from="init", **common)
    else:
        freeze = ["image_encoder", "prompt_encoder"] if mode == "masks" else ["prompt_encoder"]
        m = FinetuneMasksModule(freeze=freeze, prompts_per_image=prompts, refine_rounds=rounds, **common)
    m.configure_trainable()
    m.train()
    if mode not in ("domain", "pitl"):
        for part in m._freeze:
            getattr(m.sam, part).eval()
    return m


def _loss(m, batch: dict[str, Any]) -> torch.Tensor:
    return m.losses(batch)["loss"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks finetune", description=__doc__)
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--modes", default="masks,masks_encoder,domain,pitl")
    ap.add_argument("--batch-masks", type=int, default=2, help="images per step in the masks modes (default: 2)")
    ap.add_argument("--batch-domain", type=int, default=8, help="images per step in domain mode (default: 8)")
    ap.add_argument("--batch-pitl", type=int, default=8, help="images per step in pitl mode (default: 8)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per image (default: 16)")
    ap.add_argument("--rounds", type=int, default=2, help="corrective rounds (default: 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per mode (default: 3)")
    ap.add_argument("--quick", action="store_true", help="the masks mode at 256, 1 image, 2 prompts: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.img_size, args.modes, args.batch_masks, args.prompts, args.rounds, args.repeat = 256, "masks", 1, 2, 1, 1
        args.batch_domain = args.batch_pitl = 1

    from torch.utils.flop_counter import FlopCounterMode

    from data.custom import CustomDataModule
    from data.synthetic_labels import labelled_samples, write_labelled_dataset
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict

    s = args.img_size
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init = save_state_dict(build_sam("vit_t", img_size=s).state_dict(), tmp / "mobile_sam.pt", meta={"img_size": s})
        n = max(args.batch_masks, args.batch_domain, args.batch_pitl)
        paths = write_labelled_dataset(tmp / "labelled", labelled_samples(n_images=2 * n, size=(s * 3 // 4, s), seed=0))
        teacher = {"variant": "vit_t", "checkpoint": str(init), "precision": "fp32"}
        dm = CustomDataModule(
            images=paths["images"], annotations=paths["coco"], cache_dir=tmp / "cache", teacher=teacher,
            img_size=s, holdout=0.0, precompute={"num_workers": 0, "progress": False}, batch_size=n,
            num_workers=0, masks_per_image=args.prompts, shuffle_buffer=0, rank=0, world_size=1,
        )  # fmt: skip
        dm.setup("fit")
        full = next(iter(dm.train_dataloader()))
        if len(full["key"]) < n:
            raise SystemExit(f"the generated data gave a batch of {len(full['key'])} images, not {n}")
        timing.print_header(f"finetune: one optimisation step per recipe at img_size {s}, fp32 on the CPU")
        rows = []
        for mode in args.modes.split(","):
            bs = {"domain": args.batch_domain, "pitl": args.batch_pitl}.get(mode, args.batch_masks)
            batch = {k: v[:bs] if isinstance(v, (torch.Tensor, list)) else v for k, v in full.items()}
            m = _module(mode, init, s, args.prompts, args.rounds)
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
            trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
            weights = sum(p.numel() * p.element_size() for p in m.sam.parameters())
            state = trainable * 4 * 3  # gradient + AdamW's two moments, fp32
            with FlopCounterMode(display=False, custom_mapping=CONV_BACKWARD) as fc:
                loss, saved = _saved_bytes(_loss, m, batch)
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

            def step(m=m, opt=opt, batch=batch) -> None:
                _loss(m, batch).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            times = timing.repeat(step, args.repeat, warmup=0)  # the counted step above warmed up
            rows.append(
                [mode, len(batch["key"]), f"{trainable / 1e6:.2f}", f"{saved / 2**30:.2f} GiB",
                 f"{(weights + state) / 2**30:.2f} GiB", f"{fc.get_total_flops() / 1e9:.0f}",
                 timing.seconds(statistics.median(times), "s")]
            )  # fmt: skip
        head = ["mode", "images", "trains (M params)", "saved for backward", "+ weights/grads/AdamW", "GFLOP/step"]
        print(timing.table(head + ["median CPU time per step"], rows))
        print(f"(median of {args.repeat} steps after the counted one)")
    return 0
