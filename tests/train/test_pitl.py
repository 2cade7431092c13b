"""Prompt-in-the-loop distillation: its teacher masks are the evaluation's, and it beats encoder-only steps."""

from __future__ import annotations

import lightning as L
import torch

from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict
from mobilesam.protocol import decode, decode_all, select
from tests.helpers import perturb_
from tests.train.conftest import cpu_trainer
from tests.train.test_distill import Batches
from train.distill import DistillModule
from train.pitl import PromptInTheLoopModule


def _batches(shards, n_masks: int, count: int) -> list[dict]:
    from data.datamodule import ShardDataModule

    dm = ShardDataModule(
        shards, batch_size=4, num_workers=0, masks_per_image=n_masks, shuffle_buffer=1, seed=0, rank=0, world_size=1
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


@torch.no_grad()
def _miou(module, batches) -> dict[str, float]:
    """The validation protocol's mIoU against the teacher over `batches` (eval mode)."""
    module.eval()
    sums: dict[str, list] = {}
    for batch in batches:
        for _, _, ious in module.batch_ious(module.student_embedding(batch), batch):
            for k, v in ious["vs_teacher"].items():
                sums.setdefault(k, []).append(v)
    return {k: float(torch.cat(v).mean()) for k, v in sums.items()}


def test_teacher_masks_in_the_loss_are_the_evaluation_masks(train_shards, teacher_file):
    (batch,) = _batches(train_shards, 4, 1)
    module = PromptInTheLoopModule(img_size=256, teacher={"checkpoint": str(teacher_file)}, train_decoder=True)
    with torch.no_grad():
        module.sam.mask_decoder.iou_token.weight.add_(1.0)  # the student's decoder drifts; the teacher's must not
    teacher = torch.load(teacher_file, weights_only=True)
    sam = build_sam("vit_t", img_size=256)
    sam.load_state_dict(teacher)
    from train.prompts import initial_prompts

    n = int(batch["num_masks"][0])
    for prompts in initial_prompts(batch["masks"][0, :n], batch["boxes"][0, :n], (256, 256), 256, 6):
        emb = batch["embedding"][:1].float()
        _, t = module._decode_pair(emb, emb, prompts)
        for multimask in (False, True):  # the box/two-point protocol masks, and the point protocol's best of three
            with torch.no_grad():  # as the evaluation decodes
                ref = decode(sam.prompt_encoder, sam.mask_decoder, emb, prompts.points(), prompts.boxes, multimask)
                _, iou = decode_all(sam.prompt_encoder, sam.mask_decoder, emb, prompts.points(), prompts.boxes)
            assert torch.equal(select(t, iou, multimask), ref)


def test_prompt_in_the_loop_beats_encoder_only_steps(train_shards, teacher_file, tmp_path):
    """Same start (the teacher's encoder plus noise), same images, same number of steps and learning rate.

    A random decoder's logits hover near zero, so its "masks" are coin flips; trained SAMs give confident logits.
    The teacher's hypernetwork outputs are scaled up to get that (the shards' embeddings are unchanged).
    """
    teacher = torch.load(teacher_file, weights_only=True)
    for k in teacher:
        if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k:
            teacher[k] = teacher[k] * 30
    confident = save_state_dict(teacher, tmp_path / "confident_teacher.pth")
    start = build_sam("vit_t", img_size=256)
    start.load_state_dict(teacher)
    perturb_(start.image_encoder, seed=21, scale=0.05)
    init = save_state_dict(start.state_dict(), tmp_path / "stage1_mobile_sam.pt")
    batches = _batches(train_shards, 4, 1)
    steps = 6
    common = dict(
        img_size=256,
        init=str(init),
        teacher={"checkpoint": str(confident)},
        scheduler=None,
        optimizer={"_target_": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 0.0},
        bn_train=False,
    )
    results = {}
    for name, module in [
        ("encoder-only", DistillModule(**common)),
        ("prompt-in-the-loop", PromptInTheLoopModule(prompts_per_image=8, refine_rounds=1, **common)),
    ]:
        before = _miou(module, batches)
        L.seed_everything(0)
        cpu_trainer(steps).fit(module, train_dataloaders=Batches(*(batches * steps)))
        after = _miou(module, batches)
        results[name] = (before, after)
    print(f"\nmIoU against the teacher on the training images, before -> after {steps} steps:")
    for name, (before, after) in results.items():
        print(f"  {name:<20}" + "  ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before))
    gain = {name: sum(after.values()) - sum(before.values()) for name, (before, after) in results.items()}
    assert results["encoder-only"][0] == results["prompt-in-the-loop"][0]  # the same start
    assert gain["prompt-in-the-loop"] > gain["encoder-only"], gain
