"""Training loss and likelihood bound of DDPM (Ho et al. 2020, arXiv:2006.11239).

L_simple (Eq. 14, Alg. 1) trains the network. The variational bound (Eq. 5) is
    L = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T = KL(q(x_T | x_0) || N(0, I)),  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0 = -log p(x_0 | x_1) (the discretised Gaussian decoder, Sec. 3.3, Eq. 13),
here in nats per dimension, with the reverse variance fixed to beta tilde ("fixed_small") or beta ("fixed_large"),
or learned (Nichol & Dhariwal 2021 Eq. 15; variance.py). The three training objectives: "simple" (L_simple),
"vlb" (the bound itself, t importance-sampled, improved DDPM Sec. 3.3) and "hybrid" (L_simple + 0.001 L_vlb
with the mean frozen in L_vlb, improved DDPM Sec. 3.1), in `objective_loss`.
Indices are 0-based as in schedule.py: the term at t = 0 is the decoder L_0, the term at t >= 1 is L_{t-1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.schedulers.schedule import NoiseSchedule, check_prediction_type
from components.schedulers.variance import check_model_variance, model_log_variance, split_output
from components.validation import require_int

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
    min(SNR, gamma) / SNR = min(1, gamma / SNR) on the eps error (eps - eps_hat = sqrt(SNR) (x0_hat - x0)) and
    min(SNR, gamma) / (SNR + 1) on the v error (v - v_hat = sqrt(SNR + 1) (x0_hat - x0)). float32, one weight per
    sample. All three are finite at SNR = 0 (zero terminal SNR, Lin et al. 2024): 0 for x0 and v, 1 for eps (its
    limit; written min(1, gamma / SNR), gamma / 0 = inf clamps to 1, where SNR / SNR would be 0/0)."""
    if not isinstance(gamma, int | float) or isinstance(gamma, bool) or not gamma > 0:
        raise ValueError(f"snr_gamma must be a positive number, got {gamma!r}")
    snr = schedule.snr(t)
    if check_prediction_type(prediction_type) == "eps":
        return (float(gamma) / snr).clamp(max=1.0).float().to(t.device)
    clipped = snr.clamp(max=float(gamma))
    return (clipped / (snr + 1.0 if prediction_type == "v" else 1.0)).float().to(t.device)


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
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), Sigma_theta): the posterior mean (Eq. 7) at the predicted x0
    (= Eq. 11 for eps), with Sigma_theta fixed (beta tilde_t or beta_t, DDPM Sec. 3.2) or learned from the
    output's second half (Nichol & Dhariwal Eq. 15); see variance.py. clip_x0: x0_hat clipped to [-1, 1] first,
    the model the pipelines sample from (and the one DDPM's and improved-diffusion's bits/dim evaluation
    measures: `calc_bpd_loop(..., clip_denoised=True)`); training leaves it off, as both codes do."""
    mean_part, v = split_output(output, xt, model_variance)
    _, x0_hat = schedule.split_prediction(mean_part, xt, t, prediction_type)
    x0_hat = x0_hat.clamp(-1.0, 1.0) if clip_x0 else x0_hat
    mean, _, _ = schedule.q_posterior(x0_hat, xt, t)
    return mean, model_log_variance(schedule, t, xt, model_variance, v)


def vlb_term_from_output(
    output: torch.Tensor,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    prediction_type: str = "eps",
    model_variance: str = "fixed_small",
    clip_x0: bool = False,
) -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t >= 1, L_0 = -log p(x_0 | x_1) (the
    discretised decoder, Eq. 13) where t = 0, per sample (B,) in nats/dim, for a network output at (x_t, t)."""
    mean, log_variance = p_mean_log_variance(output, xt, t, schedule, prediction_type, model_variance, clip_x0)
    true_mean, _, true_log_variance = schedule.q_posterior(x0, xt, t)
    per_dim = normal_kl(true_mean, true_log_variance, mean, log_variance)
    if (t == 0).any():  # only then is x0 read as an image on 256 bins
        decoder_nll = -discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * log_variance)
        per_dim = torch.where(t.view(-1, *([1] * (x0.dim() - 1))) == 0, decoder_nll, per_dim)
    return per_dim.flatten(1).mean(1)


