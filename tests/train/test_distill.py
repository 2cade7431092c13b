"""DistillModule on synthetic batches in the loader's format: loss, gradients, frozen parts, NaN guard."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch

from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict
from mobilesam.transforms import PIXEL_MEAN, normalize
from tests.helpers import perturb_
from tests.train.conftest import cpu_trainer
from train.base import embedding_mse
from train.distill import DistillModule


class Batches:
    """An iterable of ready batches, the way a DataLoader hands them to Lightning."""

    def __init__(self, *batches: dict) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def fake_batch(b: int = 2, s: int = 256, n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[s, s * 3 // 4], [s // 2, s]])[:b]
    images = torch.zeros(b, 3, s, s, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes.tolist()):
        images[i, :, :h, :w] = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.zeros(b, n, s // 4, s // 4, dtype=torch.bool)
    masks[:, :, 5:30, 8:40] = True
    return {
        "image": images,
        "embedding": torch.randn(b, 256, s // 16, s // 16, generator=g).half(),
        "size": sizes,
        "orig_size": sizes * 2,
        "key": [f"sa_{i}" for i in range(b)],
        "masks": masks,
        "boxes": torch.tensor([32.0, 20.0, 160.0, 120.0]).expand(b, n, 4).clone(),
        "points": torch.tensor([90.0, 70.0]).expand(b, n, 2).clone(),
        "num_masks": torch.tensor([n, n - 1])[:b],
        "mask_ids": torch.arange(n).expand(b, n).clone(),
    }


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    sam = perturb_(build_sam("vit_b", img_size=128), seed=3)
    return save_state_dict(sam.state_dict(), tmp_path_factory.mktemp("t") / "teacher.pth")


def test_normalize_zeroes_the_padding_like_sam_preprocess():
    batch = fake_batch()
    x = normalize(batch["image"], batch["size"])
    sam = build_sam("vit_t", img_size=256)
    for i, (h, w) in enumerate(batch["size"].tolist()):
        ref = sam.preprocess(batch["image"][i : i + 1, :, :h, :w])
        assert torch.allclose(x[i : i + 1], ref, atol=1e-6)
    assert x[1, :, 200:].abs().sum() == 0 and PIXEL_MEAN[0] > 0


def test_masked_mse_counts_only_image_cells():
    s, t = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    t[..., 2:, :] = 10.0  # error only in the padded rows
    sizes = torch.tensor([[32, 64]])  # img_size 64 -> 4x4 grid, image covers rows 0-1
    assert embedding_mse(s, t, sizes, 64) == 0
    assert embedding_mse(s, t, None, 64) == 50.0


def test_training_step_trains_only_the_student(teacher_ckpt):
    module = DistillModule(img_size=256, teacher={"variant": "vit_b", "checkpoint": str(teacher_ckpt)})
    teacher = torch.load(teacher_ckpt, weights_only=True)
    assert torch.equal(module.sam.mask_decoder.iou_token.weight, teacher["mask_decoder.iou_token.weight"])
    module.sam.train()
    perturb_(module.sam.image_encoder)  # fresh MBConv branches start at zero on purpose
    loss = module.embedding_loss(module.student_embedding(fake_batch()), fake_batch())
    loss.backward()
    for name, p in module.sam.named_parameters():
        trains = name.startswith("image_encoder.") and ".head." not in f".{name[14:]}" and "norm_head" not in name
        assert p.requires_grad == trains, name
        if trains:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_hyperparameters_are_plain_and_load_weights_only(teacher_ckpt):
    from omegaconf import OmegaConf

    opt = OmegaConf.create({"_target_": "torch.optim.AdamW", "lr": 2e-3, "weight_decay": 0.01})
    module = DistillModule(img_size=256, teacher={"checkpoint": str(teacher_ckpt)}, optimizer=opt)
    buf = io.BytesIO()
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["hyper_parameters"]["optimizer"]["lr"] == 2e-3
    assert all(k.startswith("sam.") for k in loaded["state_dict"])
    assert len(loaded["state_dict"]) == 439


def test_the_student_trains_in_train_mode(teacher_ckpt):
    module = DistillModule(img_size=256, teacher={"checkpoint": str(teacher_ckpt)})
    assert not module.sam.training  # build_sam hands back eval mode
    bn = module.sam.image_encoder.patch_embed.seq[0].bn
    before = bn.running_mean.clone()
    cpu_trainer(1).fit(module, train_dataloaders=Batches(fake_batch()))
    assert not torch.equal(bn.running_mean, before)  # batch statistics were used and tracked
    assert int(bn.num_batches_tracked) == 1


def test_nan_loss_stops_with_a_clear_message(teacher_ckpt):
    module = DistillModule(img_size=256, teacher={"checkpoint": str(teacher_ckpt)})
    batch = fake_batch(b=1)
    batch["embedding"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        cpu_trainer(1).fit(module, train_dataloaders=Batches(batch))


def test_validation_logs_the_protocol_miou(teacher_ckpt):
    module = DistillModule(img_size=256, teacher={"checkpoint": str(teacher_ckpt)})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    batch = fake_batch()
    with torch.no_grad():
        batch["embedding"] = module.student_embedding(batch).half()  # the student IS the teacher here
    (metrics,) = trainer.validate(module, dataloaders=Batches(batch), verbose=False)
    assert metrics["val/mse"] < 1e-5
    assert {"val/miou_point", "val/miou_two_points", "val/miou_box"} <= set(metrics)
    assert metrics["val/miou_box"] > 0.95  # float16 rounding of the stored embedding only
    assert len(module.examples) == 2 and module.examples[0]["student"].shape[-2:] == (256, 192)
