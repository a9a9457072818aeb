"""What the app's test modules share: tiny pipelines with the same weights every time they are built (the
`pipes` fixture in conftest.py caches them)."""

import torch

from zoo.app import cache


def seeded_tiny(name: str):
    """Tiny parts, initialised from torch seed 0: the same weights every time they are built."""
    torch.manual_seed(0)
    return cache.build_pipeline(name, tiny=True)