def vlb_term(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor | int,
    schedule: NoiseSchedule,
    **kwargs: Any,
) -> torch.Tensor:
    """One bound term per sample in nats/dim at a fresh x_t ~ q(x_t | x_0): L_{t-1} where t >= 1, L_0 where t = 0.

    Keyword arguments as `vlb_term_and_mse`: prediction_type, model_variance, model_kwargs, noise, generator.
    """
    return vlb_term_and_mse(model, x0, t, schedule, **kwargs)[0]


def vlb_term_and_mse(
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
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bound term in nats/dim, ||eps - eps_theta||^2 per dim), per sample (B,), at one fresh x_t ~ q(x_t | x_0):
    the weighted term of Eq. 5 beside L_simple's unweighted summand (Eq. 14, in eps whatever the parameterisation)."""
    check_prediction_type(prediction_type)
    check_model_variance(model_variance)
    t = schedule.check_t(t).to(x0.device)
    t = t.expand(x0.shape[0]) if t.dim() == 0 else t
    eps = standard_normal(x0, generator) if noise is None else noise
    xt = schedule.q_sample(x0, t, eps)
    output = model(xt, t, **(model_kwargs or {}))
    options = {"prediction_type": prediction_type, "model_variance": model_variance, "clip_x0": clip_x0}
    term = vlb_term_from_output(output, x0, xt, t, schedule, **options)
    eps_hat, _ = schedule.split_prediction(split_output(output, xt, model_variance)[0], xt, t, prediction_type)
    return term, (eps_hat.to(eps.dtype) - eps).pow(2).flatten(1).mean(1)


