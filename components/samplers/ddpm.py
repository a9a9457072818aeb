"""Ancestral sampling, DDPM Alg. 2 (Ho et al. 2020), on the full chain or a respaced one.

With steps < T the chain visits a subsequence tau of timesteps and uses the respaced process whose
alpha_bar are those of tau (improved DDPM, Nichol & Dhariwal 2021 Sec. 4; diffusers' DDPMScheduler with
num_inference_steps): beta'_t = 1 - alpha_bar_t / alpha_bar_t', where t' is the next timestep in tau.
"""

from __future__ import annotations

import math

import torch

from components.samplers.common import (
    Callback,
    Model,
    alpha_bar,
    check_sampler_args,
    predict,
    progress_bar,
    randn_like,
    report,
    spaced_timesteps,
    step_pairs,
)
from components.schedulers.schedule import NoiseSchedule
from zoo.registry import SAMPLERS


def ddpm_step(
    x0: torch.Tensor, xt: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """x_{t'} ~ N(mu~(x_t, x0), beta~ I), the posterior of DDPM Eqs. 6-7 with the respaced beta' (variance
    "fixed_small"). With x0 from Eq. 15 the mean equals Alg. 2's (Eq. 11); noise=None gives the mean."""
    beta = 1.0 - alpha_bar_t / alpha_bar_prev
    coef_x0 = math.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    mean = coef_x0 * x0 + coef_xt * xt
    if noise is None:
        return mean
    posterior_variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
    return mean + math.sqrt(posterior_variance) * noise


@SAMPLERS.register("ddpm", description="DDPM ancestral sampling (Alg. 2), respaced for steps < T")
def sample_ddpm(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int,
    prediction_type: str = "eps",
    timestep_spacing: str = "trailing",
    steps_offset: int = 0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_x0: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM Alg. 2 from x = x_T: at each step sample the posterior given the predicted x0; no noise at the last."""
    check_sampler_args(x, prediction_type, clip_x0)
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, timestep_spacing, steps_offset)
    for i, t, t_prev in progress_bar(step_pairs(timesteps), len(timesteps), progress):
        _, x0 = predict(model, x, t, schedule, prediction_type, clip_x0)
        noise = randn_like(x, generator) if t_prev >= 0 else None
        x = ddpm_step(x0, x, alpha_bar(schedule, t), alpha_bar(schedule, t_prev), noise)
        report(callback, i, x, x0)
    return x
