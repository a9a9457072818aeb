"""L_simple (DDPM Eq. 14) and the variational bound (Eq. 5): against torch.distributions, the weighting of
DDPM Eq. 12, an oracle model, the decoder's normalisation, and bad inputs."""

import math

import pytest
import torch

import components.schedulers.cosine
import components.schedulers.linear  # noqa: F401  (the imports register the schedules)
from components.schedulers.losses import (
    bits_per_dim,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    min_snr_weight,
    normal_kl,
    prior_kl,
    sample_timesteps,
    vlb_term,
    vlb_terms,
)
from zoo.registry import SCHEDULES

T = 50


def schedule(name="linear"):
    return SCHEDULES.build(name, tiny=True)


def images(batch=3, seed=0):
    """8-bit images on the 256 bins of [-1, 1], (B, 3, 4, 4)."""
    pixels = torch.randint(0, 256, (batch, 3, 4, 4), generator=torch.Generator().manual_seed(seed))
    return pixels.double() / 127.5 - 1


def oracle_eps(sched, x0, shift=0.0):
    """A model that knows x0: it returns the true eps of x_t (plus a constant error `shift`)."""
    return lambda xt, t, **kwargs: sched.predict_eps_from_x0(xt, t, x0) + shift


# L_simple.
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_l_simple_is_the_mse_to_the_parameterisations_target(prediction_type):
    sched, x0, eps = schedule(), images(), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 17, 49])
    target = sched.training_target(x0, eps, t, prediction_type)
    perfect = lambda xt, t_, **kw: sched.training_target(
        x0, sched.predict_eps_from_x0(xt, t_, x0), t_, prediction_type
    )  # noqa: E731
    off = lambda xt, t_, **kw: perfect(xt, t_) + 0.1  # noqa: E731
    assert diffusion_loss(perfect, x0, sched, prediction_type=prediction_type, t=t, noise=eps).item() < 1e-12
    loss = diffusion_loss(off, x0, sched, prediction_type=prediction_type, t=t, noise=eps)
    assert loss.item() == pytest.approx(0.01, rel=1e-6)
    zero = lambda xt, t_, **kw: torch.zeros_like(xt)  # noqa: E731
    torch.testing.assert_close(
        diffusion_loss(zero, x0, sched, prediction_type=prediction_type, t=t, noise=eps), target.pow(2).mean().float()
    )


def test_l_simple_draws_standard_noise_and_passes_model_kwargs():
    sched, x0, seen = schedule(), torch.zeros(256, 1, 8, 8), {}

    def zero(xt, t, *, context):
        seen["context"] = context
        return torch.zeros_like(xt)

    loss = diffusion_loss(zero, x0, sched, model_kwargs={"context": "c"}, generator=torch.Generator().manual_seed(0))
    assert seen["context"] == "c" and loss.item() == pytest.approx(1.0, abs=0.02)  # E[eps^2] = 1


def test_timesteps_are_uniform_over_0_to_T_minus_1():
    counts = torch.bincount(sample_timesteps(schedule(), torch.zeros(50_000, 1), None), minlength=T)
    assert len(counts) == T and counts.min() > 800 and counts.max() < 1200  # expected 1000 each


def test_l_simple_is_reproducible_with_a_generator():
    sched, x0 = schedule(), images()
    model = lambda xt, t: 0.5 * xt  # noqa: E731
    run = lambda seed: diffusion_loss(model, x0, sched, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert run(0).item() == run(0).item() != run(1).item()


# The pieces of the bound.
def test_normal_kl_equals_torch_distributions():
    mean1, mean2, logvar1, logvar2 = torch.randn(4, 10, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean1, (0.5 * logvar1).exp()),
        torch.distributions.Normal(mean2, (0.5 * logvar2).exp()),
    )
    torch.testing.assert_close(normal_kl(mean1, logvar1, mean2, logvar2), expected)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -1.0), (0.3, -4.0), (-1.5, 0.5), (2.0, -3.0), (0.99, -8.0)])
