"""Ancestral sampling, DDPM Alg. 2 (Ho et al. 2020), on the full chain or a respaced one.

With steps < T the chain visits a subsequence tau of timesteps and uses the respaced process whose
alpha_bar are those of tau (improved DDPM, Nichol & Dhariwal 2021 Sec. 4; diffusers' DDPMScheduler with
num_inference_steps): beta'_t = 1 - alpha_bar_t / alpha_bar_t', where t' is the next timestep in tau.
"""

from __future__ import annotations

import math

import torch
from torch import Generator, Tensor

from components.registry import SAMPLERS
from components.samplers.common import Callback, Grid, Sampler, check_x, randn_like, report, spaced_grid, steps_of
from components.samplers.denoiser import Denoiser
from components.schedulers.schedule import NoiseSchedule


def ddpm_step(
    x0: torch.Tensor,
    xt: torch.Tensor,
    alpha_cumprod_t: float,
    alpha_cumprod_prev: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_{t'} ~ N(mu~(x_t, x0), beta~ I), the posterior of DDPM Eqs. 6-7 with the respaced beta' (variance
    "fixed_small"). With x0 from Eq. 15 the mean equals Alg. 2's (Eq. 11); noise=None gives the mean."""
    beta = 1.0 - alpha_cumprod_t / alpha_cumprod_prev
    coef_x0 = math.sqrt(alpha_cumprod_prev) * beta / (1.0 - alpha_cumprod_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t)
    mean = coef_x0 * x0 + coef_xt * xt
    if noise is None:
        return mean
    posterior_variance = beta * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t)
    return mean + math.sqrt(posterior_variance) * noise


def sample_ddpm(
    denoiser: Denoiser, x: Tensor, grid: Grid, *, generator: Generator | None = None, callback: Callback | None = None
) -> Tensor:
    """DDPM Alg. 2 from x = x_T: at each step sample the posterior given the predicted x0; no noise at the last."""
    check_x(x)
    for step in steps_of(grid):
        _, x0 = denoiser(x, step.t)
        noise = None if step.last else randn_like(x, generator)
        x = ddpm_step(x0, x, step.alpha_cumprod, step.alpha_cumprod_prev, noise)
        x = report(callback, step.index, x, x0)
    return x


def ddpm_grid(
    schedule: NoiseSchedule, steps: int, *, spacing: str = "trailing", offset: int = 0, set_alpha_to_one: bool = True
) -> Grid:
    """diffusers' DDPMScheduler grid: spaced as DDIM's, and its last step always lands on the data (the
    scheduler has no set_alpha_to_one; the argument is accepted for the common signature)."""
    return spaced_grid(schedule, steps, spacing=spacing, offset=offset)


@SAMPLERS.register("ddpm", description="DDPM ancestral sampling (Alg. 2), respaced for steps < T")
def ddpm() -> Sampler:
    """DDPM Alg. 2 on diffusers' DDPMScheduler grid."""
    return Sampler("ddpm", sample_ddpm, ddpm_grid)
