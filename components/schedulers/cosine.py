"""The cosine schedule of improved DDPM (Nichol & Dhariwal 2021, Eq. 17), = diffusers "squaredcos_cap_v2"."""

from __future__ import annotations

import math

import torch

from components.registry import SCHEDULES
from components.schedulers.schedule import NoiseSchedule, check_num_timesteps


def cosine_alpha_bar(tau: torch.Tensor, s: float) -> torch.Tensor:
    """f(tau) = cos^2((tau + s) / (1 + s) * pi / 2) for tau = t / T in [0, 1]; alpha_bar_t = f(t) / f(0), Eq. 17."""
    return torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2


@SCHEDULES.register("cosine", tiny={"num_timesteps": 50})
def cosine(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999, zero_terminal_snr: bool = False
) -> NoiseSchedule:
    """Nichol & Dhariwal 2021 Eq. 17, s = 0.008; beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, capped at 0.999;
    zero_terminal_snr: then rescaled to alpha_bar_T = 0 (Lin et al. 2024 Alg. 1, zero_terminal_snr.py)."""
    T = check_num_timesteps(num_timesteps)
    if not 0 <= s < 1 or not 0 < max_beta < 1:
        raise ValueError(f"need 0 <= s < 1 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    f = cosine_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T, s)  # f(0) .. f(T)
    betas = 1.0 - f[1:] / f[:-1]  # Sec. 3.2: clipped to 0.999 to avoid the singularity at t = T
    return NoiseSchedule(betas.clamp(max=max_beta), name="cosine", zero_terminal_snr=zero_terminal_snr)
