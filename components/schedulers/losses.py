"""Training loss and likelihood bound of DDPM (Ho et al. 2020, arXiv:2006.11239).

L_simple (Eq. 14, Alg. 1) trains the network. The variational bound (Eq. 5) is
    L = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T = KL(q(x_T | x_0) || N(0, I)),  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0 = -log p(x_0 | x_1) (the discretised Gaussian decoder, Sec. 3.3, Eq. 13),
here in nats per dimension, with the reverse variance fixed to beta tilde ("fixed_small") or beta ("fixed_large").
Indices are 0-based as in schedule.py: the term at t = 0 is the decoder L_0, the term at t >= 1 is L_{t-1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from components.schedulers.schedule import NoiseSchedule, check_prediction_type

MODEL_VARIANCES = ("fixed_small", "fixed_large")
NUM_BINS = 256  # 8-bit images scaled to [-1, 1]


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "eps",
    model_kwargs: dict[str, Any] | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """L_simple = E_{t, x_0, eps} ||target - model(x_t, t)||^2, DDPM Eq. 14 / Alg. 1, mean over the batch.

    t ~ Uniform{0, .., T-1} and eps ~ N(0, I) unless given; x_t from Eq. 4; the target is eps, x_0 or v
    (Salimans & Ho 2022) by prediction_type. `model(x_t, t, **model_kwargs)`. With `snr_gamma`, each sample's
    squared error is weighted by min_snr_weight (Min-SNR-gamma, Hang et al. 2023).
    """
    check_prediction_type(prediction_type)
    t = sample_timesteps(schedule, x0, generator) if t is None else t.to(x0.device)
    eps = standard_normal(x0, generator) if noise is None else noise
    if eps.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(eps.shape)}, expected x0's {tuple(x0.shape)}")
    xt = schedule.q_sample(x0, t, eps)
    output = model(xt, t, **(model_kwargs or {}))
    if output.shape != x0.shape:
        raise ValueError(f"the model output has shape {tuple(output.shape)}, expected x0's {tuple(x0.shape)}")
    target = schedule.training_target(x0, eps, t, prediction_type).float()
    if snr_gamma is None:
        return F.mse_loss(output.float(), target)
    per_sample = ((output.float() - target) ** 2).flatten(1).mean(dim=1)
    return (per_sample * min_snr_weight(schedule, t, prediction_type, snr_gamma)).mean()


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, prediction_type: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, Sec. 3.4): w_t = min(SNR(t), gamma) on the x_0 error, which is
    min(SNR, gamma) / SNR on the eps error (eps - eps_hat = sqrt(SNR) (x0_hat - x0)) and min(SNR, gamma) / (SNR + 1)
    on the v error (v - v_hat = sqrt(SNR + 1) (x0_hat - x0)). float32, one weight per sample."""
    if not isinstance(gamma, int | float) or isinstance(gamma, bool) or not gamma > 0:
        raise ValueError(f"snr_gamma must be a positive number, got {gamma!r}")
    snr = schedule.snr(t)
    clipped = snr.clamp(max=float(gamma))
    denominator = {"eps": snr, "v": snr + 1.0, "x0": torch.ones_like(snr)}[check_prediction_type(prediction_type)]
    return (clipped / denominator).float().to(t.device)


def sample_timesteps(schedule: NoiseSchedule, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """t ~ Uniform{0, .., T-1}, one per sample (Alg. 1 line 3), drawn on the generator's device then moved to x0's."""
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=generator, device=device)
    return t.to(x0.device)


def standard_normal(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# The variational bound.
def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats (the Gaussian KLs of DDPM Eq. 5)."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) per element for x in [-1, 1] on 256 bins under N(means, exp(log_scales)^2), DDPM Sec. 3.3 Eq. 13.

    Each bin integrates the Gaussian over [x - 1/255, x + 1/255]; the edge bins extend to -inf and +inf, so the
    probabilities of all 256 bins sum to one.
    """
    if not (x.min() >= -1 and x.max() <= 1):
        raise ValueError(f"x must lie in [-1, 1] (images on {NUM_BINS} bins), got [{x.min():.3g}, {x.max():.3g}]")
    inv_std = torch.exp(-log_scales)
    upper = (x - means + 1.0 / 255) * inv_std
    lower = (x - means - 1.0 / 255) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(z < upper): the bottom bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(z > lower): the top bin
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    edge = 1.0 - 1e-6  # bins at -1 and +1 (x is k / 127.5 - 1, so these are the extreme bins)
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, mass.log()))


def p_mean_log_variance(
    output: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str,
    model_variance: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma_t^2): the posterior mean (Eq. 7) at the predicted x0
    (= Eq. 11 for eps), with sigma_t^2 = beta tilde_t ("fixed_small") or beta_t ("fixed_large"), DDPM Sec. 3.2."""
    _, x0_hat = schedule.split_prediction(output, xt, t, prediction_type)
    mean, _, log_variance = schedule.q_posterior(x0_hat, xt, t)
    if model_variance == "fixed_large":  # beta_t, with beta tilde_1 at t = 0 (improved-diffusion's convention)
        large = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]).log()
        log_variance = schedule.gather(large, t, xt).expand_as(xt)
    return mean, log_variance


