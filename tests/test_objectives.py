"""Learned variances (Nichol & Dhariwal 2021 Eq. 15) and the three objectives (simple, vlb, hybrid).

Checked against an independent NumPy re-computation of improved-diffusion's formulas (written here from the
papers, not by calling the code under test), a toy distribution whose NLL is known in closed form, the
importance sampler's unbiasedness, and bad inputs.
"""

import math

import numpy as np
import pytest
import torch

import components.schedulers.cosine
import components.schedulers.linear  # noqa: F401  (the imports register the schedules)
from components.schedulers.losses import (
    HYBRID_LAMBDA,
    LossSecondMomentSampler,
    bits_per_dim,
    check_objective,
    objective_loss,
    vlb_term_from_output,
    vlb_terms,
)
from components.schedulers.variance import model_log_variance, output_channels, split_output
from zoo.registry import SCHEDULES


def schedule(name="cosine", T=50):
    return SCHEDULES.build(name, num_timesteps=T)


def images(batch=4, seed=0, size=4):
    """8-bit images on the 256 bins of [-1, 1], (B, 3, size, size), float64."""
    pixels = torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(seed))
    return pixels.double() / 127.5 - 1


# An independent reference: improved-diffusion's _vb_terms_bpd with model_var_type LEARNED_RANGE, re-derived in
# NumPy float64 from DDPM Eqs. 4, 6-7, 11-13 and Nichol & Dhariwal Eq. 15. One difference, on purpose: the
# decoder uses the exact normal CDF (math.erf) where improved-diffusion uses a tanh approximation (~1e-3 off).
def phi(z):
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def phi_upper(z):  # 1 - Phi(z), accurate in the upper tail
    return 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))


def reference_term(betas, x0, xt, t, eps_hat, v):
    """Nats/dim of L_{t-1} (t >= 1) or L_0 (t = 0) for one image; t 0-based (t = 0 is the paper's t = 1)."""
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)  # DDPM Eq. 7
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))  # clipped at t = 0, as improved-diffusion
    coef_x0 = betas * np.sqrt(abar_prev) / (1 - abar)  # DDPM Eq. 7
    coef_xt = (1 - abar_prev) * np.sqrt(alphas) / (1 - abar)
    x0_hat = np.sqrt(1 / abar[t]) * xt - np.sqrt(1 / abar[t] - 1) * eps_hat  # DDPM Eq. 15
    model_mean = coef_x0[t] * x0_hat + coef_xt[t] * xt
    frac = (v + 1) / 2  # improved-diffusion's learned_range
    model_log_var = frac * np.log(betas[t]) + (1 - frac) * post_log_var[t]  # Nichol & Dhariwal Eq. 15
    if t == 0:  # DDPM Eq. 13, bins of width 2/255; the edge bins reach to -inf and +inf
        inv_std = np.exp(-0.5 * model_log_var)
        upper, lower = inv_std * (x0 - model_mean + 1 / 255), inv_std * (x0 - model_mean - 1 / 255)
        middle = np.log(np.maximum(phi(upper) - phi(lower), 1e-12))
        log_p = np.where(x0 < -0.999, np.log(phi(upper)), np.where(x0 > 0.999, np.log(phi_upper(lower)), middle))
        return float(-log_p.mean())
    true_mean, true_log_var = coef_x0[t] * x0 + coef_xt[t] * xt, post_log_var[t]
    kl = 0.5 * (
        -1.0
        + model_log_var
        - true_log_var
        + np.exp(true_log_var - model_log_var)
        + (true_mean - model_mean) ** 2 * np.exp(-model_log_var)
    )
    return float(kl.mean())


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_each_learned_variance_term_matches_the_independent_reference(name):
    sched, x0 = schedule(name), images(batch=6)
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 2, 17, 33, 49])
    xt = sched.q_sample(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    eps_hat = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # beyond [-1, 1] too: not clamped
    got = vlb_term_from_output(torch.cat([eps_hat, v], dim=1), x0, xt, t, sched, model_variance="learned")
    betas = sched.betas.numpy()
    for b in range(len(t)):
        expected = reference_term(betas, x0[b].numpy(), xt[b].numpy(), int(t[b]), eps_hat[b].numpy(), v[b].numpy())
        assert got[b].item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_the_learned_variance_spans_beta_tilde_to_beta():
    sched, xt = schedule(), torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([5, 40])
    small = model_log_variance(sched, t, xt, "fixed_small", None)
    lower = model_log_variance(sched, t, xt, "learned", torch.full_like(xt, -1.0))
    upper = model_log_variance(sched, t, xt, "learned", torch.ones_like(xt))
    middle = model_log_variance(sched, t, xt, "learned", torch.zeros_like(xt))
    torch.testing.assert_close(lower, small)
    torch.testing.assert_close(upper, sched.betas[t].log().view(2, 1, 1, 1).expand_as(xt))
    torch.testing.assert_close(
        middle, (sched.betas[t] * sched.posterior_variance[t]).sqrt().log().view(2, 1, 1, 1).expand_as(xt)
    )
    assert output_channels(3, "learned") == 6 and output_channels(3, "fixed_large") == 3


# The bound >= the true NLL on a distribution whose NLL is known in closed form.
A = 191 / 127.5 - 1  # the bins 64 and 191 of 256: x0 in {-A, +A}


def two_point_denoiser(sched, v=None):
    """The Bayes-optimal x0 predictor for pixels drawn independently and uniformly from {-A, +A}:
    E[x0 | x_t] = A tanh(A sqrt(abar_t) x_t / (1 - abar_t)) (a two-component Gaussian posterior)."""

    def model(xt, t):
        abar = sched.gather(sched.alphas_cumprod, t, xt)
        x0 = A * torch.tanh(A * abar.sqrt() * xt / (1 - abar))
        return x0 if v is None else torch.cat([x0, torch.full_like(x0, v)], dim=1)

    return model


@pytest.mark.parametrize("variance, v", [("fixed_small", None), ("fixed_large", None), ("learned", 0.3)])
@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_the_bound_is_at_least_the_true_nll_of_a_two_point_distribution(name, variance, v):
    """-log p(x) = 1 bit per pixel for every x in the support, so every model's expected bound is >= 1 bit/dim,
    and finer chains (more, smaller Gaussian steps) tighten it."""
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 2, (32, 1, 8, 8), generator=gen).double() * 2 - 1) * A
    options = dict(prediction_type="x0", model_variance=variance, generator=gen)
    bound = {
        T: bits_per_dim(two_point_denoiser(schedule(name, T), v), x0, schedule(name, T), **options) for T in (50, 400)
    }
    assert bound[50].mean() > bound[400].mean() > 1.0
    assert (bound[400] > 1.0).all()  # per image too (each is 64 pixels, one x_t per term)


