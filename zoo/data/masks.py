"""Random inpainting masks for training, LaMa-style (Suvorov et al. 2022, Sec. 3 "mask generation"): a union of
a few rectangles and thick brush strokes, and, with probability `full`, the whole image (SD inpainting's
fully masked examples, which keep plain text-to-image in the model). 1 = repaint, 0 = keep, as diffusers."""

from __future__ import annotations

import torch


def random_masks(n: int, size: int, generator: torch.Generator, *, full: float = 0.1) -> torch.Tensor:
    """(n, 1, size, size) float masks of 0 and 1, drawn from `generator` (deterministic by seed)."""
    masks = torch.zeros(n, 1, size, size)
    for k in range(n):
        if float(torch.rand((), generator=generator)) < full:
            masks[k] = 1.0
            continue
        for _ in range(int(torch.randint(1, 3, (), generator=generator))):
            masks[k, 0] = masks[k, 0].maximum(box(size, generator))
        for _ in range(int(torch.randint(0, 3, (), generator=generator))):
            masks[k, 0] = masks[k, 0].maximum(stroke(size, generator))
    return masks


def box(size: int, generator: torch.Generator) -> torch.Tensor:
    """A rectangle of sides between size / 8 and size / 2 at a random place."""
    h, w = (int(v) for v in torch.randint(size // 8, size // 2 + 1, (2,), generator=generator))
    top, left = (
        int(torch.randint(0, size - h + 1, (), generator=generator)),
        int(torch.randint(0, size - w + 1, (), generator=generator)),
    )
    mask = torch.zeros(size, size)
    mask[top : top + h, left : left + w] = 1.0
    return mask


def stroke(size: int, generator: torch.Generator, vertices: int = 4) -> torch.Tensor:
    """A brush stroke: a polyline through random points, drawn as discs of a random radius along it."""
    points = torch.rand(vertices, 2, generator=generator) * (size - 1)  # (V, 2) as (y, x)
    radius = float(torch.randint(max(size // 32, 1), max(size // 10, 2) + 1, (), generator=generator))
    along = torch.linspace(0, 1, 4 * size)[:, None]  # positions on each segment
    path = torch.cat([a + along * (b - a) for a, b in zip(points[:-1], points[1:], strict=True)])  # (P, 2)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    grid = torch.stack([yy, xx], dim=-1).reshape(-1, 1, 2)  # (size*size, 1, 2)
    near = ((grid - path[None]) ** 2).sum(-1).min(dim=1).values <= radius**2
    return near.float().reshape(size, size)
