"""Where the model runs: the one rule for choosing a device, and whether a tracer is running the model."""

from __future__ import annotations

import torch


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, or CUDA when it is available and the CPU otherwise (`None` or "auto").

    A CUDA device asked for on a machine without one is refused with the fix in the message.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but no CUDA device is available; use device='cpu'")
    return device


def is_tracing() -> bool:
    """True while torch.jit, dynamo (torch.compile / torch.export) or the ONNX exporter traces the model."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
