"""Zero terminal SNR: Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
(arXiv:2305.08891), Sec. 3.1 and Algorithm 1; diffusers calls it `rescale_zero_terminal_snr`
(`rescale_betas_zero_snr=True` on its schedulers).

The registered schedules end with alpha_bar_T > 0 (linear: 4e-5, so sqrt(alpha_bar_T) = 0.0064 of the image
leaks into x_T), so training never shows the network pure noise while sampling starts from it. Alg. 1 keeps
the shape of the schedule and moves its end: sqrt(alpha_bar) goes through the affine map that sends the last
value to 0 and keeps the first (a_t = sqrt(alpha_bar_t)),

    a_t' = (a_t - a_T) * a_1 / (a_1 - a_T),

and the betas are recovered from the squares, beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (alpha_bar_0 = 1), so
beta_T = 1 and alpha_bar_T = 0 exactly. Index convention (schedule.py): t is 0-based, so the paper's alpha_bar_1
is alphas_cumprod[0] and alpha_bar_T is alphas_cumprod[T - 1].

What it asks of the rest: x_0 = (x_T - sqrt(1 - alpha_bar_T) eps) / sqrt(alpha_bar_T) is 0/0 at T, so an eps
network cannot give x_0 there: Sec. 3.2 trains with v-prediction (x0-prediction works too); and sampling must
start at the last timestep, where x_T really is pure noise (Sec. 3.3: "trailing" or "linspace" spacing, not
"leading"). `check_zero_terminal_snr_settings` says so at recipe validation.
"""

from __future__ import annotations

import torch

# Spacings whose first step is the last training timestep T - 1 (components/samplers/common.py, Lin et al. Table 2).
SPACINGS_FROM_T = ("trailing", "linspace")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas with alpha_bar_T = 0 and alpha_bar_1 unchanged, sqrt(alpha_bar) an affine map of the old one, Lin et
    al. 2024 Alg. 1 (float64 in, float64 out; beta_T = 1 exactly). `betas` must already be valid (schedule.py)."""
    if len(betas) < 2:
        raise ValueError("zero_terminal_snr needs T >= 2: with one step, alpha_bar_T = 0 is alpha_bar_1, not kept")
    sqrt_alphas_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alphas_bar[0], sqrt_alphas_bar[-1]
    # Alg. 1: shift so that the last is 0, scale so that the first is what it was.
    sqrt_alphas_bar = (sqrt_alphas_bar - last) * (first / (first - last))
    alphas_bar = sqrt_alphas_bar**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])  # undo the cumulative product
    return 1.0 - alphas


def check_zero_terminal_snr_settings(prediction_type: str, timestep_spacing: str | None = None) -> None:
    """What a zero-terminal-SNR schedule needs of a pipeline: a network that is not eps-prediction (Lin et al.
    Sec. 3.2) and, when the spacing is known, sampling that starts at the last timestep (Sec. 3.3)."""
    if prediction_type == "eps":
        raise ValueError(
            "a zero-terminal-SNR schedule (zero_terminal_snr=True) cannot be used with eps-prediction: at the last "
            "step alpha_bar_T = 0 and x_0 = (x_T - sqrt(1 - alpha_bar_T) eps) / sqrt(alpha_bar_T) is 0/0 (Lin et al. "
            '2024, Sec. 3.2). Set prediction_type "v" (or "x0"), or drop zero_terminal_snr'
        )
    if timestep_spacing is not None and timestep_spacing not in SPACINGS_FROM_T:
        raise ValueError(
            f"a zero-terminal-SNR schedule needs sampling to start at the last timestep, where x_T is pure noise "
            f'(Lin et al. 2024, Sec. 3.3), but timestep_spacing {timestep_spacing!r} does not: use "trailing" (or '
            '"linspace")'
        )