def test_decoder_probabilities_over_all_256_bins_sum_to_one(mean, log_scale):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_p = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, log_scale)
    )
    assert (log_p <= 0).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_decoder_bin_mass_equals_the_gaussian_integral_over_the_bin():
    x, mean, std = torch.tensor([-0.2]).double(), torch.tensor([0.1]).double(), 0.3
    normal = torch.distributions.Normal(mean, std)
    expected = (normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)).log()
    got = discretized_gaussian_log_likelihood(x, means=mean, log_scales=torch.tensor([math.log(std)]).double())
    torch.testing.assert_close(got, expected)


def test_prior_kl_equals_the_gaussian_kl_to_n01():
    sched, x0 = schedule("cosine"), images()
    abar_T = sched.alphas_cumprod[-1]
    expected = normal_kl(abar_T.sqrt() * x0, (1 - abar_T).log().expand_as(x0), 0 * x0, 0 * x0).flatten(1).mean(1)
    torch.testing.assert_close(prior_kl(x0, sched), expected)
    assert (prior_kl(x0, sched) < 1e-3).all()  # q(x_T | x_0) is close to N(0, I): L_T is near 0


# The bound's terms.
def test_oracle_model_gives_zero_kl_terms():
    sched, x0 = schedule(), images()
    terms = vlb_terms(oracle_eps(sched, x0), x0, sched, generator=torch.Generator().manual_seed(0))
    assert terms.kl.shape == (3, T - 1) and terms.timesteps.tolist() == list(range(1, T))
    assert terms.kl.abs().max() < 1e-9
    large = vlb_terms(oracle_eps(sched, x0), x0, sched, model_variance="fixed_large", timesteps=torch.tensor([5, 30]))
    ratio = sched.posterior_variance[[5, 30]] / sched.betas[[5, 30]]  # same means: only the variances differ
    torch.testing.assert_close(large.kl, (0.5 * (ratio - 1 - ratio.log())).expand(3, 2))
    assert (large.kl > 0).all()


@pytest.mark.parametrize("t", [1, 10, 49])
def test_kl_term_has_the_weighting_of_ddpm_eq_12(t):
    """L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) E||eps - eps_theta||^2, sigma_t^2 = beta tilde."""
    sched, x0, shift = schedule("cosine"), images(), 0.1
    got = vlb_term(oracle_eps(sched, x0, shift), x0, torch.tensor(t), sched)
    beta, alpha, abar, sigma2 = sched.betas[t], sched.alphas[t], sched.alphas_cumprod[t], sched.posterior_variance[t]
    expected = beta**2 / (2 * sigma2 * alpha * (1 - abar)) * shift**2
    torch.testing.assert_close(got, expected.expand(3), rtol=1e-8, atol=0)


def test_decoder_term_is_the_discretised_nll_at_the_predicted_x0():
    sched, x0 = schedule(), images()
    got = vlb_term(oracle_eps(sched, x0), x0, torch.tensor(0), sched)
    log_scale = 0.5 * sched.posterior_log_variance_clipped[0]
    expected = -discretized_gaussian_log_likelihood(x0, means=x0, log_scales=log_scale.expand_as(x0))
    torch.testing.assert_close(got, expected.flatten(1).mean(1))


def test_bits_per_dim_sums_the_terms_and_the_strided_estimate_scales_them():
    sched, x0, shift = schedule(), images(), 0.05
    model = oracle_eps(sched, x0, shift)  # the KL terms are then deterministic (Eq. 12), whatever x_t is drawn
    terms = vlb_terms(model, x0, sched)
    full = bits_per_dim(model, x0, sched)
    torch.testing.assert_close(full, (terms.prior + terms.kl.sum(1) + terms.decoder) / math.log(2))
    torch.testing.assert_close(bits_per_dim(model, x0, sched, num_timesteps=T - 1), full)
    strided = bits_per_dim(model, x0, sched, num_timesteps=7)
    picked = torch.linspace(1, T - 1, 7).round().long() - 1  # columns of terms.kl
    estimate = terms.prior + terms.kl[:, picked].mean(1) * (T - 1) + terms.decoder
    torch.testing.assert_close(strided, estimate / math.log(2))
    assert (bits_per_dim(oracle_eps(sched, x0), x0, sched) < full).all()


