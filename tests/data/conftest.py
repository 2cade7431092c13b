"""Fixtures for the data tests: generated SA-1B tars and shards precomputed from them by a random vit_t."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

IMG_SIZE = 256


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread inside, the previous count restored after: the data tests run tiny models, where a
    second thread gains nothing and, on a busy 2-core machine, OpenMP spinning made a 0.2 s vit_t forward take 3 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Each data test module runs on one thread; the setting ends with the module, so it never reaches the tests
    of the other packages (a session-scoped setting did, for every test that ran after the first data test)."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def sa1b_tars(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tars of six 96x144 images each (`sa_1` ... `sa_12`)."""
    from data.synthetic import make_sa1b_tars

    return make_sa1b_tars(tmp_path_factory.mktemp("tars"), n_tars=2, images_per_tar=6, size=(96, 144), seed=0)


@pytest.fixture(scope="session")
def shards(sa1b_tars: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted precompute of `sa1b_tars`: 12 samples in shards of 3, img_size 256, float16."""
    from data.demo import precompute_config
    from data.precompute import run

    out = tmp_path_factory.mktemp("shards")
    with one_thread():  # a session fixture is set up before the module's one-thread fixture
        result = run(precompute_config(sa1b_tars[0].parent, out, img_size=IMG_SIZE, shard_size=3, batch_size=4))
    assert result["manifest"] is not None
    return out
