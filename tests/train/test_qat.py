"""Quantization-aware distillation (`+experiment=qat_int8`): a killed run resumes with its fake-quant state, ends in
one XNNPACK int8 program that a plain ExecuTorch runtime runs like the fake-quantized graph; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tests.train.conftest import compose_train

pytest.importorskip("executorch", reason="needs executorch: pip install 'mobilesam[executorch]'")

IMG = 64  # the smallest TinyViT input: export, fake quantization and lowering are the slow parts


class Killed(RuntimeError):
    """What `Kill` raises (a KeyboardInterrupt would make Lightning ignore SIGINT and exit the process)."""


class Kill(L.Callback):
    """Stops the run like a kill before step `at + 1` (the step-`at` checkpoint is on disk, nothing after it)."""

    module = None

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at:
            Kill.module = pl_module
            raise Killed(f"killed before step {self.at + 1}")


class Probe(L.Callback):
    """Keeps the module's fake-quant state as the resumed run starts, and the module itself."""

    state: dict = {}
    module = None

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        Probe.state = {k: v.clone() for k, v in pl_module.qat.state_dict().items()}
        Probe.module = pl_module


@pytest.fixture(scope="module")
def student_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float vit_t `mobile_sam.pt` at 64 (random, perturbed so that its embedding depends on the image, and no
    branch zeroed by a BatchNorm weight of 0: the optimizer's first step would switch such a branch on and move the
    float function itself); it is also the teacher of the shards below, so the int8 student learns its own float
    embeddings."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict
    from tests.helpers import perturb_keeping_input_

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = perturb_keeping_input_(build_sam("vit_t", img_size=IMG), seed=3)
        for m in sam.image_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.fill_(1.0)
    path = tmp_path_factory.mktemp("student") / "mobile_sam.pt"
    return save_state_dict(sam.state_dict(), path, meta={"img_size": IMG, "variant": "vit_t"})


