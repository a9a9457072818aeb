"""The Gaussian diffusion process of DDPM (Ho et al. 2020, arXiv:2006.11239) as plain tensor maths.

Index convention: t is 0-based; t = 0 is the paper's t = 1; T = num_timesteps, so t runs over [0, T - 1] and
alphas_cumprod[t] is the paper's alpha_bar_{t+1}. "x_{t-1}" below means the sample one step less noisy
(x_0, the data, when t = 0).

Every coefficient is computed once in float64 and, at use, gathered at t, broadcast against x and cast to x's
dtype and device, so the same schedule serves float32/float16 tensors on any device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from components.schedulers.zero_terminal_snr import rescale_zero_terminal_snr
from components.validation import MAX_TIMESTEPS, require_bool, require_int

logger = logging.getLogger(__name__)

PREDICTION_TYPES = ("eps", "x0", "v")


def check_prediction_type(prediction_type: str) -> str:
    """The network's output: "eps" (DDPM), "x0" (the clean sample) or "v" (Salimans & Ho 2022)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def check_num_timesteps(num_timesteps: int) -> int:
    why = f"{MAX_TIMESTEPS:,}: DDPM uses 1000, and T float64 coefficients are computed up front"
    return require_int("num_timesteps", num_timesteps, minimum=1, maximum=MAX_TIMESTEPS, why=why)


def _check_betas(betas: torch.Tensor) -> None:
    """0 < beta < 1 and alpha_bar strictly falling (and still positive in float64)."""
    if betas.dim() != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
    if not torch.isfinite(betas).all() or not ((betas > 0) & (betas < 1)).all():
        raise ValueError(f"every beta must satisfy 0 < beta < 1, got min {betas.min():.3g}, max {betas.max():.3g}")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if not (alphas_cumprod[-1] > 0 and (alphas_cumprod.diff() < 0).all()):
        raise ValueError("alphas_cumprod must fall strictly and stay positive; these betas underflow it")


