"""The size check inside an ONNX encoder that takes a resized image: any other size fails in ONNX Runtime with a
message that names the rule, instead of being silently cropped or padded by the graph."""

from __future__ import annotations

from typing import Any

GUARD_PREFIX = "mobilesam_size_check"


def refuse_other_sizes(model: Any, img_size: int, input_name: str = "image") -> Any:
    """Makes an encoder taking an HxWx3 image (long side = img_size) refuse any other image size.

    ONNX has no assertion op: the check is a Reshape of the input to its own shape, plus one on every axis when the
    long side is not img_size, so a wrong size fails there. ONNX Runtime's message names the failing node, and the
    node's name states the rule and the fix: "Non-zero status code returned while running Reshape node.
    Name:'image_long_side_must_be_256__resize_the_image_so_its_long_side_is_256' ... Input shape:{684,1024,3}".

    Args:
        model: an `onnx.ModelProto` (changed in place and returned).
        img_size: the long side the encoder takes.
        input_name: the image input (HxWx3).

    Returns:
        The model, every consumer of the input now reading the checked tensor.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if input_name not in {i.name for i in graph.input}:
        raise ValueError(f"the graph has no input {input_name!r} (it has {[i.name for i in graph.input]})")
    if any(n.name.startswith("image_long_side_must_be") for n in graph.node):
        return model  # checked already
    checked, p = f"{input_name}_size_checked", GUARD_PREFIX
    for node in graph.node:
        node.input[:] = [checked if x == input_name else x for x in node.input]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
            numpy_helper.from_array(np.array([2], np.int64), f"{p}_end"),
            numpy_helper.from_array(np.array([img_size], np.int64), f"{p}_size"),
        ]
    )
    rule = f"image_long_side_must_be_{img_size}__resize_the_image_so_its_long_side_is_{img_size}"
    nodes = [
        helper.make_node("Shape", [input_name], [f"{p}_shape"], name=f"{p}_shape"),
        helper.make_node("Slice", [f"{p}_shape", f"{p}_start", f"{p}_end"], [f"{p}_hw"], name=f"{p}_hw"),
        helper.make_node("ReduceMax", [f"{p}_hw"], [f"{p}_long"], keepdims=1, name=f"{p}_long"),
        helper.make_node("Equal", [f"{p}_long", f"{p}_size"], [f"{p}_ok"], name=f"{p}_ok"),
        helper.make_node("Not", [f"{p}_ok"], [f"{p}_bad"], name=f"{p}_bad"),
        helper.make_node("Cast", [f"{p}_bad"], [f"{p}_step"], to=TensorProto.INT64, name=f"{p}_step"),
        helper.make_node("Add", [f"{p}_shape", f"{p}_step"], [f"{p}_target"], name=f"{p}_target"),
        helper.make_node("Reshape", [input_name, f"{p}_target"], [checked], name=rule),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return model