def test_the_bound_of_the_optimal_denoiser_approaches_the_true_nll():
    """With the Bayes-optimal denoiser and beta tilde, the KL terms add up to the information x_1 holds about x_0
    (the I-MMSE relation, Guo, Shamai & Verdu 2005), here 1 bit, and the decoder L_0 shrinks with beta_1: on a
    4000-step cosine chain the whole bound is within 0.15 bits of the true 1 bit/dim, and above it."""
    gen, sched = torch.Generator().manual_seed(0), schedule("cosine", 4000)
    x0 = (torch.randint(0, 2, (8, 1, 8, 8), generator=gen).double() * 2 - 1) * A
    terms = vlb_terms(two_point_denoiser(sched), x0, sched, prediction_type="x0", generator=gen)
    kl_bits, total = (
        terms.kl.sum(1).mean() / math.log(2),
        bits_per_dim(two_point_denoiser(sched), x0, sched, prediction_type="x0", generator=gen).mean(),
    )
    assert kl_bits.item() == pytest.approx(1.0, abs=0.01)
    assert 1.0 < total < 1.15


def test_bits_per_dim_reads_a_learned_variance():
    """v = -1 is beta tilde (fixed_small), v = 1 is beta (fixed_large, except t = 0): the same x_t, the same bound."""
    sched, x0 = schedule(), images()
    run = lambda model, variance: bits_per_dim(  # noqa: E731
        model, x0, sched, prediction_type="x0", model_variance=variance, generator=torch.Generator().manual_seed(0)
    )
    small, learned_small = (
        run(two_point_denoiser(sched), "fixed_small"),
        run(two_point_denoiser(sched, -1.0), "learned"),
    )
    torch.testing.assert_close(learned_small, small)
    assert not torch.allclose(run(two_point_denoiser(sched, 1.0), "learned"), small)


# The objectives.
def linear_model(weight):
    """A tiny 'network' with one parameter per output half: eps_hat = w0 x_t, v = w1 x_t."""
    return lambda xt, t: torch.cat([weight[0] * xt, weight[1] * xt], dim=1)


@pytest.mark.parametrize("objective", ["hybrid", "vlb"])
def test_objective_values_match_the_reference(objective):
    sched, x0 = schedule(), images(batch=5)
    t = torch.tensor([0, 3, 10, 30, 49])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weight = torch.tensor([0.3, -0.5], dtype=torch.float64)
    result = objective_loss(
        linear_model(weight), x0, sched, objective=objective, model_variance="learned", t=t, noise=eps
    )
    xt = sched.q_sample(x0, t, eps)
    betas = sched.betas.numpy()
    terms = [
        reference_term(betas, x0[b].numpy(), xt[b].numpy(), int(t[b]), 0.3 * xt[b].numpy(), -0.5 * xt[b].numpy())
        for b in range(5)
    ]
    bits = np.array(terms) / math.log(2)
    mse = ((0.3 * xt - eps) ** 2).flatten(1).mean(1).numpy()
    expected = (mse + HYBRID_LAMBDA * 50 * bits).mean() if objective == "hybrid" else (50 * bits).mean()
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(result.vlb.numpy(), bits, rtol=1e-6)


