"""The ONNX graphs under onnxruntime against the PyTorch model, and the torch-free `OnnxPredictor`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mobilesam import SAM, SamPredictor
from mobilesam.deploy.onnx_graphs import DecoderGraph
from mobilesam.deploy.onnx_runtime import OnnxPredictor
from mobilesam.files import sha256_file
from mobilesam.prompts import PromptError
from mobilesam.transforms import resize_image
from tests.helpers import rel_err

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

IMG = np.random.default_rng(5).integers(0, 255, (300, 410, 3), dtype=np.uint8)  # resized to 188 x 256


@pytest.fixture(scope="module")
def exported(exported_small):
    """The 256 vit_t checkpoint (its size known only from its sidecar) exported with `--format onnx --quantize`
    (once per session, shared with test_runtimes.py and test_executorch.py)."""
    return exported_small("onnx")


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_the_sidecar_lists_every_file_with_its_sha256(exported):
    meta = json.loads((exported / "mobile_sam.json").read_text())
    names = {f"{role}{tag}.onnx" for role in ("encoder", "decoder") for tag in ("", "_int8")}
    for name in names:
        assert meta["files"][name] == sha256_file(exported / name), name
    assert set(meta["onnx"]["files"]) == names
    assert meta["onnx"]["opset"] == 18 and "RGB uint8 HxWx3" in meta["onnx"]["encoder_input"]


def test_every_file_says_the_img_size_it_expects(exported):
    for name in ("encoder", "decoder", "encoder_int8", "decoder_int8"):
        meta = {p.key: p.value for p in onnx.load(exported / f"{name}.onnx").metadata_props}
        assert meta["img_size"] == "256" and meta["variant"] == "vit_t", name
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for g in (onnx.load(exported / "encoder.onnx").graph, onnx.load(exported / "decoder.onnx").graph)
        for v in [*g.input, *g.output]
    }
    assert shapes["image"] == ["height", "width", 3]
    assert shapes["image_embeddings"] == [1, 256, 16, 16]
    assert shapes["point_coords"] == [1, "num_points", 2] and shapes["point_labels"] == [1, "num_points"]
    assert shapes["mask_input"] == [1, 1, 64, 64] and shapes["has_mask_input"] == [1] and shapes["orig_im_size"] == [2]
    assert shapes["masks"] == [1, 4, "orig_height", "orig_width"]
    assert shapes["iou_predictions"] == [1, 4] and shapes["low_res_masks"] == [1, 4, 64, 64]


@pytest.mark.parametrize("shape", [(256, 192), (144, 256), (256, 256)])
def test_encoder_matches_pytorch(exported, model, shape):
    image = np.random.default_rng(shape[1]).integers(0, 255, (*shape, 3), dtype=np.uint8)
    (emb,) = _session(exported / "encoder.onnx").run(None, {"image": image})
    with torch.no_grad():
        ref = model.image_encoder(model.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None]))
    assert rel_err(torch.from_numpy(emb), ref) < 1e-3


# (points in the resized frame, labels, box or None): one point, several points, a box, a box with a point
PROMPTS = {
    "point": ([[120.0, 80.0]], [1], None),
    "multi_point": ([[120.0, 80.0], [30.0, 150.0], [200.0, 20.0], [60.0, 60.0]], [1, 0, 1, 0], None),
    "box": (None, None, [40.0, 30.0, 200.0, 170.0]),
    "box_and_point": ([[120.0, 80.0]], [0], [40.0, 30.0, 200.0, 170.0]),
}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_decoder_matches_the_pytorch_predictor(exported, model, prompt):
    """From the same resized image: embedding, logits at the original size, low-res logits, IoUs, masks."""
    resized = np.asarray(resize_image(IMG, 256))
    predictor = SamPredictor(model)
    predictor.set_torch_image(torch.from_numpy(resized).permute(2, 0, 1)[None], IMG.shape[:2])
    (emb,) = _session(exported / "encoder.onnx").run(None, {"image": resized})
    assert rel_err(torch.from_numpy(emb), predictor.features) < 1e-3

    points, labels, box = PROMPTS[prompt]
    coords = np.zeros((0, 2)) if points is None else np.array(points)
    labs = np.zeros(0) if labels is None else np.array(labels, float)
    # SAM's ONNX convention: box corners are points labelled 2 and 3, else one padding point labelled -1
    extra, extra_labels = (np.reshape(box, (2, 2)), [2, 3]) if box else (np.zeros((1, 2)), [-1])
    feeds = {
        "image_embeddings": predictor.features.numpy(),  # the decoder is compared on the same embedding
        "point_coords": np.concatenate([coords, extra])[None].astype(np.float32),
        "point_labels": np.concatenate([labs, extra_labels])[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(IMG.shape[:2], np.float32),
    }
    masks, iou, low_res = _session(exported / "decoder.onnx").run(None, feeds)
    assert masks.shape == (1, 4, 300, 410)

    t_coords = torch.tensor(points, dtype=torch.float)[None] if points else None
    t_labels = torch.tensor(labels)[None] if labels else None
    t_box = torch.tensor([box]) if box else None
    for multimask, sl in ((False, slice(0, 1)), (True, slice(1, 4))):
        ref_logits, ref_iou, ref_low = predictor.predict_torch(t_coords, t_labels, t_box, None, multimask, True)
        assert rel_err(torch.from_numpy(low_res[:, sl]), ref_low) < 1e-3
        assert rel_err(torch.from_numpy(masks[:, sl]), ref_logits) < 1e-3
        assert rel_err(torch.from_numpy(iou[:, sl]), ref_iou) < 1e-3
        assert ((masks[:, sl] > 0) == (ref_logits > 0).numpy()).mean() >= 0.999


@pytest.mark.parametrize("single_mask", [False, True])
def test_decoder_graph_matches_segment_anythings_onnx_model(vit_t_pair, single_mask):
    """The graph we export computes what the official `SamOnnxModel` computes, at 1024, SAM's rules included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam.utils.onnx import SamOnnxModel

    official, ours = vit_t_pair
    reference = SamOnnxModel(official, return_single_mask=single_mask).eval()
    graph = DecoderGraph(ours, single_mask=single_mask).eval()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    for coords, labels, has_mask in (
        ([[500.0, 300.0], [0.0, 0.0]], [1.0, -1.0], 0.0),  # one point: SAM picks the best multimask output
        ([[500.0, 300.0], [100.0, 700.0], [0.0, 0.0]], [1.0, 0.0, -1.0], 1.0),
        ([[100.0, 200.0], [800.0, 900.0]], [2.0, 3.0], 0.0),  # a box
    ):
        mask_in = torch.randn(1, 1, 256, 256, generator=g)
        args = (emb, torch.tensor([coords]), torch.tensor([labels]), mask_in, torch.tensor([has_mask]))
        args = (*args, torch.tensor([300.0, 400.0]))
        with torch.no_grad():
            for a, b in zip(graph(*args), reference(*args)):
                assert a.shape == b.shape
                assert rel_err(a, b) < 1e-4


