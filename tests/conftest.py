"""Shared test set-up: CPU only, no network, pinned thread count (results differ slightly between 1 and 2 threads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once, at import: set before huggingface_hub is imported
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def pipes():
    """The app's pipeline cache over tiny, seeded pipelines (imported here only when an app test asks for it)."""
    from app_support import seeded_tiny

    from zoo.app import cache

    return cache.PipelineCache(tiny=True, loader=seeded_tiny)


@pytest.fixture(scope="module")
def example() -> str:
    """The first of the app's dataset examples (a module that defines its own `example` uses that one)."""
    from zoo.app import display

    return next(iter(display.examples()))


@pytest.fixture(scope="module")
def pixel():
    """A tiny, randomised ddpm-linear (the image-editing tests' pixel pipeline)."""
    from tests.test_editing import tiny

    return tiny("ddpm-linear")


@pytest.fixture(scope="module")
def latent():
    """A tiny, randomised ldm-clip-kl (the image-editing tests' latent pipeline)."""
    from tests.test_editing import tiny

    return tiny("ldm-clip-kl")
