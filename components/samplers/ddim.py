"""DDIM (Song et al. 2021): the non-Markovian reverse process, Eq. 12, deterministic at eta = 0."""

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


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev),
    DDIM Eq. 16 (eta = 1: the DDPM posterior's standard deviation; eta = 0: deterministic)."""
    return eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: float, sigma: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """x_{t-1} = sqrt(alpha_bar_{t-1}) x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps + sigma_t z, DDIM Eq. 12."""
    x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
    return x_prev if noise is None else x_prev + sigma * noise


@SAMPLERS.register("ddim", description="DDIM (Song et al. 2021, Eq. 12), eta = 0 deterministic")
def sample_ddim(
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
    eta: float = 0.0,
    set_alpha_to_one: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM from x = x_T over `steps` timesteps; eta scales the injected noise (0 deterministic, 1 ~ DDPM).

    The last step goes to alpha_bar = 1 (x_0 itself), or with `set_alpha_to_one=False` to alpha_bar of the
    first timestep, as Stable Diffusion's scheduler config asks (diffusers' DDIMScheduler option of that name).
    """
    check_sampler_args(x, prediction_type, clip_x0)
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0 (0 deterministic DDIM, 1 DDPM-like), got {eta!r}")
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, timestep_spacing, steps_offset)
    for i, t, t_prev in progress_bar(step_pairs(timesteps), len(timesteps), progress):
        eps, x0 = predict(model, x, t, schedule, prediction_type, clip_x0)
        alpha_bar_prev = alpha_bar(schedule, t_prev) if t_prev >= 0 or set_alpha_to_one else alpha_bar(schedule, 0)
        sigma = ddim_sigma(alpha_bar(schedule, t), alpha_bar_prev, eta)
        x = ddim_step(x0, eps, alpha_bar_prev, sigma, randn_like(x, generator) if sigma > 0 else None)
        report(callback, i, x, x0)
    return x