def test_onnx_predictor_matches_the_facade(exported):
    """End to end from the original image: PIL resize, prompts in original pixels, masks at the original size."""
    facade = SAM(exported / "mobile_sam.pt", device="cpu")
    predictor = OnnxPredictor(exported / "encoder.onnx", exported / "decoder.onnx", threads=2)
    assert predictor.img_size == 256 == facade.model.img_size
    emb = predictor.embed(IMG)
    for kwargs in (
        {"points": [150, 100]},
        {"points": [[[150, 100], [300, 200]]], "labels": [[1, 0]], "multimask_output": True},
        {"points": [[150, 100], [50, 250]]},  # two objects
        {"bboxes": [[50, 40, 300, 250], [10, 10, 120, 90]]},
        {"points": [[150, 100]], "bboxes": [50, 40, 300, 250]},
    ):
        (ref,) = facade.predict(IMG, **kwargs)
        got = predictor.decode(emb, **kwargs)
        assert got.masks.shape == tuple(ref.masks.shape) and got.masks.dtype == np.bool_
        assert (got.masks == ref.masks.numpy()).mean() >= 0.999
        assert np.abs(got.scores - ref.scores.numpy()).max() < 1e-3
        assert np.abs(got.boxes - ref.boxes.numpy()).max() <= 1
    # an extreme aspect ratio keeps one pixel row in the graph too, as in the facade
    thin = np.full((1, 900, 3), 100, np.uint8)
    (ref,) = facade.predict(thin, points=[450, 0])
    got = predictor.predict(thin, points=[450, 0])[0]
    assert got.masks.shape == (1, 1, 900) and (got.masks == ref.masks.numpy()).mean() >= 0.999
    with pytest.raises(PromptError, match="lies outside the 410x300"):
        predictor.decode(emb, points=[500, 10])
    with pytest.raises(PromptError, match="pass points or bboxes"):
        predictor.decode(emb)


