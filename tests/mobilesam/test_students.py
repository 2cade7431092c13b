"""The student zoo: every student builds, trains a step, saves beside its sidecar and loads strictly through the
checkpoint door; bad sizes and mismatched files are refused."""

from __future__ import annotations

import json

import pytest
import torch

from mobilesam import build_sam, sam_model_registry
from mobilesam.checkpoint import CheckpointError, open_checkpoint, save_state_dict, student_meta, weights_name
from mobilesam.variants import STUDENTS, VariantError, check_variant

S = 128  # the smallest size every student takes (TinyViT: a multiple of 64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for tiny models on a shared 2-core machine (the other student test modules import it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(model: torch.nn.Module, name: str, folder) -> str:
    path = folder / weights_name(name)
    save_state_dict(model.state_dict(), path, meta={"img_size": S, **student_meta(name)})
    return path


@pytest.mark.parametrize("name", list(STUDENTS))
def test_student_builds_trains_saves_and_loads(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_sam(name, img_size=S)
    encoder = model.image_encoder.train()
    x = torch.randn(2, 3, S, S)

    # A training step: the embedding grid is SAM's, and every weight the embedding uses gets a gradient.
    emb = encoder(x)
    assert emb.shape == (2, 256, S // 16, S // 16)
    emb.square().mean().backward()
    unused = ("head.", "norm_head.")  # TinyViT keeps the ImageNet classifier for the official key set
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None and not n.startswith(unused)]
    assert no_grad == []
    torch.optim.SGD(encoder.parameters(), lr=0.1).step()

    # Saved as mobile_sam.pt (vit_t) or <student>.pt, beside a sidecar that names it; loaded back strictly.
    path = _save(model.eval(), name, tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["student"] == name and meta["variant"] == check_variant(name)
    assert path.name == ("mobile_sam.pt" if name == "tiny_vit_5m" else f"{name}.pt")
    ckpt = open_checkpoint(path)
    assert (ckpt.variant, ckpt.img_size) == (check_variant(name), S)
    loaded = build_sam("auto", path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(loaded.image_encoder(x), model.image_encoder(x))
    assert len(model.state_dict()) == 439 or name != "tiny_vit_5m"


def test_registry_and_aliases() -> None:
    assert {"vit_t", "vit_b", "vit_l", "vit_h", "default"} | set(STUDENTS) <= set(sam_model_registry)
    assert check_variant("tiny_vit_5m") == "vit_t"
    sd = sam_model_registry["tiny_vit_5m"](img_size=S).state_dict()
    assert len(sd) == 439  # the official mobile_sam.pt key set
    with pytest.raises(VariantError, match="'mobilevit'.*repvit_m1_1.*efficientvit_b2"):
        check_variant("mobilevit")


@pytest.mark.parametrize(
    ("name", "size", "message"),
    [
        ("repvit_m0_9", 1040, "neck would give a 66x66 embedding .* grid at this size is 65x65.*1024 or 1056"),
        ("efficientvit_b0", 100, r"img_size=100 must be a positive multiple of 32 \(e.g. 1024, 512, 256, 288, 320\)"),
        ("tiny_vit_11m", 160, r"img_size=160 must be a positive multiple of 64 \(e.g. 1024, 512, 256\)"),
        ("vit_b", 96, "multiple of 64"),
    ],
)
def test_bad_img_size_refused(name: str, size: int, message: str) -> None:
    with pytest.raises(VariantError, match=message):
        build_sam(name, img_size=size)


def test_timm_student_at_a_multiple_of_32() -> None:
    assert build_sam("efficientvit_b0", img_size=96).image_encoder(torch.zeros(1, 3, 96, 96)).shape == (1, 256, 6, 6)


@pytest.fixture(scope="module")
def repvit_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("repvit")
    return _save(build_sam("repvit_m0_9", img_size=S), "repvit_m0_9", folder)


def test_file_of_one_student_given_as_another(repvit_file) -> None:
    with pytest.raises(CheckpointError, match="holds repvit_m0_9 weights .* but repvit_m1_1 was asked for"):
        build_sam("repvit_m1_1", repvit_file)
    with pytest.raises(CheckpointError, match="holds repvit_m0_9 weights .* but vit_t was asked for"):
        build_sam("vit_t", repvit_file)


def test_sidecar_naming_the_wrong_student(repvit_file, tmp_path) -> None:
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(repvit_file.read_bytes())
    wrong.with_suffix(".json").write_text(json.dumps({"img_size": S, "student": "repvit_m1_1"}))
    with pytest.raises(CheckpointError, match=r"(?s)repvit_m1_1, its sidecar\) does not fit.*Shape mismatches"):
        build_sam("auto", wrong)
    wrong.with_suffix(".json").write_text(json.dumps({"img_size": S, "student": "tiny_vit_21m"}))
    with pytest.raises(CheckpointError, match="timm student's weights .* its sidecar names tiny_vit_21m"):
        open_checkpoint(wrong)


def test_unknown_student_lists_the_known_ones(repvit_file) -> None:
    repvit_file.with_suffix(".json").write_text(json.dumps({"img_size": S, "student": "mobilenet_v9"}))
    try:
        with pytest.raises(CheckpointError, match="'mobilenet_v9' is not a model.*tiny_vit_5m, tiny_vit_11m.*repvit"):
            open_checkpoint(repvit_file)
        repvit_file.with_suffix(".json").unlink()
        with pytest.raises(
            CheckpointError,
            match="timm student's weights .* no sidecar names the student: its sidecar repvit_m0_9.json",
        ):
            open_checkpoint(repvit_file)
    finally:
        repvit_file.with_suffix(".json").write_text(json.dumps({"img_size": S, **student_meta("repvit_m0_9")}))


def test_tiny_vit_sizes_told_by_their_weights(tmp_path) -> None:
    """Without a sidecar a TinyViT file is still recognised by its width (and is refused as another TinyViT)."""
    path = save_state_dict(build_sam("tiny_vit_11m", img_size=S).state_dict(), tmp_path / "w.pt")
    assert open_checkpoint(path, img_size=S).variant == "tiny_vit_11m"
    with pytest.raises(CheckpointError, match="holds tiny_vit_11m weights .* but vit_t was asked for"):
        open_checkpoint(path, img_size=S, variant="vit_t")


# Exports: tests/mobilesam/deploy/test_student_graphs.py (every student's encoder graph, one full export).


def test_benchmark_counts_macs_against_a_reference() -> None:
    """`python -m benchmarks students` counts a convolution's multiply-accumulates as out x in x k x k x H x W."""
    from benchmarks.students import counts, gmacs

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert gmacs(conv, torch.zeros(1, 3, 16, 16)) == pytest.approx(8 * 3 * 9 * 16 * 16 / 1e9)
    _, row = counts("efficientvit_b0", 64)
    encoder = build_sam("efficientvit_b0", img_size=64).image_encoder
    assert row[0] == "efficientvit_b0" and float(row[1]) == pytest.approx(
        sum(p.numel() for p in encoder.parameters()) / 1e6, abs=0.005
    )
    g64 = gmacs(encoder, torch.zeros(1, 3, 64, 64))
    assert row[2] == f"{g64:.2f}" and g64 > 0
    # convolutions and EfficientViT's linear attention: MACs grow with the pixel count (4x for twice the side)
    g128 = gmacs(build_sam("efficientvit_b0", img_size=128).image_encoder, torch.zeros(1, 3, 128, 128))
    assert g128 / g64 == pytest.approx(4.0, rel=0.02)
