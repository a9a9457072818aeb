"""DDIM (Song et al. 2021): the non-Markovian reverse process, Eq. 12, deterministic at eta = 0."""

from __future__ import annotations

import functools
import math

import torch
from torch import Generator, Tensor

from components.registry import SAMPLERS
from components.samplers.common import Callback, Grid, Sampler, check_x, randn_like, report, spaced_grid, steps_of
from components.samplers.denoiser import Denoiser
from components.validation import require_number


def ddim_sigma(alpha_cumprod_t: float, alpha_cumprod_prev: float, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev),
    DDIM Eq. 16 (eta = 1: the DDPM posterior's standard deviation; eta = 0: deterministic)."""
    ratio = (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t) * (1.0 - alpha_cumprod_t / alpha_cumprod_prev)
    return eta * math.sqrt(ratio)


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha_cumprod_prev: float, sigma: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """x_{t-1} = sqrt(alpha_bar_{t-1}) x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps + sigma_t z, DDIM Eq. 12."""
    x_prev = math.sqrt(alpha_cumprod_prev) * x0 + math.sqrt(max(1.0 - alpha_cumprod_prev - sigma**2, 0.0)) * eps
    return x_prev if noise is None else x_prev + sigma * noise


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    grid: Grid,
    *,
    eta: float = 0.0,
    generator: Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM from x = x_T over the grid; eta scales the injected noise (0 deterministic, 1 ~ DDPM)."""
    check_x(x)
    eta = require_number("eta", eta, minimum=0, why="0 deterministic DDIM, 1 DDPM-like")
    for step in steps_of(grid):
        eps, x0 = denoiser(x, step.t)
        sigma = ddim_sigma(step.alpha_cumprod, step.alpha_cumprod_prev, eta)
        x = ddim_step(x0, eps, step.alpha_cumprod_prev, sigma, randn_like(x, generator) if sigma > 0 else None)
        x = report(callback, step.index, x, x0)
    return x


@SAMPLERS.register("ddim", description="DDIM (Song et al. 2021, Eq. 12), eta = 0 deterministic")
def ddim(eta: float = 0.0) -> Sampler:
    """DDIM on diffusers' DDIMScheduler grid (set_alpha_to_one=False ends at alpha_bar_0, as SD's config)."""
    eta = require_number("eta", eta, minimum=0, why="0 deterministic DDIM, 1 DDPM-like")
    return Sampler("ddim", functools.partial(sample_ddim, eta=eta), spaced_grid)
