"""The interactive web demo (`mobilesam demo`): Gradio page in `app`, model-side logic testable without a browser."""

from __future__ import annotations

from .backends import RuntimeBackend, default_checkpoint, load_backend
from .base import Decoded, image_key
from .session import MAX_FILE_MB, MAX_SIDE, MODES, DemoError, DemoSession, SessionState

__all__ = [
    "MAX_FILE_MB",
    "MAX_SIDE",
    "MODES",
    "Decoded",
    "DemoError",
    "DemoSession",
    "RuntimeBackend",
    "SessionState",
    "default_checkpoint",
    "image_key",
    "load_backend",
]