def test_hybrid_stops_the_gradient_of_the_mean_through_the_bound():
    sched, x0 = schedule(), images()
    t, eps = torch.tensor([0, 5, 20, 40]), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    grads = {}
    for objective in ("hybrid", "vlb", "simple"):
        weight = torch.tensor([0.3, -0.5], dtype=torch.float64, requires_grad=True)
        model = linear_model(weight) if objective != "simple" else lambda xt, t_, w=weight: w[0] * xt
        variance = "fixed_small" if objective == "simple" else "learned"
        objective_loss(model, x0, sched, objective=objective, model_variance=variance, t=t, noise=eps).loss.backward()
        grads[objective] = weight.grad.clone()
    torch.testing.assert_close(grads["hybrid"][0], grads["simple"][0])  # the mean learns from L_simple alone
    assert grads["hybrid"][1] != 0 and grads["vlb"][0] != grads["simple"][0]  # the variance learns from L_vlb


def test_simple_objective_equals_l_simple():
    from components.schedulers.losses import diffusion_loss

    sched, x0 = schedule(), images()
    t, eps = torch.tensor([0, 5, 20, 40]), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    model = lambda xt, t_: 0.4 * xt  # noqa: E731
    got = objective_loss(model, x0, sched, objective="simple", model_variance="fixed_small", t=t, noise=eps)
    torch.testing.assert_close(got.loss, diffusion_loss(model, x0, sched, t=t, noise=eps))
    assert got.vlb is None


# Importance sampling of t (improved DDPM Sec. 3.3).
def test_importance_sampler_is_uniform_until_ten_losses_per_t():
    sampler = LossSecondMomentSampler(5)
    for _ in range(9):
        sampler.update(torch.arange(5), torch.ones(5))
    torch.testing.assert_close(sampler.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    sampler.update(torch.arange(4), torch.ones(4))
    assert not sampler.warmed_up  # t = 4 has only nine
    sampler.update(torch.tensor([4]), torch.ones(1))
    assert sampler.warmed_up


def test_importance_sampler_follows_the_second_moment_and_is_unbiased():
    sampler = LossSecondMomentSampler(4)
    losses = torch.tensor([4.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    for k in range(12):  # 12 > 10: the oldest values (k = 0, 1) are shifted out
        sampler.update(torch.arange(4), losses * (10.0 if k < 2 else 1.0))
    p = sampler.probabilities()
    expected = losses / losses.sum() * (1 - 1e-3) + 1e-3 / 4
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close((p * losses / p).sum(), losses.sum())  # E_p[L_t / p_t] = sum_t L_t
    t, p_t = sampler.sample(40_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(p_t, p[t])
    counts = torch.bincount(t, minlength=4).double() / 40_000
    torch.testing.assert_close(counts, p, atol=0.01, rtol=0)


def test_importance_sampler_state_round_trips_for_resume():
    sampler = LossSecondMomentSampler(3)
    for k in range(11):
        sampler.update(torch.arange(3), torch.tensor([1.0, 2.0, 3.0 + k]))
    again = LossSecondMomentSampler(3)
    again.load_state_dict(sampler.state_dict(), strict=True)
    torch.testing.assert_close(again.probabilities(), sampler.probabilities())


def test_vlb_objective_draws_t_from_the_sampler():
    sched, x0 = schedule(T=4), images()
    sampler = LossSecondMomentSampler(4)
    for _ in range(10):
        sampler.update(torch.arange(4), torch.tensor([0.0, 0.0, 0.0, 5.0]))
    weight = torch.tensor([0.3, -0.5], dtype=torch.float64)
    result = objective_loss(
        linear_model(weight), x0, sched, objective="vlb", model_variance="learned", timestep_sampler=sampler,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert (result.t == 3).all() and result.p_t.min() > 0.99  # p_3 = 0.999 + 0.00025
    torch.testing.assert_close(result.loss, (result.vlb / result.p_t).mean())


# Bad inputs.
@pytest.mark.parametrize(
    "objective, variance, match",
    [
        ("vlb", "fixed_small", "needs variance 'learned'"),
        ("hybrid", "fixed_large", "needs variance 'learned'"),
        ("simple", "learned", "would get no gradient"),
        ("kl", "learned", "allowed: simple, vlb, hybrid"),
        ("vlb", "learnt", "allowed: fixed_small, fixed_large, learned"),
    ],
)
def test_objective_and_variance_must_agree(objective, variance, match):
    with pytest.raises(ValueError, match=match):
        check_objective(objective, variance)


def test_a_learned_variance_needs_twice_the_channels():
    xt = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="it must have 6 channels"):
        split_output(torch.zeros(2, 3, 4, 4), xt, "learned")
    with pytest.raises(ValueError, match="it must have 3 channels"):
        split_output(torch.zeros(2, 6, 4, 4), xt, "fixed_small")
    sched, x0 = schedule(), images()
    with pytest.raises(ValueError, match="it must have 6 channels"):
        vlb_terms(lambda xt_, t: xt_, x0, sched, model_variance="learned", timesteps=torch.tensor([3]))