# Bad inputs.
def test_unknown_prediction_type_and_model_variance_raise():
    sched, x0 = schedule(), images()
    with pytest.raises(ValueError, match="allowed: eps, x0, v"):
        diffusion_loss(oracle_eps(sched, x0), x0, sched, prediction_type="epsilon")
    with pytest.raises(ValueError, match="allowed: eps, x0, v"):
        vlb_term(oracle_eps(sched, x0), x0, torch.tensor(3), sched, prediction_type="sample")
    with pytest.raises(ValueError, match="allowed: fixed_small, fixed_large, learned"):
        vlb_term(oracle_eps(sched, x0), x0, torch.tensor(3), sched, model_variance="learnt")


def test_bad_shapes_and_timesteps_raise():
    sched, x0 = schedule(), images()
    with pytest.raises(ValueError, match="model output has shape"):
        diffusion_loss(lambda xt, t: xt[:, :1], x0, sched)
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion_loss(oracle_eps(sched, x0), x0, sched, noise=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"t must (be an integer|lie) in \[0, 49\] \(0-based, T = 50"):
        diffusion_loss(oracle_eps(sched, x0), x0, sched, t=torch.tensor([0, 1, 50]))
    with pytest.raises(ValueError, match="t = 0 is the decoder"):
        vlb_terms(oracle_eps(sched, x0), x0, sched, timesteps=torch.tensor([0, 4]))


@pytest.mark.parametrize("num_timesteps", [0, T, 2.5])
def test_bits_per_dim_bad_num_timesteps_raise(num_timesteps):
    sched, x0 = schedule(), images()
    with pytest.raises(ValueError, match=r"num_timesteps must be an integer in \[1, 49\] \(None: all T - 1\)"):
        bits_per_dim(oracle_eps(sched, x0), x0, sched, num_timesteps=num_timesteps)


def test_decoder_rejects_data_outside_minus_one_one():
    x = torch.tensor([0.0, 1.5])
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.zeros(2))


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error(prediction_type):
    """Hang et al. 2023: whatever the network predicts, the weighted loss is E[min(SNR, gamma) ||x0_hat - x0||^2],
    with x0_hat recovered from the prediction independently of the weight (DDPM Eq. 15; v: Salimans & Ho Eq. 31)."""
    sched, gamma = schedule(), 2.0
    x0 = images(batch=6)
    t = torch.tensor([0, 3, 10, 25, 40, 49])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    guess = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    model = lambda xt, t_, **kwargs: guess  # noqa: E731
    loss = diffusion_loss(model, x0, sched, prediction_type=prediction_type, t=t, noise=eps, snr_gamma=gamma)
    abar = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    x0_hat = {
        "eps": (xt - (1 - abar).sqrt() * guess) / abar.sqrt(),
        "v": abar.sqrt() * xt - (1 - abar).sqrt() * guess,
        "x0": guess,
    }[prediction_type]
    snr = (abar / (1 - abar)).flatten()
    expected = (snr.clamp(max=gamma) * ((x0_hat - x0) ** 2).flatten(1).mean(1)).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(min_snr_weight(sched, t, "eps", 1e9), torch.ones(6))  # gamma -> infinity: L_simple


@pytest.mark.parametrize("gamma", [0, -1.0, "5", True, float("nan")])
def test_min_snr_weighting_needs_a_positive_gamma(gamma):
    with pytest.raises(ValueError, match="snr_gamma must be a positive number"):
        min_snr_weight(schedule(), torch.tensor([1]), "eps", gamma)
