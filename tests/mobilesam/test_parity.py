"""Numerical parity with the official MobileSAM and SAM code on the same non-trivial random weights."""

from __future__ import annotations

import pytest
import torch

from mobilesam import build_sam
from tests.helpers import official_registry, perturb_, rel_err

TOL = 1e-3


@torch.no_grad()
def test_vit_t_embedding_and_decoder_match_official_at_1024(vit_t_pair):
    official, ours = vit_t_pair
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    emb_ref = official.image_encoder(x)
    emb = ours.image_encoder(x)
    assert emb.shape == (1, 256, 64, 64)
    assert rel_err(emb, emb_ref) < TOL

    pe_ref, pe = official.prompt_encoder.get_dense_pe(), ours.prompt_encoder.get_dense_pe()
    assert rel_err(pe, pe_ref) < 1e-6
    prompts = {
        "point": dict(points=(torch.tensor([[[500.0, 300.0]]]), torch.tensor([[1]])), boxes=None),
        "points": dict(points=(torch.tensor([[[500.0, 300.0], [80.0, 900.0]]]), torch.tensor([[1, 0]])), boxes=None),
        "box": dict(points=None, boxes=torch.tensor([[100.0, 200.0, 600.0, 700.0], [0.0, 0.0, 64.0, 32.0]])),
        "box+point": dict(
            points=(torch.tensor([[[300.0, 400.0]]]), torch.tensor([[0]])),
            boxes=torch.tensor([[100.0, 200.0, 600.0, 700.0]]),
        ),
    }
    mask_in = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(2))
    for name, p in prompts.items():
        for masks in (None, mask_in):
            if masks is not None and p["boxes"] is not None and len(p["boxes"]) > 1:
                continue
            s_ref, d_ref = official.prompt_encoder(p["points"], p["boxes"], masks)
            s, d = ours.prompt_encoder(p["points"], p["boxes"], masks)
            assert rel_err(s, s_ref) < 1e-6, name
            assert rel_err(d, d_ref) < 1e-5, name
            for multimask in (True, False):
                m_ref, iou_ref = official.mask_decoder(emb_ref, pe_ref, s_ref, d_ref, multimask)
                m, iou = ours.mask_decoder(emb_ref, pe_ref, s_ref, d_ref, multimask)
                assert m.shape == m_ref.shape == (s.shape[0], 3 if multimask else 1, 256, 256)
                assert rel_err(m, m_ref) < TOL, name
                assert rel_err(iou, iou_ref) < TOL, name


@torch.no_grad()
def test_postprocess_matches_official_and_skips_padding(vit_t_pair):
    official, ours = vit_t_pair
    logits = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    for input_size, original in [((683, 1024), (1500, 2250)), ((1024, 768), (1024, 768)), ((1024, 1024), (37, 37))]:
        ref = official.postprocess_masks(logits, input_size, original)
        out = ours.postprocess_masks(logits, input_size, original)
        assert out.shape == ref.shape == (2, 3, *original)
        assert rel_err(out, ref) < 1e-5
        assert torch.equal(out > 0, ref > 0)


def _official_sam_at(img_size: int, sizes: tuple):
    """segment-anything's own classes built by hand at a reduced img_size (its builder only makes 1024)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, depth, heads, global_idx = sizes
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_idx,
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


@torch.no_grad()
def test_vit_b_matches_segment_anything_at_reduced_size():
    from mobilesam.variants import VIT_SIZES

    torch.manual_seed(0)
    official = perturb_(_official_sam_at(320, VIT_SIZES["vit_b"]), seed=4)
    ours = build_sam("vit_b", img_size=320)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(5))
    emb_ref = official.image_encoder(x)
    emb = ours.image_encoder(x)
    assert emb.shape == (2, 256, 20, 20)  # 20 tokens a side: windows of 14 need padding
    assert rel_err(emb, emb_ref) < TOL
    pe = official.prompt_encoder.get_dense_pe()
    pts = (torch.tensor([[[100.0, 50.0], [10.0, 300.0]]]), torch.tensor([[1, 0]]))
    s, d = official.prompt_encoder(pts, None, None)
    m_ref, iou_ref = official.mask_decoder(emb_ref[:1], pe, s, d, True)
    m, iou = ours.mask_decoder(emb[:1], ours.prompt_encoder.get_dense_pe(), *ours.prompt_encoder(pts, None, None), True)
    assert m.shape == (1, 3, 80, 80)
    assert rel_err(m, m_ref) < TOL and rel_err(iou, iou_ref) < TOL


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_vit_state_dict_layout_equals_official(variant):
    with torch.device("meta"):
        ref = official_registry()[variant]().state_dict()
        ours = build_sam(variant).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_vit_t_state_dict_layout_equals_official(vit_t_pair):
    official, ours = vit_t_pair
    ref, own = official.state_dict(), ours.state_dict()
    assert len(own) == 439
    assert list(own) == list(ref)
    assert all(own[k].shape == ref[k].shape for k in ref)


def test_checkpoint_round_trip_with_official(tmp_path, vit_t_pair):
    official, ours = vit_t_pair
    path = tmp_path / "mobile_sam.pt"
    torch.save(official.state_dict(), path)
    loaded = build_sam("vit_t", path)
    for k, v in official.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # ours -> file -> the official loader (strict)
    back = tmp_path / "back_mobile_sam.pt"
    torch.save(loaded.state_dict(), back)
    reloaded = official_registry()["vit_t"](checkpoint=str(back))
    for k, v in reloaded.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("noise_res", [8, 64], ids=["object_like", "noisy"])
def test_binary_upsampling_equals_dense_threshold(noise_res):
    """The border-only upsampling gives the same masks as interpolating everything, on both of its paths."""
    import torch.nn.functional as F

    from mobilesam.mask_ops import upsample_binary

    g = torch.Generator().manual_seed(noise_res)
    logits = F.interpolate(torch.randn(2, 3, noise_res, noise_res, generator=g) * 3, (171, 256), mode="bilinear")
    for size in [(375, 561), (171, 256), (60, 90), (1000, 7)]:
        ref = F.interpolate(logits, size, mode="bilinear", align_corners=False) > 0.5
        out = upsample_binary(logits, size, threshold=0.5)
        assert out.shape == ref.shape and out.dtype == torch.bool
        assert (out != ref).sum() <= 2  # float rounding of the interpolation weights at exact ties
