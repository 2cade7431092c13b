"""The exported graphs' interface, stated once: the input and output names and shapes of the static-shape graphs
(every format but ONNX) and of the ONNX graphs (segment-anything's), and how a sidecar describes them. No PyTorch."""

from __future__ import annotations

from ..transforms import PIXEL_MEAN, PIXEL_STD

EMBED_DIM = 256  # channels of SAM's image embedding
NUM_MASKS = 4  # decoder outputs: mask 0 the single-mask output, 1-3 the multimask outputs
PATCH = 16  # img_size / embedding side
LOW_RES = 4  # low-resolution masks side / embedding side

# The static graphs (ExecuTorch, OpenVINO, LiteRT, Core ML): a normalised padded image in; the `StaticDecoder`
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
NAMES = {"encoder": (ENCODER_INPUTS, ENCODER_OUTPUTS), "decoder": (DECODER_INPUTS, DECODER_OUTPUTS)}

# The ONNX graphs (`mobilesam.deploy.onnx_graphs`): the resized uint8 image in; segment-anything's ONNX decoder
ONNX_ENCODER_INPUTS = ("image",)
ONNX_ENCODER_OUTPUTS = ("image_embeddings",)
ONNX_DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
ONNX_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
ONNX_ENCODER_INPUT = "RGB uint8 HxWx3, long side = img_size"  # the encoder's metadata says so too

Shapes = dict[str, tuple[int, ...]]


def static_shapes(role: str, img_size: int, max_points: int, batch: int = 1) -> tuple[Shapes, Shapes]:
    """A static graph's float32 inputs and outputs, name -> shape, in order.

    Args:
        role: "encoder" or "decoder".
        img_size: S; the embedding is 256 x S/16 x S/16, the low-resolution masks S/4 x S/4.
        max_points: P, the decoder's prompt slots.
        batch: the encoder's batch (-1: free, as OpenVINO's).
    """
    g = img_size // PATCH
    if role == "encoder":
        return {"image": (batch, 3, img_size, img_size)}, {"image_embeddings": (batch, EMBED_DIM, g, g)}
    if role != "decoder":
        raise ValueError(f"role={role!r}: a graph is the encoder or the decoder")
    inputs = ((1, EMBED_DIM, g, g), (1, max_points, 2), (1, max_points))
    outputs = ((1, NUM_MASKS, LOW_RES * g, LOW_RES * g), (1, NUM_MASKS))
    return dict(zip(DECODER_INPUTS, inputs)), dict(zip(DECODER_OUTPUTS, outputs))


def _numbers(values: tuple[float, ...]) -> str:
    return f"({', '.join(f'{v:g}' for v in values)})"


# The static graphs' interface, as every format's sidecar entry states it
ENCODER_INPUT = (
    "image {batch}x3xSxS float32 (S = img_size): the RGB image resized so its long side is S (PIL bilinear), "
    f"normalised with SAM's pixel mean {_numbers(PIXEL_MEAN)} and std {_numbers(PIXEL_STD)}, zero-padded at "
    "the bottom and right (mobilesam.deploy.runtime.normalize_pad)"
)
DECODER_INPUT = (
    "image_embeddings 1x256x(img_size/16)^2; point_coords 1x{points}x2 float32 (x, y) in the resized image's "
    "pixels; point_labels 1x{points} float32 (1 positive, 0 negative, 2/3 box corners, -1 padding)"
)
DECODER_OUTPUT = "low_res_masks 1x4x(img_size/4)^2 logits (mask 0 single, 1-3 multimask), iou_predictions 1x4"


def describe(max_points: int, batch: str = "1") -> dict[str, object]:
    """The static graphs' interface as every format's sidecar entry states it (`batch`: the encoder's batch)."""
    return {
        "encoder_input": ENCODER_INPUT.format(batch=batch),
        "decoder_inputs": DECODER_INPUT.format(points=max_points),
        "decoder_outputs": DECODER_OUTPUT,
        "max_points": max_points,
    }
