"""Evaluation: known answers on generated data (same checkpoint as teacher, hand-counted IoUs), the same numbers
as training validation, empty masks and images without annotations reported, the report files, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from data.labels import read_coco, read_mask_folder
from data.synthetic_labels import labelled_samples, write_labelled_dataset
from evaluation.evaluate import evaluate
from mobilesam import build_sam
from mobilesam.checkpoint import save_state_dict
from mobilesam.protocol import PROMPT_TYPES
from mobilesam.transforms import normalize
from tests.helpers import perturb_

ROOT = Path(__file__).resolve().parents[2]
# Stored embeddings are float16: decoding them instead of the float32 originals flips a few border pixels
SAME_BOUND = 0.99


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread makes each decoder call ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def perturbed_file(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher's weights plus noise (a student that has not matched its teacher), with a sidecar."""
    sam = build_sam("vit_t", teacher_file, img_size=256)
    perturb_(sam.image_encoder, seed=3, scale=0.01)
    path = tmp_path_factory.mktemp("perturbed") / "perturbed_mobile_sam.pt"
    return save_state_dict(sam.state_dict(), path, meta={"img_size": 256, "variant": "vit_t"})


def _masks_in_shards(root: Path, n: int) -> int:
    """Masks the protocol scores with `n` per image, counted from the shards' json."""
    from data.stream import raw_samples

    total = 0
    for shard in sorted(root.glob("shard-*.tar")):
        for s in raw_samples(str(shard)):
            total += min(n, len(json.loads(s["json"].read())["annotations"]))
    return total


