"""Helpers shared by the tests: non-trivial random weights, the official reference models, error measures."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn


def rel_err(a: Tensor, b: Tensor) -> float:
    """DESIGN.md's relative error: max|a - b| / max|b| over the whole tensor."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _batchnorm_statistics_(model: nn.Module, g: torch.Generator, mean_scale: float) -> nn.Module:
    """Random BatchNorm statistics: variances in [0.5, 1.5], means of +-mean_scale."""
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * mean_scale)
    return model


@torch.no_grad()
def perturb_(model: nn.Module, seed: int = 0, scale: float = 0.02) -> nn.Module:
    """Makes random weights non-trivial: noise on every parameter, random BatchNorm statistics.

    Fresh initialisations have zero biases, unit norms, zero relative-position tables and identity BatchNorm
    statistics, under which a wrong bias index or a missing BN fold would go unnoticed.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.add_(
            torch.randn(p.shape, generator=g) * scale * (5 if "rel_pos" in name or "attention_biases" in name else 1)
        )
    return _batchnorm_statistics_(model, g, mean_scale=0.1)


@torch.no_grad()
def perturb_keeping_input_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights whose embedding still depends on the image: the fresh initialisation, with noise on the
    relative-position tables (x0.1) and on every bias and norm (x0.005), BatchNorm variances in [0.5, 1.5] and
    means of +-0.01.

    `perturb_`'s noise on every weight (and its BatchNorm means of +-0.1) makes a deep random net's output almost
    constant: the embeddings of two different images differ by 5e-5 relative, so an exported encoder that ignored
    its input, or lost the image in fp16 noise, would pass any check on them. These differ by ~1e-2 at 256.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "rel_pos" in name or "attention_biases" in name:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        elif p.ndim == 1:
            p.add_(torch.randn(p.shape, generator=g) * 0.005)
    return _batchnorm_statistics_(model, g, mean_scale=0.01)


def official_registry():
    """The official MobileSAM registry (`mobilesam-mirror`), quietly imported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
    return sam_model_registry


def refresh_official(model: nn.Module) -> nn.Module:
    """The official TinyViT caches attention biases at .eval() time; rebuild them after weights change."""
    model.train()
    return model.eval()


def official_perturbed(variant: str = "vit_t", seed: int = 0) -> nn.Module:
    """The official model with perturbed (non-trivial random) weights and its attention-bias caches rebuilt."""
    torch.manual_seed(seed)
    return refresh_official(perturb_(official_registry()[variant]()))


def scene(h: int = 240, w: int = 320):
    """A generated photo-like HxWx3 uint8 image: noise, a disc and a rectangle."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = rng.normal(90, 20, (h, w, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 4) ** 2] = [220, 60, 50]
    img[h // 2 :, w // 2 :] = [40, 160, 230]
    return img


def object_logits(n: int, steepness: float, seed: int, size: int = 256) -> Tensor:
    """n sizexsize low-resolution mask logits shaped like objects (ellipses) with the given slope.

    Trained SAM logits are object-shaped and steep; random weights give noise instead, so tests and benchmarks of
    the mask post-processing use these.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    out = []
    for _ in range(n):
        cx, cy = torch.rand(2, generator=g) * size
        rx, ry = torch.rand(2, generator=g) * (size * 0.3) + 2
        out.append((steepness * (1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2)).clamp(min=-30))
    return torch.stack(out)


def assert_embeds_alike_and_fresh(predictor, one_thread, image: np.ndarray) -> None:
    """A runtime predictor's `embed` agrees with its one-thread twin, and every call returns a new array (not the
    runtime's output buffer, which the next call overwrites)."""
    a, b = predictor.embed(image), one_thread.embed(image)
    assert a.features.shape == (1, 256, 16, 16)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-4)
    kept = a.features.copy()
    c = predictor.embed(np.full_like(image, 200))
    np.testing.assert_array_equal(a.features, kept)
    assert np.abs(c.features - kept).max() > 0.1
    np.testing.assert_array_equal(kept, predictor.embed(image).features)


CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --disable-dev-shm-usage --window-size=1280,1000"
).split()


def headless_chromium(chromium: str, driver: str, performance_log: bool = False, extra: tuple[str, ...] = ()):
    """Debian's chromium through its chromedriver (selenium), headless with the flags every browser test and the web
    benchmark use; `performance_log` records network requests (`remote_requests`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, *extra):
        options.add_argument(flag)
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def remote_requests(browser) -> tuple[list[str], list[str]]:
    """(every URL the page requested, those not on 127.0.0.1), from the performance log."""
    import json

    urls = [
        json.loads(e["message"])["message"]["params"]["request"]["url"]
        for e in browser.get_log("performance")
        if '"Network.requestWillBeSent"' in e["message"]
    ]
    return urls, [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:")) and "//127.0.0.1:" not in u]


def random_student_file(name: str, img_size: int, folder, seed: int = 0):  # noqa: ANN001
    """A random SAM with student `name` at `img_size` (perturbed so its embedding depends on the image), saved as
    the student's own weights file in `folder` beside the sidecar that names it; returns the path."""
    from mobilesam import build_sam
    from mobilesam.checkpoint import save_state_dict, student_meta, weights_name

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = perturb_keeping_input_(build_sam(name, img_size=img_size), seed=seed + 1)
    path = folder / weights_name(name)
    return save_state_dict(sam.state_dict(), path, meta={"img_size": img_size, **student_meta(name)})
