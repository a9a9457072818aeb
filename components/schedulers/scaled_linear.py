"""Stable Diffusion's schedule (Rombach et al. 2022): sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012).

This is CompVis "linear" = diffusers "scaled_linear": linear in sqrt(beta), then squared. Not rescaled for
other T (as in CompVis and diffusers).
"""

from __future__ import annotations

import math

import torch

from components.registry import SCHEDULES
from components.schedulers.schedule import NoiseSchedule, check_num_timesteps


@SCHEDULES.register("scaled-linear", tiny={"num_timesteps": 50})
def scaled_linear(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, zero_terminal_snr: bool = False
) -> NoiseSchedule:
    """LDM / Stable Diffusion schedule (diffusers "scaled_linear", CompVis "linear"): linear in sqrt(beta);
    zero_terminal_snr: then rescaled to alpha_bar_T = 0 (Lin et al. 2024 Alg. 1, zero_terminal_snr.py)."""
    T = check_num_timesteps(num_timesteps)
    if beta_start <= 0 or beta_end <= 0:
        raise ValueError(f"beta_start and beta_end must be positive, got {beta_start} and {beta_end}")
    sqrt_betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
    return NoiseSchedule(sqrt_betas**2, name="scaled-linear", zero_terminal_snr=zero_terminal_snr)
