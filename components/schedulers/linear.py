"""DDPM's linear schedule (Ho et al. 2020, Sec. 4): beta linear from 1e-4 to 0.02 over T = 1000.

This is diffusers' "linear" (CompVis "sqrt_linear"): linear in beta. CompVis "linear" is a different
schedule, linear in sqrt(beta): see scaled_linear.py.
"""

from __future__ import annotations

import torch

from components.registry import SCHEDULES
from components.schedulers.schedule import NoiseSchedule, check_num_timesteps

MAX_BETA = 0.999


@SCHEDULES.register("linear", tiny={"num_timesteps": 50})
def linear(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, zero_terminal_snr: bool = False
) -> NoiseSchedule:
    """DDPM linear-in-beta schedule (diffusers "linear"), rescaled by 1000 / T for other T, capped at 0.999;
    zero_terminal_snr: then rescaled to alpha_bar_T = 0 (Lin et al. 2024 Alg. 1, zero_terminal_snr.py)."""
    T = check_num_timesteps(num_timesteps)
    scale = 1000 / T  # improved-diffusion get_named_beta_schedule("linear"): same endpoints in "T = 1000 units"
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    return NoiseSchedule(betas.clamp(max=MAX_BETA), name="linear", zero_terminal_snr=zero_terminal_snr)