@pytest.fixture(scope="module")
def shards_64(student_64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data.demo import ensure_demo_shards

    teacher = {"variant": "vit_t", "checkpoint": str(student_64), "precision": "fp32"}
    return ensure_demo_shards(
        tmp_path_factory.mktemp("shards64") / "s",
        n_tars=2,
        images_per_tar=4,
        image_size=(48, 64),
        img_size=IMG,
        shard_size=4,
        teacher=teacher,
    )


@pytest.fixture(scope="module")
def qat_run(student_64: Path, shards_64: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A QAT run killed before its second step, then resumed (ckpt_path=last) to the end: its result and module."""
    from train.run import run

    tmp = tmp_path_factory.mktemp("qat")
    overrides = [
        "+experiment=qat_int8",
        f"paths.root_dir={tmp}",
        f"paths.data_dir={tmp / 'data'}",
        f"paths.output_dir={tmp / 'run'}",
        f"img_size={IMG}",
        f"data.root={shards_64}",
        "data.synthesize=null",
        "data.batch_size=2",
        "data.val_masks_per_image=2",
        "teacher=vit_t",
        f"teacher.checkpoint={student_64}",
        f"model.init={student_64}",
        "model.dry_run_size=0",  # the refusal test runs the dry run
        "model.freeze_observers_at=0.5",
        "model.optimizer.lr=1e-5",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "callbacks.last.every_n_train_steps=1",
        "~callbacks.mask_pictures",
        "demo.enabled=false",
    ]
    with pytest.raises(Killed):
        run(compose_train(overrides + ["+callbacks.kill._target_=tests.train.test_qat.Kill", "+callbacks.kill.at=1"]))
    killed = {k: v.clone() for k, v in Kill.module.qat.state_dict().items()}
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()
    result = run(compose_train(overrides + ["ckpt_path=last", "+callbacks.probe._target_=tests.train.test_qat.Probe"]))
    return {"result": result, "killed": killed, "resumed": Probe.state, "module": Probe.module, "out": tmp / "run"}


@pytest.mark.slow  # the kill/resume pair and its end (lowering, guard): ~140 s of the 2-core machine
def test_killed_run_resumes_with_its_fake_quant_state(qat_run):
    killed, resumed = qat_run["killed"], qat_run["resumed"]
    assert killed.keys() == resumed.keys()
    observers = [k for k in killed if "activation_post_process" in k and k.endswith(("scale", "min_val"))]
    assert len(observers) > 100  # the observers' and fake-quantizers' buffers are in the checkpoint
    for k, v in killed.items():
        assert torch.equal(v, resumed[k]), k
    meta = json.loads((qat_run["out"] / "mobile_sam.json").read_text())
    assert meta["global_step"] == 2  # the resumed run went on from step 1, not from 0


@pytest.mark.slow
def test_qat_ends_in_one_xnnpack_int8_program_that_runs_like_its_graph(qat_run):
    from executorch.runtime import Runtime

    from mobilesam import build_sam
    from mobilesam.deploy import load_predictor
    from mobilesam.deploy.guard import TOLERANCES

    out = qat_run["out"]
    files = qat_run["result"]["deploy"]
    assert files == {"executorch_encoder_int8": out / "encoder_int8.pte", "executorch_decoder": out / "decoder.pte"}
    meta = json.loads((out / "mobile_sam.json").read_text())
    et = meta["executorch"]
    assert et["delegation"]["encoder_int8.pte"]["delegated_subgraphs"] == 1  # one XNNPACK program
    (figures,) = et["check"].values()  # the guard passed at int8 tolerances
    assert figures["embedding_rel_error"] <= TOLERANCES["int8"].embedding
    assert figures["mask_agreement_min"] >= TOLERANCES["int8"].masks
    assert set(meta["files"]) == {"encoder_int8.pte", "decoder.pte"}
    build_sam("vit_t", out / "mobile_sam.pt")  # the float student beside it loads strictly

    # a plain ExecuTorch runtime against the fake-quantized PyTorch graph the run ended with
    module = qat_run["module"].cpu()
    module.qat.eval()
    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module.qat(x)
    got = Runtime.get().load_program(out / "encoder_int8.pte").load_method("forward").execute([x])[0]
    assert got.shape == want.shape == (1, 256, IMG // 16, IMG // 16)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < 0.1, rel  # measured 0.067: XNNPACK's int8 arithmetic rounds where the emulation does not
    # and the pair, through the project's predictor (sidecar sha256 checked)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    (res,) = load_predictor(out / "encoder_int8.pte", out / "decoder.pte").predict(image, points=[30, 20], labels=[1])
    assert res.masks.shape == (1, 48, 64)


def test_refusals_name_the_value_and_the_fix(tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_train(["+experiment=qat_int8", f"paths.root_dir={tmp_path}", "model.init=nowhere/mobile_sam.pt"])
    with pytest.raises(InstantiationException, match=r"model.init=nowhere/mobile_sam.pt does not exist.*PATH"):
        instantiate(cfg.model)
    cfg = compose_train(["+experiment=qat_int8", f"paths.root_dir={tmp_path}"])
    with pytest.raises(InstantiationException, match=r"model.init=None: set model.init=PATH"):
        instantiate(cfg.model)


class _Conv3d(torch.nn.Module):
    """A 1x1x1 3-D convolution over a BxCx1xHxW view: XNNPACK has no 3-D convolution, so it stays outside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(8, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


class _Unlowerable(torch.nn.Module):
    """A stand-in student: a stride-16 stem, then `_Conv3d`."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 16, stride=16)
        self.mix = _Conv3d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.stem(x))


def test_a_student_xnnpack_cannot_take_in_int8_is_refused_before_training(student_64, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    import train.qat

    monkeypatch.setattr(train.qat, "build_sam", lambda name, img_size: SimpleNamespace(image_encoder=_Unlowerable()))
    cfg = compose_train(["+experiment=qat_int8", f"paths.root_dir={tmp_path}", f"model.init={student_64}"])
    with pytest.raises(InstantiationException, match=r"does not lower to XNNPACK in int8.*convolution.*\['mix.conv'\]"):
        instantiate(cfg.model)
