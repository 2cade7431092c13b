"""Fixtures of the web demo's tests: a PyTorch backend on the small checkpoint, a plain SamPredictor on the same
weights, sessions; helpers that count encoder runs and read downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mobilesam import SamPredictor, build_sam
from mobilesam.demo import DemoSession, SessionState, load_backend
from mobilesam.demo.examples import example


@pytest.fixture(scope="module")
def backend(small_checkpoint):
    return load_backend(small_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def reference(small_checkpoint):
    """A plain SamPredictor on the same weights, with the `shapes` example set."""
    p = SamPredictor(build_sam("vit_t", small_checkpoint).eval())
    p.set_image(example("shapes"))
    return p


@pytest.fixture()
def session(backend, tmp_path):
    return DemoSession(backend, tmp_path)


@pytest.fixture()
def loaded(session):
    return session, session.load(SessionState(), example("shapes"), "shapes")


def encoder_runs(backend) -> list[int]:
    """A counter of image-encoder forward passes on the backend's model (a list holding one int)."""
    count = [0]
    backend.model.image_encoder.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def downloaded(state: SessionState) -> tuple[np.ndarray, dict]:
    png, js = state.downloads
    return np.asarray(Image.open(png)), json.loads(js.read_text())