def test_int8_files_are_quantised_and_close(exported):
    graph = onnx.load(exported / "encoder_int8.onnx").graph
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in graph.node}
    for name in ("encoder", "decoder"):
        assert (exported / f"{name}_int8.onnx").stat().st_size < 0.6 * (exported / f"{name}.onnx").stat().st_size
    resized = np.asarray(resize_image(IMG, 256))
    (emb,) = _session(exported / "encoder.onnx").run(None, {"image": resized})
    (emb8,) = _session(exported / "encoder_int8.onnx").run(None, {"image": resized})
    assert rel_err(torch.from_numpy(emb8), torch.from_numpy(emb)) < 0.1  # measured ~0.03 with random weights
    (r,) = OnnxPredictor(exported / "encoder.onnx", exported / "decoder.onnx").predict(IMG, points=[150, 100])
    int8 = OnnxPredictor(exported / "encoder_int8.onnx", exported / "decoder_int8.onnx")
    (r8,) = int8.predict(IMG, points=[150, 100])
    assert (r8.masks == r.masks).mean() > 0.95


TORCH_FREE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'torchvision', 'timm', 'onnxscript'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
from mobilesam.onnx import OnnxPredictor
p = OnnxPredictor(sys.argv[1] + '/encoder.onnx', sys.argv[1] + '/decoder.onnx', threads=1)
r, = p.predict(np.zeros((40, 60, 3), np.uint8), points=[[[10, 10], [30, 20]]], labels=[[1, 0]], multimask_output=True)
assert r.masks.shape == (3, 40, 60) and r.scores.shape == (3,), r.masks.shape
assert not [k for k in sys.modules if k.split('.')[0] == 'torch']
print('ok')
"""


def test_onnx_predictor_runs_without_pytorch(exported):
    out = subprocess.run([sys.executable, "-c", TORCH_FREE, str(exported)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_files_without_metadata_are_refused(exported, tmp_path):
    model = onnx.load(exported / "decoder.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="carries no img_size in its metadata"):
        OnnxPredictor(exported / "encoder.onnx", tmp_path / "foreign.onnx")
    with pytest.raises(FileNotFoundError, match="mobilesam export"):
        OnnxPredictor(tmp_path / "missing.onnx", exported / "decoder.onnx")


@pytest.mark.slow
def test_single_mask_decoder_under_onnxruntime(model, tmp_path):
    from mobilesam.deploy.onnx_graphs import export_decoder

    path = export_decoder(model, tmp_path / "decoder.onnx", single_mask=True)
    session = _session(path)
    graph = DecoderGraph(model, single_mask=True)
    for n in (1, 2, 5):
        args = (torch.randn(1, 256, 16, 16), torch.rand(1, n, 2) * 256, torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0][:n]]))
        args = (*args, torch.zeros(1, 1, 64, 64), torch.zeros(1), torch.tensor([300.0, 200.0]))
        got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})
        with torch.no_grad():
            for a, b in zip(got, graph(*args)):
                assert a.shape == tuple(b.shape) and a.shape[1] == 1
                assert rel_err(torch.from_numpy(a), b) < 1e-3


@pytest.mark.slow
def test_large_weights_go_to_an_external_data_file(model, tmp_path, monkeypatch):
    """vit_h's 2.5 GB cannot sit in one protobuf; the same path, forced here on the small decoder."""
    from mobilesam.deploy import onnx_graphs as graphs
    from mobilesam.deploy.onnx_graphs import export_decoder

    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 0)
    path = export_decoder(model, tmp_path / "decoder.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    assert path.stat().st_size < 1 << 20  # the graph alone
    session = _session(path)
    args = tuple(a.numpy() for a in graphs.example_inputs(256)["decoder"])
    got = session.run(None, dict(zip(graphs.DECODER_INPUTS, args)))
    with torch.no_grad():
        ref = DecoderGraph(model)(*(torch.from_numpy(a) for a in args))
    for a, b in zip(got, ref):
        assert rel_err(torch.from_numpy(a), b) < 1e-3
