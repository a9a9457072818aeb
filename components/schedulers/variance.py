"""The reverse-process variance Sigma_theta(x_t, t) = sigma_t^2 I: fixed (DDPM Sec. 3.2) or learned (improved DDPM).

- "fixed_small": sigma_t^2 = beta tilde_t (DDPM Eq. 7), the posterior variance, optimal for a point mass x_0.
- "fixed_large": sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I) (DDPM Sec. 3.2).
- "learned": the network outputs 2C channels, C for the mean (eps, x0 or v) and C more, v, that interpolate
  between the two in the log domain, Nichol & Dhariwal 2021 Eq. 15:
      Sigma_theta(x_t, t) = exp(v log beta_t + (1 - v) log beta tilde_t),
  with the raw output in [-1, 1] read as v = (output + 1) / 2 in [0, 1], exactly as improved-diffusion's
  "learned_range" (and diffusers' variance_type="learned_range") does; v is not clamped there either.

Index convention (schedule.py): t is 0-based. beta tilde at t = 0 is 0; its log is clipped to beta tilde at
t = 1 (improved-diffusion's posterior_log_variance_clipped), so log Sigma stays finite at the decoder step.
"""

from __future__ import annotations

import torch

from components.schedulers.schedule import NoiseSchedule

MODEL_VARIANCES = ("fixed_small", "fixed_large", "learned")


def check_model_variance(model_variance: str) -> str:
    if model_variance not in MODEL_VARIANCES:
        raise ValueError(f"unknown model_variance {model_variance!r}; allowed: {', '.join(MODEL_VARIANCES)}")
    return model_variance


def output_channels(data_channels: int, model_variance: str) -> int:
    """How many channels the network outputs: C, or 2C when it also predicts the variance (improved DDPM Sec. 3.1)."""
    return 2 * data_channels if check_model_variance(model_variance) == "learned" else data_channels


def split_output(
    output: torch.Tensor, xt: torch.Tensor, model_variance: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean part, variance part v) of the network output; v is None for a fixed variance.

    A learned-variance network outputs (B, 2C, ...): the first C channels parameterise the mean, the last C
    the variance (improved-diffusion's `th.split(model_output, C, dim=1)`).
    """
    expected = output_channels(xt.shape[1], model_variance)
    if output.dim() != xt.dim() or output.shape[0] != xt.shape[0] or output.shape[1] != expected:
        raise ValueError(
            f"the model output has shape {tuple(output.shape)}; with model_variance={model_variance!r} and x_t of "
            f"shape {tuple(xt.shape)} it must have {expected} channels"
        )
    if model_variance != "learned":
        return output, None
    mean_part, v = output.chunk(2, dim=1)
    return mean_part, v


def interpolate_log_variance(v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor) -> torch.Tensor:
    """log Sigma = frac log beta + (1 - frac) log beta tilde, frac = (v + 1) / 2: Nichol & Dhariwal Eq. 15 with
    improved-diffusion's "learned_range" map from the network's [-1, 1] to [0, 1]."""
    frac = (v + 1) / 2
    return frac * log_beta + (1 - frac) * log_beta_tilde


def log_betas_large(schedule: NoiseSchedule) -> torch.Tensor:
    """log beta_t with beta tilde_1 at t = 0 (improved-diffusion's "fixed_large"), float64."""
    first = schedule.posterior_variance[1:2] if schedule.num_timesteps > 1 else schedule.betas[:1]
    return torch.cat([first, schedule.betas[1:]]).log()


def model_log_variance(
    schedule: NoiseSchedule, t: torch.Tensor | int, xt: torch.Tensor, model_variance: str, v: torch.Tensor | None
) -> torch.Tensor:
    """log sigma_t^2 of p(x_{t-1} | x_t), shaped like x_t, for the three variance kinds (this module's docstring)."""
    check_model_variance(model_variance)
    if model_variance == "fixed_small":
        return schedule.gather(schedule.posterior_log_variance_clipped, t, xt).expand_as(xt)
    if model_variance == "fixed_large":
        return schedule.gather(log_betas_large(schedule), t, xt).expand_as(xt)
    if v is None or v.shape != xt.shape:
        raise ValueError(f"a learned variance needs v shaped like x_t {tuple(xt.shape)}")
    log_beta = schedule.gather(schedule.betas.log(), t, xt)  # improved-diffusion: max_log = log(betas), unclipped
    log_beta_tilde = schedule.gather(schedule.posterior_log_variance_clipped, t, xt)
    return interpolate_log_variance(v, log_beta, log_beta_tilde)