class NoiseSchedule:
    """q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) for t = 0 .. T-1 (0-based; t = 0 is the paper's t = 1).

    Attributes (float64, length T): betas, alphas, alphas_cumprod (alpha_bar), alphas_cumprod_prev,
    posterior_variance (beta tilde, Eq. 7), posterior_log_variance_clipped, posterior_mean_coef1 (of x_0) and
    posterior_mean_coef2 (of x_t), plus `num_timesteps` (T) and `zero_terminal_snr`.

    zero_terminal_snr: the given betas (each in (0, 1)) are rescaled by Lin et al. 2024 Alg. 1
    (zero_terminal_snr.py), so beta_T = 1 and alpha_bar_T = 0 exactly, at the last step only; that is the one way
    a beta of 1 gets in. Then SNR(T - 1) = 0 and log SNR(T - 1) = -inf, while every coefficient of Eqs. 4, 6-7
    and v stays finite (1 - alpha_bar_t >= beta_1 > 0); x_0 from eps (Eq. 15) and the mean from eps (Eq. 11) are
    infinite at T - 1, which is why eps-prediction is refused with such a schedule (recipe validation).
    """

    def __init__(
        self, betas: torch.Tensor | Sequence[float], name: str = "custom", *, zero_terminal_snr: bool = False
    ):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone().cpu()
        _check_betas(betas)
        self.zero_terminal_snr = require_bool("zero_terminal_snr", zero_terminal_snr, why="Lin et al. 2024 Alg. 1")
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
            _check_betas(betas[:-1])  # the rescaled betas before T stay in (0, 1), alpha_bar falling and positive
        self.name = name
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        # DDPM Eq. 7: beta tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, and the posterior mean weights.
        one_minus_prev = 1.0 - self.alphas_cumprod_prev
        self.posterior_variance = betas * one_minus_prev / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = one_minus_prev * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # beta tilde is 0 at t = 0; its log is clipped to the next value (improved-diffusion's convention).
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()

    def __repr__(self) -> str:
        zero = ", zero_terminal_snr=True" if self.zero_terminal_snr else ""
        return f"NoiseSchedule({self.name!r}, T={self.num_timesteps}{zero})"

    # Gathering coefficients at t.
    def check_t(self, t: torch.Tensor | int) -> torch.Tensor:
        """t as a CPU LongTensor (scalar or (B,)), validated to lie in [0, T - 1]."""
        if not isinstance(t, torch.Tensor):  # an integer (Python or numpy), else a tensor checked below
            T = self.num_timesteps
            t = require_int("t", t, minimum=0, maximum=T - 1, why=f"0-based, T = {T}; or an integer tensor")
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
            raise TypeError(f"t must be an int or a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
        t = t.to("cpu", torch.long)
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            T = self.num_timesteps
            raise ValueError(f"t must lie in [0, {T - 1}] (0-based, T = {T}), got {t.tolist()}")
        return t

    def gather(self, values: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """values[t] (float64), reshaped to broadcast against x ((B,) -> (B, 1, ..., 1)), cast to x's dtype/device."""
        t = self.check_t(t)
        if t.dim() == 1 and x.dim() > 0 and len(t) not in (1, x.shape[0]):
            raise ValueError(f"t has {len(t)} entries but x has batch size {x.shape[0]}; pass one t or one per sample")
        coef = values[t]
        if coef.dim() == 1:
            coef = coef.reshape(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, ..., 1)
        return coef.to(device=x.device, dtype=x.dtype)

    def _at(self, values: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """values[t] in float64 on t's device (for per-timestep scalars with no x to follow)."""
        device = t.device if isinstance(t, torch.Tensor) else torch.device("cpu")
        return values[self.check_t(t)].to(device)

    # Signal-to-noise ratio.
    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021), float64; 0 at T - 1 with zero terminal
        SNR."""
        alphas_cumprod = self._at(self.alphas_cumprod, t)
        return alphas_cumprod / (1.0 - alphas_cumprod)

    def log_snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """log SNR(t) = 2 lambda_t, lambda = log(alpha_t / sigma_t) as in DPM-Solver (Lu et al. 2022), float64;
        -inf (exactly, not nan) at T - 1 with zero terminal SNR."""
        alphas_cumprod = self._at(self.alphas_cumprod, t)
        return alphas_cumprod.log() - torch.log1p(-alphas_cumprod)

    # The forward process.
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a sample of q(x_t | x_0), DDPM Eq. 4."""
        return (
            self.gather(self.alphas_cumprod.sqrt(), t, x0) * x0
            + self.gather((1.0 - self.alphas_cumprod).sqrt(), t, x0) * eps
        )

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, a sample of q(x_t | x_{t-1}), DDPM Eq. 2."""
        return self.gather(self.alphas.sqrt(), t, x_prev) * x_prev + self.gather(self.betas.sqrt(), t, x_prev) * eps

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0), DDPM Eqs. 6-7."""
        mean = self.gather(self.posterior_mean_coef1, t, xt) * x0 + self.gather(self.posterior_mean_coef2, t, xt) * xt
        variance = self.gather(self.posterior_variance, t, xt).expand_as(xt)
        log_variance = self.gather(self.posterior_log_variance_clipped, t, xt).expand_as(xt)
        return mean, variance, log_variance

    # Reparameterisations of the network output.
    def predict_x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), DDPM Eq. 15 (Eq. 4 solved for x_0)."""
        recip = self.gather((1.0 / self.alphas_cumprod).sqrt(), t, xt)
        recip_m1 = self.gather((1.0 / self.alphas_cumprod - 1.0).sqrt(), t, xt)
        return recip * xt - recip_m1 * eps

    def predict_eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t), DDPM Eq. 4 solved for eps (no division by
        sqrt(alpha_bar_t), so it is x_t itself at alpha_bar_T = 0)."""
        sqrt_alphas_cumprod = self.gather(self.alphas_cumprod.sqrt(), t, xt)
        return (xt - sqrt_alphas_cumprod * x0) / self.gather((1.0 - self.alphas_cumprod).sqrt(), t, xt)

    def p_mean_from_eps(self, xt: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t), DDPM Eq. 11."""
        eps_coef = self.gather(self.betas / (1.0 - self.alphas_cumprod).sqrt(), t, xt)
        return self.gather(self.alphas.rsqrt(), t, xt) * (xt - eps_coef * eps)

    def v_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, Sec. 4)."""
        return (
            self.gather(self.alphas_cumprod.sqrt(), t, x0) * eps
            - self.gather((1.0 - self.alphas_cumprod).sqrt(), t, x0) * x0
        )

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (Salimans & Ho 2022, Sec. 4)."""
        return (
            self.gather(self.alphas_cumprod.sqrt(), t, xt) * xt
            - self.gather((1.0 - self.alphas_cumprod).sqrt(), t, xt) * v
        )

    def eps_from_v(self, xt: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v (Salimans & Ho 2022, Sec. 4)."""
        return (
            self.gather((1.0 - self.alphas_cumprod).sqrt(), t, xt) * xt
            + self.gather(self.alphas_cumprod.sqrt(), t, xt) * v
        )

    # What the samplers and the training loss use.
    def split_prediction(
        self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from the network output under its parameterisation ("eps", "x0" or "v")."""
        check_prediction_type(prediction_type)
        if output.shape != xt.shape:
            raise ValueError(f"the model output has shape {tuple(output.shape)}, expected x_t's {tuple(xt.shape)}")
        if prediction_type == "eps":
            return output, self.predict_x0_from_eps(xt, t, output)
        if prediction_type == "x0":
            return self.predict_eps_from_x0(xt, t, output), output
        return self.eps_from_v(xt, t, output), self.x0_from_v(xt, t, output)

    def training_target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, prediction_type: str
    ) -> torch.Tensor:
        """What the network regresses in L_simple (DDPM Eq. 14): eps, x_0, or v (Salimans & Ho 2022)."""
        check_prediction_type(prediction_type)
        if prediction_type == "eps":
            return eps
        if prediction_type == "x0":
            return x0
        return self.v_target(x0, eps, t)
