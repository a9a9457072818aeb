"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095): a multistep second-order solver of the diffusion ODE
in data prediction (x0) form and log-SNR time lambda = log(alpha / sigma), so ~20 steps suffice.

As in diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, "midpoint"), the
first step is first order (no history yet) and so is the last, which lands on sigma = 0 and returns x0.
Timesteps: "trailing" as for the other samplers; "leading" and "linspace" on diffusers' DPM-Solver grid of
S + 1 points with the last dropped (dpm_timesteps), which differs from its DDIM grid, so that a seed shared
from a diffusers DPM-Solver run with a Stable Diffusion scheduler config reproduces here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Generator, Tensor

from components.registry import SAMPLERS
from components.samplers.common import Callback, Grid, Sampler, check_x, report, spaced_timesteps, steps_of
from components.samplers.denoiser import Denoiser
from components.schedulers.schedule import NoiseSchedule


def half_log_snr(alpha_cumprod_t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(alpha_bar_t / (1 - alpha_bar_t)), DPM-Solver (Lu et al. 2022)."""
    return 0.5 * (math.log(alpha_cumprod_t) - math.log1p(-alpha_cumprod_t))


def dpmpp_2m_step(
    xs: torch.Tensor,
    x0: torch.Tensor,
    alpha_cumprod_s: float,
    alpha_cumprod_t: float,
    x0_last: torch.Tensor | None = None,
    alpha_cumprod_last: float | None = None,
) -> torch.Tensor:
    """x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, h = lambda_t - lambda_s (DPM-Solver++ Alg. 2).

    D = (1 + 1 / (2 r)) x0_s - 1 / (2 r) x0_last with r = h_last / h (second order, from the previous step's
    x0_last at alpha_cumprod_last); D = x0_s without history (first order, which is DDIM with eta = 0).

    Zero terminal SNR (Lin et al. 2024): at alpha_s = 0, lambda_s = -inf, h = inf and e^{-h} = 0, so the step is
    x_t = sigma_t x_s + alpha_t x0_s (sigma_s = 1), all from finite numbers; e^{-h} is written as the ratio
    (alpha_s sigma_t) / (sigma_s alpha_t), never through lambda. The step after it has h_last = inf, r = inf, and
    the second-order correction 1 / (2 r) vanishes: D = x0_s, its limit.
    """
    alpha_t, sigma_t = math.sqrt(alpha_cumprod_t), math.sqrt(1.0 - alpha_cumprod_t)
    alpha_s, sigma_s = math.sqrt(alpha_cumprod_s), math.sqrt(1.0 - alpha_cumprod_s)
    exp_neg_h = (alpha_s * sigma_t) / (sigma_s * alpha_t)  # e^{-h}; 0 when t is the data (sigma_t = 0) or alpha_s = 0
    D = x0
    if x0_last is not None and alpha_cumprod_last:  # alpha_cumprod_last = 0: lambda_last = -inf, r = inf, D = x0
        h = half_log_snr(alpha_cumprod_t) - half_log_snr(alpha_cumprod_s)
        r = (half_log_snr(alpha_cumprod_s) - half_log_snr(alpha_cumprod_last)) / h
        D = x0 + (0.5 / r) * (x0 - x0_last)
    return (sigma_t / sigma_s) * xs + alpha_t * (1.0 - exp_neg_h) * D


def dpm_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """`steps` descending timesteps as diffusers' DPMSolverMultistepScheduler.set_timesteps spaces them."""
    checked = spaced_timesteps(num_timesteps, steps, spacing, offset)  # validates every argument
    T, S = num_timesteps, steps
    if spacing == "leading":  # multiples of T // (S + 1), the largest S of S + 1 (+ offset)
        return [int(t) + offset for t in (np.arange(S + 1) * (T // (S + 1))).round()[::-1][:-1]]
    if spacing == "linspace":  # linspace(0, T - 1, S + 1) rounded, without its 0
        return [int(t) for t in np.linspace(0, T - 1, S + 1).round()[::-1][:-1]]
    return checked


def dpm_grid(
    schedule: NoiseSchedule, steps: int, *, spacing: str = "trailing", offset: int = 0, set_alpha_to_one: bool = True
) -> Grid:
    """diffusers' DPM-Solver grid (dpm_timesteps), ending at sigma = 0, the data (diffusers' final_sigmas_type
    "zero"; set_alpha_to_one is a DDIM option, accepted for the common signature)."""
    return Grid.on(schedule, dpm_timesteps(schedule.num_timesteps, steps, spacing, offset), 1.0)


def sample_dpmpp(
    denoiser: Denoiser, x: Tensor, grid: Grid, *, generator: Generator | None = None, callback: Callback | None = None
) -> Tensor:
    """DPM-Solver++(2M) from x = x_T; deterministic (the generator is accepted for the common signature, unused)."""
    check_x(x)
    x0_last, alpha_cumprod_last = None, None
    for step in steps_of(grid):
        _, x0 = denoiser(x, step.t)
        history = (None, None) if step.last else (x0_last, alpha_cumprod_last)  # last step: first order
        x = dpmpp_2m_step(x, x0, step.alpha_cumprod, step.alpha_cumprod_prev, *history)
        x0_last, alpha_cumprod_last = x0, step.alpha_cumprod
        x = report(callback, step.index, x, x0)
    return x


@SAMPLERS.register("dpmpp", description="DPM-Solver++(2M) (Lu et al. 2022), ~20 steps")
def dpmpp() -> Sampler:
    """DPM-Solver++(2M) on diffusers' DPM-Solver grid."""
    return Sampler("dpmpp", sample_dpmpp, dpm_grid)
