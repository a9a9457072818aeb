"""What the app's test modules share: tiny pipelines with the same weights every time they are built (the
`pipes` fixture in conftest.py caches them), how images are compared, a stand-in for gr.Progress."""

import numpy as np
import torch
from PIL import Image

from zoo.app import cache


def seeded_tiny(name: str):
    """Tiny parts, initialised from torch seed 0: the same weights every time they are built."""
    torch.manual_seed(0)
    return cache.build_pipeline(name, tiny=True)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def quiet(*args, **kwargs) -> None:
    """A stand-in for gr.Progress."""