def vlb_term(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "eps",
    model_variance: str = "fixed_small",
    model_kwargs: dict[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One bound term per sample in nats/dim: L_{t-1} (a Gaussian KL) where t >= 1, L_0 (decoder NLL) where t = 0."""
    check_prediction_type(prediction_type)
    if model_variance not in MODEL_VARIANCES:
        raise ValueError(f"unknown model_variance {model_variance!r}; allowed: {', '.join(MODEL_VARIANCES)}")
    t = schedule.check_t(t).to(x0.device)
    t = t.expand(x0.shape[0]) if t.dim() == 0 else t
    eps = standard_normal(x0, generator) if noise is None else noise
    xt = schedule.q_sample(x0, t, eps)
    output = model(xt, t, **(model_kwargs or {}))
    mean, log_variance = p_mean_log_variance(output, xt, t, schedule, prediction_type, model_variance)
    true_mean, _, true_log_variance = schedule.q_posterior(x0, xt, t)
    per_dim = normal_kl(true_mean, true_log_variance, mean, log_variance)
    if (t == 0).any():  # only then is x0 read as an image on 256 bins
        decoder_nll = -discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * log_variance)
        per_dim = torch.where(t.view(-1, *([1] * (x0.dim() - 1))) == 0, decoder_nll, per_dim)
    return per_dim.flatten(1).mean(1)


def prior_kl(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per sample in nats/dim; no parameters, near 0 for a good schedule."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean = schedule.gather(schedule.alphas_cumprod.sqrt(), t, x0) * x0
    log_variance = schedule.gather(torch.log1p(-schedule.alphas_cumprod), t, x0).expand_as(x0)
    return normal_kl(mean, log_variance, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).mean(1)


@dataclass(frozen=True)
class VLBTerms:
    """The bound's terms in nats/dim: prior (B,) = L_T, kl (B, K) = L_{t-1} at `timesteps` (K,), decoder (B,) = L_0."""

    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor
    timesteps: torch.Tensor


def vlb_terms(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    **term_kwargs: Any,
) -> VLBTerms:
    """L_T, L_{t-1} for each t in `timesteps` (0-based, >= 1; default all of 1 .. T-1), and L_0, in nats/dim.

    `term_kwargs` go to `vlb_term` (prediction_type, model_variance, model_kwargs). One fresh x_t per term.
    """
    T = schedule.num_timesteps
    timesteps = torch.arange(1, T) if timesteps is None else schedule.check_t(timesteps)
    if timesteps.dim() != 1 or (timesteps == 0).any():
        raise ValueError(
            "timesteps must be a 1-D tensor of KL terms t in [1, T - 1]; t = 0 is the decoder, always added"
        )
    kl = [vlb_term(model, x0, t, schedule, generator=generator, **term_kwargs) for t in timesteps.tolist()]
    kl = torch.stack(kl, dim=1) if kl else x0.new_zeros(x0.shape[0], 0)
    decoder = vlb_term(model, x0, torch.tensor(0), schedule, generator=generator, **term_kwargs)
    return VLBTerms(prior_kl(x0, schedule), kl, decoder, timesteps)


def bits_per_dim(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    num_timesteps: int | None = None,
    generator: torch.Generator | None = None,
    **term_kwargs: Any,
) -> torch.Tensor:
    """The bound L_T + sum_t L_{t-1} + L_0 in bits/dim, per image (B,); x0 are images in [-1, 1].

    num_timesteps=None evaluates all T - 1 KL terms (exact up to the one x_t drawn per term). An integer K
    evaluates K evenly strided KL terms and scales their mean by T - 1: a cheaper estimate of the same sum,
    unbiased only insofar as the strided terms represent the rest.
    """
    T = schedule.num_timesteps
    timesteps = None
    if num_timesteps is not None:
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or not 1 <= num_timesteps <= T - 1:
            raise ValueError(f"num_timesteps must be None (all) or an integer in [1, {T - 1}], got {num_timesteps!r}")
        timesteps = torch.linspace(1, T - 1, num_timesteps).round().long().unique()
    terms = vlb_terms(model, x0, schedule, timesteps=timesteps, generator=generator, **term_kwargs)
    kl_sum = terms.kl.mean(1) * (T - 1) if terms.kl.shape[1] else terms.kl.sum(1)
    return (terms.prior + kl_sum + terms.decoder) / math.log(2.0)