def test_same_checkpoint_as_teacher_scores_one_and_a_perturbed_one_less(
    train_shards: Path, teacher_file: Path, perturbed_file: Path, tmp_path: Path
) -> None:
    same = evaluate(teacher_file, train_shards, tmp_path / "same", img_size=256, masks_per_image=3, progress=False)
    assert set(same["vs_teacher"]) == set(PROMPT_TYPES)
    assert all(v >= SAME_BOUND for v in same["vs_teacher"].values()), same["vs_teacher"]
    assert "teacher_vs_ground_truth" not in same  # only with a teacher checkpoint
    data = same["data"]
    assert data["images"] == 16 and data["masks"] == _masks_in_shards(train_shards, 3)
    assert data["images_without_annotations"] == 0 and data["skipped"] == []
    assert same["checkpoint"]["img_size"] == 256 and same["checkpoint"]["variant"] == "vit_t"
    assert len(same["checkpoint"]["sha256"]) == 64
    assert same["protocol"]["masks_per_image"] == 3 and "long side 256" in same["protocol"]["resolution"]

    # the report: metrics.json is what evaluate returned; one CSV row per image; the plots are PNGs
    out = tmp_path / "same"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(same))
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 16 and sum(int(r["masks"]) for r in rows) == data["masks"]
    weighted = sum(float(r["vs_ground_truth_box"]) * int(r["masks"]) for r in rows) / data["masks"]
    assert weighted == pytest.approx(same["vs_ground_truth"]["box"], abs=1e-5)
    for name in ("iou_hist.png", "examples.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300

    worse = evaluate(perturbed_file, train_shards, None, masks_per_image=3, limit=8, examples=0, progress=False)
    for kind in PROMPT_TYPES:
        assert worse["vs_teacher"][kind] < min(SAME_BOUND, same["vs_teacher"][kind])
    assert "files" not in worse  # out_dir=None: nothing written


def test_teacher_checkpoint_decodes_with_its_own_decoder(
    train_shards: Path, teacher_file: Path, perturbed_file: Path
) -> None:
    # a student whose decoder drifted (a fine-tune): with the teacher's own decoder the teacher's masks are the
    # shards' teacher's, and the teacher is scored against the ground truth
    sam = build_sam("vit_t", teacher_file, img_size=256)
    perturb_(sam.mask_decoder, seed=4, scale=0.05)
    kwargs = {"masks_per_image": 2, "limit": 8, "examples": 0, "progress": False}
    own = evaluate(sam, train_shards, None, **kwargs)
    with_teacher = evaluate(sam, train_shards, None, teacher_checkpoint=teacher_file, **kwargs)
    teacher_alone = evaluate(teacher_file, train_shards, None, img_size=256, **kwargs)
    assert with_teacher["teacher"]["matches_shards"] is True and with_teacher["teacher"]["variant"] == "vit_t"
    for kind in PROMPT_TYPES:  # its own decoder on both sides agrees with itself; the teacher's decoder does not
        assert own["vs_teacher"][kind] >= SAME_BOUND > with_teacher["vs_teacher"][kind]
    for kind in PROMPT_TYPES:  # the teacher vs ground truth = the teacher evaluated as a student (up to float16)
        t = with_teacher["teacher_vs_ground_truth"][kind]
        assert t == pytest.approx(teacher_alone["vs_ground_truth"][kind], abs=0.01)
    assert with_teacher["vs_ground_truth"] == own["vs_ground_truth"]  # the student's own masks either way
    wrong = evaluate(sam, train_shards, None, teacher_checkpoint=perturbed_file, **kwargs | {"limit": 1})
    assert wrong["teacher"]["matches_shards"] is False
    assert any("not the teacher that wrote the shards" in n for n in wrong["notes"])


def test_evaluation_reproduces_training_validation(train_shards: Path, teacher_file: Path, perturbed_file) -> None:
    """On the shards a run holds out (the same val_fraction), the report's numbers are the run's val/miou_* and
    val/mse."""
    from data.datamodule import ShardDataModule
    from train.distill import DistillModule

    module = DistillModule(img_size=256, init=str(perturbed_file), teacher={"checkpoint": str(teacher_file)})
    module.eval()
    dm = ShardDataModule(train_shards, batch_size=4, num_workers=0, val_fraction=0.25, val_masks_per_image=3)
    dm.setup("validate")
    images = 0
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            student = module.student_embedding(batch)
            module.mask_agreement(student, batch, i)
            module.val_mse.update(module.embedding_loss(student, batch), weight=student.shape[0])
            images += student.shape[0]
    val = {k: float(module.val_miou[k].compute()) for k in PROMPT_TYPES}
    ours = evaluate(
        module.sam, train_shards, None, masks_per_image=3, batch_size=4, examples=0, progress=False, val_fraction=0.25
    )
    assert ours["data"]["images"] == images == 4 and ours["data"]["shards"] == ["shard-r000-000003.tar"]
    for kind in PROMPT_TYPES:
        assert ours["vs_teacher"][kind] == pytest.approx(val[kind], abs=1e-5)
    assert ours["vs_teacher"]["point"] < 0.99  # a perturbed student: the equality is not 1 == 1
    assert ours["embedding_mse"] == pytest.approx(float(module.val_mse.compute()), rel=1e-5)
    assert evaluate(module.sam, train_shards, None, examples=0, progress=False)["data"]["images"] == 16


def test_normalize_agrees_with_the_models_preprocess() -> None:
    sam = build_sam("vit_t", img_size=256)
    g = torch.Generator().manual_seed(0)
    sizes = [(256, 192), (171, 256), (256, 256)]
    batch = torch.zeros(3, 3, 256, 256, dtype=torch.uint8)
    crops = []
    for i, (h, w) in enumerate(sizes):
        crops.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        batch[i, :, :h, :w] = crops[-1]
    ours = normalize(batch, torch.tensor(sizes))
    assert torch.equal(ours, torch.stack([sam.preprocess(c) for c in crops]))


# ------------------------------------------------------------------------------------ hand-counted IoUs
class PassPrompts(nn.Module):
    """A prompt encoder that passes the prompt's geometry on: (x0, y0, x1, y1) of the box, or of the first point."""

    def forward(self, points, boxes, masks) -> tuple[Tensor, None]:
        if boxes is not None:
            return boxes[:, None].float(), None
        first = points[0][:, 0].float()
        return torch.cat([first, first], dim=1)[:, None], None

    def get_dense_pe(self) -> None:
        return None


class SquareMasks(nn.Module):
    """A mask decoder with known answers on the 64x64 grid of a 256 input (4 px cells). Output 0 (single-mask):
    the box's cells, or 6x6 cells around a point; outputs 1-3 with predicted IoUs 0.1, 0.9, 0.5: nothing, 4x4 cells
    around the point, everything. Left of x = 8 it answers nothing at all."""

    def predict_masks(self, embedding, pe, sparse, dense) -> tuple[Tensor, Tensor]:
        n = sparse.shape[0]
        logits = -torch.ones(n, 4, 64, 64)
        logits[:, 3] = 1.0
        for i, (x0, y0, x1, y1) in enumerate(sparse[:, 0].tolist()):
            if x0 < 8:
                logits[i] = -1.0
                continue
            if (x0, y0) == (x1, y1):
                cx, cy = int(x0 // 4), int(y0 // 4)
                logits[i, 0, cy - 3 : cy + 3, cx - 3 : cx + 3] = 1.0
                logits[i, 2, cy - 2 : cy + 2, cx - 2 : cx + 2] = 1.0
            else:
                logits[i, 0, int(y0 // 4) : int(np.ceil(y1 / 4)), int(x0 // 4) : int(np.ceil(x1 / 4))] = 1.0
        return logits, torch.tensor([[0.95, 0.1, 0.9, 0.5]]).expand(n, 4)


def test_hand_made_masks_score_the_hand_count(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    a = np.zeros((192, 256), np.uint8)  # long side 256 = img_size: no resize, pixels as drawn
    a[24:64, 40:72] = 1  # 32 x 40 = 1280 px
    a[100:104, 100:108] = 2  # 8 x 4 = 32 px
    b = np.zeros((600, 800), np.uint8)  # resized x0.32: one-pixel objects vanish
    b[100, 700] = 1  # its point lands at x = 224: the fake answers a square, the ground truth is empty
    b[300, 10] = 2  # its point lands at x = 3.2: the fake answers nothing, like the ground truth (both empty)
    for name, label in (("a", a), ("b", b), ("c", None)):
        shape = (192, 256) if label is None else label.shape
        Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(images / f"{name}.png")
        if label is not None:
            Image.fromarray(label).save(masks / f"{name}.png")
    sam = build_sam("vit_t", img_size=256)
    sam.prompt_encoder, sam.mask_decoder = PassPrompts(), SquareMasks()
    r = evaluate(sam, read_mask_folder(images, masks), tmp_path / "out", masks_per_image=None, progress=False)
    # point: the best of outputs 1-3 = the 4x4-cell square, inside A and around B; two_points: output 0 = the
    # 6x6-cell square; box: output 0 = the box's cells. Upscaling x4 bilinearly and thresholding at 0 (SAM's
    # postprocessing) cuts one pixel off each corner of a block of cells: 16 x 16 - 4 = 252 px, 24 x 24 - 4 = 572.
    hand = {
        "point": [252 / 1280, 32 / 252, 0.0, 1.0],
        "two_points": [572 / 1280, 32 / 572, 0.0, 1.0],
        "box": [1276 / 1280, 28 / 32, 0.0, 1.0],
    }
    assert "vs_teacher" not in r and any("no vs_teacher" in n for n in r["notes"])
    for kind, values in hand.items():
        assert r["vs_ground_truth"][kind] == pytest.approx(np.mean(values), abs=1e-6)
    d = r["data"]
    assert (d["images"], d["masks"], d["empty_masks"], d["images_without_annotations"]) == (3, 4, 2, 1)
    assert d["both_empty"]["vs_ground_truth"] == {"point": 1, "two_points": 1, "box": 1}
    rows = {row["key"]: row for row in csv.DictReader((tmp_path / "out" / "per_image.csv").open())}
    assert float(rows["a"]["vs_ground_truth_point"]) == pytest.approx((252 / 1280 + 32 / 252) / 2, abs=1e-6)
    assert rows["c"]["masks"] == "0" and rows["c"]["vs_ground_truth_point"] == ""
    assert rows["b"]["empty_masks"] == "2"


def test_labelled_data_with_a_teacher_and_every_format_agree(tmp_path: Path, small_checkpoint: Path) -> None:
    paths = write_labelled_dataset(tmp_path, labelled_samples(3, size=(96, 128), seed=1))
    kw = {"teacher_checkpoint": small_checkpoint, "examples": 0, "progress": False}
    coco = evaluate(small_checkpoint, read_coco(paths["images"], paths["coco"]), None, **kw)
    labels = evaluate(small_checkpoint, read_mask_folder(paths["images"], paths["labels"]), None, **kw)
    assert coco["vs_teacher"] == {k: 1.0 for k in PROMPT_TYPES}  # the same encoder on the same pixels
    assert coco["vs_ground_truth"] == labels["vs_ground_truth"] == coco["teacher_vs_ground_truth"]
    assert coco["data"]["images_without_annotations"] == 1 and coco["data"]["masks"] == 7
    assert coco["teacher"]["embeddings"].startswith("computed")


# ------------------------------------------------------------------------------------------- bad input
def test_a_corrupt_sample_is_skipped_and_counted(train_shards: Path, teacher_file: Path, tmp_path: Path) -> None:
    import shutil
    import tarfile

    root = tmp_path / "shards"
    shutil.copytree(train_shards, root, ignore=shutil.ignore_patterns("_tars"))
    shard = sorted(root.glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tf:
        jpg = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
    with open(shard, "r+b") as f:  # overwrite the JPEG's bytes in place: same length, not a JPEG any more
        f.seek(jpg.offset_data)
        f.write(b"\0" * jpg.size)
    r = evaluate(teacher_file, root, None, img_size=256, masks_per_image=1, limit=4, examples=0, progress=False)
    assert r["data"]["images"] == 3 and r["data"]["skipped_images"] == 1
    assert r["data"]["skipped"][0]["source"].startswith(jpg.name.split(".")[0])


def test_wrong_sizes_and_options_are_refused(train_shards: Path, teacher_file: Path) -> None:
    with pytest.raises(ValueError, match="img_size=256 if this file was"):
        evaluate(teacher_file, train_shards, None)  # no sidecar: the official 1024
    with pytest.raises(ValueError, match="masks_per_image=0"):
        evaluate(teacher_file, train_shards, None, img_size=256, masks_per_image=0)


# Runs a script with Lightning made unimportable: `import lightning` raises ImportError, as where it is not installed
WITHOUT_LIGHTNING = (
    "import runpy, sys; sys.modules['lightning'] = sys.modules['pytorch_lightning'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_command_line_runs_without_lightning(train_shards: Path, teacher_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    cmd = [sys.executable, "-c", WITHOUT_LIGHTNING, "scripts/evaluate.py"]
    cmd += [f"checkpoint={teacher_file}", f"shards={train_shards}"]
    cmd += [f"out_dir={out}", "img_size=256", "masks_per_image=2", "limit=4", "num_workers=1", "progress=false"]
    cmd += ["teacher=vit_t", f"teacher.checkpoint={teacher_file}"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["images"] == 4 and set(metrics) >= {"vs_teacher", "teacher_vs_ground_truth"}
    assert "vs_teacher" in done.stdout and f"{metrics['vs_teacher']['point']:.4f}" in done.stdout
    # the guard itself works: the same way of running fails at once on a module that needs Lightning
    needs = tmp_path / "needs_lightning.py"
    needs.write_text("import data.datamodule\n")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_LIGHTNING, str(needs)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0 and "lightning" in done.stderr


def test_config_names_what_is_missing(tmp_path: Path, teacher_file: Path) -> None:
    from hydra import compose, initialize_config_dir

    from evaluation.evaluate import run

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("evaluate", [f"checkpoint={teacher_file}", f"out_dir={tmp_path}"])
        assert cfg.masks_per_image == 16 and cfg.teacher.variant == "vit_h" and cfg.teacher.checkpoint is None
        with pytest.raises(ValueError, match="dataset=shards needs shards=DIR"):
            run(cfg)
        with pytest.raises(ValueError, match="dataset=coco needs images=DIR"):
            run(compose("evaluate", [f"checkpoint={teacher_file}", f"out_dir={tmp_path}", "dataset=coco"]))
        overrides = [f"checkpoint={teacher_file}", f"out_dir={tmp_path}", "dataset=masks", f"images={tmp_path}"]
        with pytest.raises(ValueError, match="masks=DIR"):
            run(compose("evaluate", overrides))
