"""Layers that more than one family of networks uses, written once (each family's own blocks are in its blocks.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv (DDPM Appendix B / improved-diffusion `Upsample`; the
    LDM and Stable Diffusion autoencoders' decoder upsamples the same way)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
