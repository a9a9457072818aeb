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
from components.samplers.common import (
    Callback,
    Grid,
    Sampler,
    Step,
    check_x,
    randn_like,
    report,
    spaced_grid,
    steps_of,
)
from components.samplers.denoiser import Denoiser
from components.schedulers.schedule import NoiseSchedule
from components.schedulers.variance import interpolate_log_variance


def ddpm_step(
    x0: torch.Tensor,
    xt: torch.Tensor,
    alpha_cumprod_t: float,
    alpha_cumprod_prev: float,
    noise: torch.Tensor | None,
    log_variance: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """x_{t'} ~ N(mu~(x_t, x0), sigma^2 I), the posterior mean of DDPM Eqs. 6-7 with the respaced beta'; sigma^2 is
    beta~' (variance "fixed_small") unless `log_variance` is given (`reverse_log_variance`). With x0 from
    Eq. 15 the mean equals Alg. 2's (Eq. 11); noise=None gives the mean."""
    beta = 1.0 - alpha_cumprod_t / alpha_cumprod_prev
    coef_x0 = math.sqrt(alpha_cumprod_prev) * beta / (1.0 - alpha_cumprod_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t)
    mean = coef_x0 * x0 + coef_xt * xt
    if noise is None:
        return mean
    if log_variance is None:
        posterior_variance = beta * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t)
        return mean + math.sqrt(posterior_variance) * noise
    if isinstance(log_variance, float):
        return mean + math.exp(0.5 * log_variance) * noise
    return mean + torch.exp(0.5 * log_variance.to(mean.device, mean.dtype)) * noise


def reverse_log_variance(
    alpha_cumprod_t: float, alpha_cumprod_prev: float, model_variance: str, v: torch.Tensor | None
) -> torch.Tensor | float:
    """log sigma^2 of one respaced step (beta' = 1 - alpha_bar_t / alpha_bar_t', beta~' its posterior variance):
    log beta~' ("fixed_small"), log beta' ("fixed_large"), or v's interpolation between them, Nichol & Dhariwal
    Eq. 15 on the respaced chain as improved-diffusion's SpacedDiffusion (= diffusers' "learned_range")."""
    beta = 1.0 - alpha_cumprod_t / alpha_cumprod_prev
    log_small = math.log(beta * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod_t))
    if model_variance == "fixed_small":
        return log_small
    if model_variance == "fixed_large":
        return math.log(beta)
    return interpolate_log_variance(v, torch.tensor(math.log(beta)), torch.tensor(log_small)).to(v.dtype)


def sample_ddpm(
    denoiser: Denoiser, x: Tensor, grid: Grid, *, generator: Generator | None = None, callback: Callback | None = None
) -> Tensor:
    """DDPM Alg. 2 from x = x_T: at each step sample the posterior given the predicted x0, with the denoiser's
    variance (fixed, or the network's learned Sigma_theta); no noise at the last step."""
    check_x(x)
    for step in steps_of(grid):
        x, x0 = ancestral_step(denoiser, x, step, generator)
        x = report(callback, step.index, x, x0)
    return x


def ancestral_step(denoiser: Denoiser, x: Tensor, step: Step, generator: Generator | None) -> tuple[Tensor, Tensor]:
    """One step of DDPM Alg. 2 (line 4): x_{t'} ~ p_theta(x_{t'} | x_t), the mean alone at the last step; returns
    (x_{t'}, the predicted x0). RePaint's down steps are these (zoo/pipelines/repaint.py)."""
    (_, x0), v = denoiser.predict(x, step.t)
    if step.last:
        return ddpm_step(x0, x, step.alpha_cumprod, step.alpha_cumprod_prev, None), x0
    log_variance = reverse_log_variance(step.alpha_cumprod, step.alpha_cumprod_prev, denoiser.model_variance, v)
    return ddpm_step(x0, x, step.alpha_cumprod, step.alpha_cumprod_prev, randn_like(x, generator), log_variance), x0


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