def prior_kl(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per sample in nats/dim; no parameters, near 0 for a good schedule."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean = schedule.gather(schedule.alphas_cumprod.sqrt(), t, x0) * x0
    log_variance = schedule.gather(torch.log1p(-schedule.alphas_cumprod), t, x0).expand_as(x0)
    return normal_kl(mean, log_variance, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).mean(1)


@dataclass(frozen=True)
class VLBTerms:
    """The bound's terms in nats/dim: prior (B,) = L_T, kl (B, K) = L_{t-1} at `timesteps` (K,), decoder (B,) = L_0;
    kl_mse (B, K) and decoder_mse (B,): ||eps - eps_theta||^2 per dim at the same x_t (L_simple's summand)."""

    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor
    timesteps: torch.Tensor
    kl_mse: torch.Tensor | None = None
    decoder_mse: torch.Tensor | None = None


def vlb_terms(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batch: int = 1,
    **term_kwargs: Any,
) -> VLBTerms:
    """L_T, L_{t-1} for each t in `timesteps` (0-based, >= 1; default all of 1 .. T-1), and L_0, in nats/dim.

    `term_kwargs` go to `vlb_term_and_mse` (prediction_type, model_variance, model_kwargs). One fresh x_t per term.
    `batch`: at most this many images per network call; with fewer images than that, several timesteps share a
    call (x_0 repeated, t-major). The noise is drawn per timestep in the same order, so every batch size sees the
    same x_t (the terms then agree up to float rounding).
    """
    T = schedule.num_timesteps
    timesteps = torch.arange(1, T) if timesteps is None else schedule.check_t(timesteps)
    if timesteps.dim() != 1 or (timesteps == 0).any():
        raise ValueError(
            "timesteps must be a 1-D tensor of KL terms t in [1, T - 1]; t = 0 is the decoder, always added"
        )
    batch = require_int("batch", batch, minimum=1, why="images per network call")
    B = x0.shape[0]
    pairs = [
        timesteps_at_once(model, x0, chunk, schedule, generator, **term_kwargs)
        for chunk in timesteps.split(max(1, batch // B))
    ]
    empty = x0.new_zeros(B, 0)
    kl = torch.cat([p[0] for p in pairs], dim=1) if pairs else empty
    kl_mse = torch.cat([p[1] for p in pairs], dim=1) if pairs else empty
    decoder, decoder_mse = vlb_term_and_mse(model, x0, torch.tensor(0), schedule, generator=generator, **term_kwargs)
    return VLBTerms(prior_kl(x0, schedule), kl, decoder, timesteps, kl_mse, decoder_mse)


def timesteps_at_once(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None,
    model_kwargs: dict[str, Any] | None = None,
    **term_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(terms, mse), each (B, K), for K timesteps in one network call over K copies of x0 (B images each)."""
    K, B = len(timesteps), x0.shape[0]
    noise = torch.cat([standard_normal(x0, generator) for _ in range(K)])  # per t, in vlb_terms' order
    repeat = lambda v: v.repeat(K, *[1] * (v.dim() - 1)) if isinstance(v, torch.Tensor) else v  # noqa: E731
    kwargs = {name: repeat(value) for name, value in (model_kwargs or {}).items()}
    t = timesteps.to(x0.device).repeat_interleave(B)  # (K * B,): K blocks of B images, t-major
    term, mse = vlb_term_and_mse(model, repeat(x0), t, schedule, noise=noise, model_kwargs=kwargs, **term_kwargs)
    return term.view(K, B).T, mse.view(K, B).T  # (K * B,) -> (B, K)


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
        num_timesteps = require_int("num_timesteps", num_timesteps, minimum=1, maximum=T - 1, why="None: all T - 1")
        timesteps = torch.linspace(1, T - 1, num_timesteps).round().long().unique()
    terms = vlb_terms(model, x0, schedule, timesteps=timesteps, generator=generator, **term_kwargs)
    kl_sum = terms.kl.mean(1) * (T - 1) if terms.kl.shape[1] else terms.kl.sum(1)
    return (terms.prior + kl_sum + terms.decoder) / math.log(2.0)


# The training objectives.
OBJECTIVES = ("simple", "vlb", "hybrid")
HYBRID_LAMBDA = 1e-3  # improved DDPM Sec. 3.1: L_hybrid = L_simple + lambda L_vlb, lambda = 0.001


def check_objective(objective: str, model_variance: str) -> str:
    """The objective, checked against the variance it trains: "simple" trains the mean only (a learned variance
    would get no gradient), "vlb" and "hybrid" train Sigma_theta through L_vlb, so they need it learned."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    learned = check_model_variance(model_variance) == "learned"
    if objective == "simple" and learned:
        raise ValueError(
            "objective 'simple' (L_simple, DDPM Eq. 14) trains only the mean: a learned variance would get no "
            "gradient. Use variance 'fixed_small' or 'fixed_large', or objective 'hybrid'"
        )
    if objective != "simple" and not learned:
        raise ValueError(
            f"objective {objective!r} is there to train Sigma_theta through L_vlb (improved DDPM Sec. 3.1), so it "
            f"needs variance 'learned' (a U-Net with 2C output channels), got {model_variance!r}"
        )
    return objective


class LossSecondMomentSampler(nn.Module):
    """Importance sampling of t for L_vlb, improved DDPM Sec. 3.3 (improved-diffusion's LossSecondMomentResampler):

        L_vlb = E_{t ~ p_t}[L_t / p_t],  p_t ∝ sqrt(E[L_t^2]),  sum p_t = 1,

    E[L_t^2] from the last `history` (10) values of each term; t is uniform until every t has 10 (the warm-up),
    and p mixes in `uniform_prob` (0.001) of the uniform distribution, as improved-diffusion does. An nn.Module
    without parameters only so that its history is checkpointed (safetensors) with the training state.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 1e-3):
        super().__init__()
        self.uniform_prob = uniform_prob
        self.register_buffer("loss_history", torch.zeros(num_timesteps, history, dtype=torch.float64))
        self.register_buffer("loss_counts", torch.zeros(num_timesteps, dtype=torch.long))

    @property
    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.loss_history.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        """p_t (T,), float64: uniform during the warm-up, then ∝ sqrt(mean of the stored L_t^2), mixed."""
        T = self.loss_history.shape[0]
        if not self.warmed_up:
            return torch.full((T,), 1.0 / T, dtype=torch.float64, device=self.loss_history.device)
        weights = self.loss_history.pow(2).mean(dim=1).sqrt()
        weights = weights / weights.sum()
        return weights * (1 - self.uniform_prob) + self.uniform_prob / T

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,), p_t (B,)): timesteps drawn from p (on the generator's device) and their probabilities."""
        p = self.probabilities().cpu()
        device = generator.device if generator is not None else torch.device("cpu")
        t = torch.multinomial(p.to(device), batch, replacement=True, generator=generator).cpu()
        return t, p[t]

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record one L_t per sample: fill each t's history, then shift out its oldest value."""
        history = self.loss_history.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            count = int(self.loss_counts[step])
            if count == history:
                self.loss_history[step] = torch.roll(self.loss_history[step], -1)
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, count] = loss
                self.loss_counts[step] += 1


@dataclass(frozen=True)
class ObjectiveLoss:
    """What one training step of `objective_loss` computed: the scalar to minimise and its parts per sample.

    mse (B,): ||target - output_mean||^2 per dimension (L_simple's summand); vlb (B,): the bound term at each
    sample's t in bits/dim (L_{t-1}, or L_0 at t = 0), None for "simple"; t (B,) and p_t (B,) its sampling law.
    """

    loss: torch.Tensor
    mse: torch.Tensor
    vlb: torch.Tensor | None
    t: torch.Tensor
    p_t: torch.Tensor


def objective_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    objective: str,
    model_variance: str,
    prediction_type: str = "eps",
    model_kwargs: dict[str, Any] | None = None,
    timestep_sampler: LossSecondMomentSampler | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ObjectiveLoss:
    """One Monte-Carlo estimate of the objective on a batch x0 (images in [-1, 1] for "vlb"/"hybrid"):

    - "simple": mean of mse (DDPM Eq. 14), t uniform.
    - "hybrid": mean of mse + lambda T L_t(mean frozen), t uniform: T L_t estimates L_vlb = sum_t L_t, and the
      stop-gradient lets L_vlb train only Sigma_theta (improved DDPM Sec. 3.1; improved-diffusion's
      RESCALED_MSE, its vb term in bits times T / 1000).
    - "vlb": mean of L_t / p_t with t ~ p_t from `timestep_sampler` (uniform without one): an unbiased estimate
      of sum_t L_t, i.e. the bound less the constant L_T, in bits/dim (improved DDPM Sec. 3.3).

    Bound terms are in bits/dim, as improved-diffusion's. The caller records `result.vlb` in the sampler
    (`timestep_sampler.update(result.t, result.vlb)`) after the step.
    """
    check_prediction_type(prediction_type)
    check_objective(objective, model_variance)
    T, batch = schedule.num_timesteps, x0.shape[0]
    if t is not None:
        t, p_t = schedule.check_t(t).expand(batch), torch.full((batch,), 1.0 / T, dtype=torch.float64)
    elif objective == "vlb" and timestep_sampler is not None:
        t, p_t = timestep_sampler.sample(batch, generator)
    else:
        t, p_t = sample_timesteps(schedule, x0, generator).cpu(), torch.full((batch,), 1.0 / T, dtype=torch.float64)
    t, p_t = t.to(x0.device), p_t.to(x0.device)
    eps = standard_normal(x0, generator) if noise is None else noise
    xt = schedule.q_sample(x0, t, eps)
    output = model(xt, t, **(model_kwargs or {}))
    mean_part, v = split_output(output, xt, model_variance)
    target = schedule.training_target(x0, eps, t, prediction_type)
    mse = (mean_part.float() - target.float()).pow(2).flatten(1).mean(1)
    if objective == "simple":
        return ObjectiveLoss(mse.mean(), mse, None, t, p_t)
    frozen = mean_part.detach() if objective == "hybrid" else mean_part
    vlb = vlb_term_from_output(
        torch.cat([frozen, v], dim=1), x0, xt, t, schedule, prediction_type=prediction_type, model_variance="learned"
    ) / math.log(2.0)
    if objective == "hybrid":
        loss = (mse + HYBRID_LAMBDA * T * vlb).mean()
    else:
        loss = (vlb / p_t.to(vlb.dtype)).mean()
    return ObjectiveLoss(loss, mse, vlb, t, p_t)


# The bound per timestep, in bits/dim (what pipe.vlb returns).
def strided_timesteps(num_timesteps: int, stride: int = 1, exact_below: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL terms to evaluate (0-based t in [1, T - 1]) and how many terms each one stands for.

    stride 1: every term, each weight 1 (the exact sum). stride k: every t below `exact_below` (where the terms
    are large and change fast), then every k-th, and always the last, t = T - 1 (where a cosine schedule's beta is
    clipped to 0.999 and the term can jump by orders of magnitude); each evaluated term also stands for the
    unevaluated ones after it, up to the next evaluated term (a left Riemann sum over t), so the weights add up
    to T - 1.
    """
    T = num_timesteps
    for name, value in (("stride", stride), ("exact_below", exact_below)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    near = list(range(1, min(exact_below, T)))
    start = near[-1] + 1 if near else 1
    strided = list(range(start, T, stride))
    last = [T - 1] if T > 1 and (near + strided)[-1:] != [T - 1] else []
    timesteps = torch.tensor(near + strided + last, dtype=torch.long)
    ends = torch.cat([timesteps[1:], torch.tensor([T])])
    return timesteps, (ends - timesteps).double()


@dataclass(frozen=True)
class Bound:
    """The variational bound of DDPM Eq. 5 per image, in bits/dim (nats / ln 2, averaged over dimensions).

    prior (B,): L_T. kl (B, K): L_k = KL(q(x_k | x_{k+1}, x_0) || p(x_k | x_{k+1})) in the paper's numbering,
    i.e. the network evaluated at the 0-based t = k (`timesteps`, (K,)). decoder (B,): L_0 = -log p(x_0 | x_1).
    weights (K,): how many of the T - 1 KL terms each evaluated L_k stands for (all 1 when exact).
    mse (B, K) and decoder_mse (B,): L_simple's unweighted ||eps - eps_theta||^2 per dim at the same x_t.
    estimator: how the sum was formed, in words.
    """

    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    mse: torch.Tensor
    decoder_mse: torch.Tensor
    estimator: str

    @property
    def total(self) -> torch.Tensor:
        """L_T + sum_k L_k + L_0 per image (B,), bits/dim: an upper bound on -log2 p(x_0) / D."""
        return self.prior + (self.kl * self.weights.to(self.kl)).sum(dim=1) + self.decoder

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready): every field, the total, and the timesteps in both numberings."""
        return {
            "prior": self.prior.tolist(),
            "kl": self.kl.tolist(),
            "decoder": self.decoder.tolist(),
            "total": self.total.tolist(),
            "timesteps": self.timesteps.tolist(),
            "weights": self.weights.tolist(),
            "mse": self.mse.tolist(),
            "decoder_mse": self.decoder_mse.tolist(),
            "estimator": self.estimator,
        }


def bound(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    stride: int = 1,
    exact_below: int = 50,
    generator: torch.Generator | None = None,
    **term_kwargs: Any,
) -> Bound:
    """Every term of the bound for images x0 in [-1, 1] (on 256 bins), in bits/dim; see `strided_timesteps`."""
    T = schedule.num_timesteps
    timesteps, weights = strided_timesteps(T, stride, exact_below)
    terms = vlb_terms(model, x0, schedule, timesteps=timesteps, generator=generator, **term_kwargs)
    if stride == 1 or len(timesteps) == T - 1:
        estimator = f"exact: all {T - 1} KL terms, L_0 and L_T, each KL at one draw of x_t ~ q(x_t | x_0)"
    else:
        estimator = (
            f"strided: the KL terms t < {exact_below} exactly, then every {stride}-th, each standing for the "
            f"{stride - 1} skipped after it, and the last, t = {T - 1} ({len(timesteps)} of {T - 1} evaluated); "
            "one draw of x_t per term"
        )
    if term_kwargs.get("clip_x0"):
        estimator += "; x0_hat clipped to [-1, 1] (the model the samplers run)"
    bits = 1.0 / math.log(2.0)
    return Bound(
        prior=terms.prior * bits,
        kl=terms.kl * bits,
        decoder=terms.decoder * bits,
        timesteps=timesteps,
        weights=weights,
        mse=terms.kl_mse,
        decoder_mse=terms.decoder_mse,
        estimator=estimator,
    )
