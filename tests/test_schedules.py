"""NoiseSchedule maths (DDPM Eqs. 2, 4, 6-7, 11, 15; v-param) and the registered schedules, against identities,
statistics, Bayes' rule on a grid, and diffusers' DDPMScheduler as an independent oracle."""

import math

import pytest
import torch

import components.schedulers.cosine
import components.schedulers.linear
import components.schedulers.scaled_linear  # noqa: F401  (the imports register the schedules)
from components.schedulers.schedule import PREDICTION_TYPES, NoiseSchedule
from zoo.registry import SCHEDULES

T_TINY = 50


def tiny(name: str) -> NoiseSchedule:
    return SCHEDULES.build(name, tiny=True)


def random_pair(shape=(6, 3, 4, 4), dtype=torch.float64):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


# The registered schedules.
@pytest.mark.parametrize(
    "ours, theirs, knobs",
    [
        ("linear", "linear", {}),
        ("scaled-linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        ("cosine", "squaredcos_cap_v2", {}),
    ],
)
def test_schedules_equal_diffusers(ours, theirs, knobs):
    from diffusers import DDPMScheduler

    schedule = SCHEDULES.build(ours, num_timesteps=1000)
    oracle = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **knobs)
    torch.testing.assert_close(schedule.betas, oracle.betas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(schedule.alphas_cumprod, oracle.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_has_a_valid_tiny_variant(name):
    schedule = tiny(name)
    assert isinstance(schedule, NoiseSchedule) and schedule.num_timesteps == T_TINY
    assert schedule.betas.dtype == torch.float64 and (schedule.alphas_cumprod.diff() < 0).all()
    torch.testing.assert_close(schedule.alphas_cumprod, torch.cumprod(1 - schedule.betas, 0))


def test_linear_rescales_for_other_T_like_improved_ddpm_and_caps():
    schedule = SCHEDULES.build("linear", num_timesteps=50)
    assert schedule.betas[0].item() == pytest.approx(1e-4 * 20) and schedule.betas[-1].item() == pytest.approx(0.4)
    assert SCHEDULES.build("linear", num_timesteps=10).betas.max().item() == pytest.approx(0.999)


def test_cosine_alpha_bar_follows_eq_17():
    schedule = SCHEDULES.build("cosine", num_timesteps=T_TINY)
    f = [math.cos((t / T_TINY + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T_TINY + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T_TINY)], dtype=torch.float64)
    unclipped = schedule.betas < 0.999
    torch.testing.assert_close(schedule.alphas_cumprod[unclipped], expected[unclipped], rtol=1e-10, atol=1e-12)


# The forward process: Eq. 4 (closed form) is T applications of Eq. 2.
def test_closed_form_mean_path_equals_repeated_one_step_exactly():
    schedule, x = tiny("linear"), torch.randn(3, 5, dtype=torch.float64)
    x0 = x
    for t in range(T_TINY):
        x = schedule.q_step(x, t, torch.zeros_like(x))
        torch.testing.assert_close(x, schedule.q_sample(x0, t, torch.zeros_like(x0)))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_closed_form_matches_one_step_chain_in_distribution(name):
    schedule, n = tiny(name), 20_000
    x0 = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64).expand(n, 4)
    x = x0
    for t in range(T_TINY):
        x = schedule.q_step(x, t, torch.randn_like(x))
        if t in (4, 19, T_TINY - 1):
            direct = schedule.q_sample(x0, t, torch.randn_like(x0))
            mean = schedule.alphas_cumprod[t].sqrt() * x0[0]
            var = (1 - schedule.alphas_cumprod[t]).expand(4)
            for samples in (x, direct):
                torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)
                torch.testing.assert_close(samples.var(0), var, atol=0.04, rtol=0)


# The reverse-process identities.
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_eq_15_inverts_eq_4(name):
    schedule, (x0, eps) = tiny(name), random_pair()
    t = torch.tensor([0, 1, 10, 25, 48, 49])
    xt = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(schedule.predict_eps_from_x0(xt, t, x0), eps)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_posterior_mean_through_x0_equals_eq_11(name):
    schedule, (xt, eps) = tiny(name), random_pair()
    t = torch.tensor([0, 1, 10, 25, 48, 49])
    mean, _, _ = schedule.q_posterior(schedule.predict_x0_from_eps(xt, t, eps), xt, t)
    torch.testing.assert_close(mean, schedule.p_mean_from_eps(xt, t, eps))


@pytest.mark.parametrize("t", [1, 7, 30, 49])
def test_posterior_equals_bayes_rule_on_a_grid(t):
    """q(x_{t-1} | x_t, x_0) proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), integrated numerically in 1-D."""
    schedule, x0, xt = tiny("cosine"), 0.7, -0.4
    grid = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    prior_mean, prior_var = schedule.alphas_cumprod[t - 1].sqrt() * x0, 1 - schedule.alphas_cumprod[t - 1]
    lik_mean, lik_var = schedule.alphas[t].sqrt() * grid, schedule.betas[t]
    log_density = -((grid - prior_mean) ** 2) / (2 * prior_var) - (xt - lik_mean) ** 2 / (2 * lik_var)
    weights = torch.softmax(log_density, 0)
    bayes_mean = (weights * grid).sum()
    bayes_var = (weights * (grid - bayes_mean) ** 2).sum()
    mean, var, log_var = schedule.q_posterior(torch.tensor([x0]).double(), torch.tensor([xt]).double(), t)
    torch.testing.assert_close(mean[0], bayes_mean, atol=1e-7, rtol=0)
    torch.testing.assert_close(var[0], bayes_var, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(log_var[0], bayes_var.log(), atol=1e-6, rtol=0)


def test_posterior_at_first_step_is_x0_with_zero_variance():
    schedule, (x0, xt) = tiny("linear"), random_pair()
    mean, var, log_var = schedule.q_posterior(x0, xt, 0)
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all() and torch.isfinite(log_var).all()


# The v-parameterisation and the prediction split.
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_v_eps_x0_conversions_invert_each_other(name):
    schedule, (x0, eps) = tiny(name), random_pair()
    t = torch.tensor([0, 3, 11, 26, 40, 49])
    xt, v = schedule.q_sample(x0, t, eps), schedule.v_target(x0, eps, t)
    torch.testing.assert_close(schedule.x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(schedule.eps_from_v(xt, t, v), eps)
    for prediction_type in PREDICTION_TYPES:
        output = schedule.training_target(x0, eps, t, prediction_type)
        eps_hat, x0_hat = schedule.split_prediction(output, xt, t, prediction_type)
        torch.testing.assert_close(eps_hat, eps)
        torch.testing.assert_close(x0_hat, x0)


def test_snr_and_log_snr():
    schedule = tiny("cosine")
    t = torch.arange(T_TINY)
    abar = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.snr(t), abar / (1 - abar))
    torch.testing.assert_close(schedule.log_snr(t).exp(), schedule.snr(t))
    assert (schedule.log_snr(t).diff() < 0).all() and schedule.snr(3).dim() == 0


def test_coefficients_follow_the_input_dtype_and_t_may_be_any_integer_tensor():
    schedule, x0 = tiny("linear"), torch.randn(2, 3)
    out = schedule.q_sample(x0, torch.tensor([4, 9], dtype=torch.int32), torch.randn(2, 3))
    assert out.dtype == torch.float32
    assert schedule.q_sample(x0.half(), 3, x0.half()).dtype == torch.float16


# Bad inputs.
@pytest.mark.parametrize(
    "betas, message",
    [
        ([0.1, 0.0, 0.2], "0 < beta < 1"),
        ([0.1, 1.0], "0 < beta < 1"),
        ([-0.1, 0.2], "0 < beta < 1"),
        ([0.1, float("nan")], "0 < beta < 1"),
        ([], "non-empty 1-D"),
        ([[0.1, 0.2]], "non-empty 1-D"),
        ([0.999] * 2000, "fall strictly"),
    ],
)
def test_invalid_betas_raise(betas, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


@pytest.mark.parametrize("t", [-1, T_TINY, torch.tensor([0, T_TINY]), torch.tensor([-3])])
def test_t_out_of_range_raises(t):
    with pytest.raises(ValueError, match=r"t must (be an integer|lie) in \[0, 49\] \(0-based, T = 50"):
        tiny("linear").q_sample(torch.zeros(2, 3), t, torch.zeros(2, 3))


@pytest.mark.parametrize("t", [1.0, True, torch.tensor([1.0, 2.0]), torch.zeros(2, 2, dtype=torch.long), "3"])
def test_t_of_the_wrong_type_raises(t):
    with pytest.raises(TypeError, match="t must be an int"):
        tiny("linear").snr(t)


def test_t_batch_mismatch_raises():
    with pytest.raises(ValueError, match="batch size"):
        tiny("linear").q_sample(torch.zeros(4, 3), torch.tensor([1, 2]), torch.zeros(4, 3))


def test_unknown_prediction_type_raises():
    schedule, (x0, eps) = tiny("linear"), random_pair()
    with pytest.raises(ValueError, match="allowed: eps, x0, v"):
        schedule.split_prediction(eps, x0, 3, "epsilon")
    with pytest.raises(ValueError, match="allowed: eps, x0, v"):
        schedule.training_target(x0, eps, 3, "sample")


def test_model_output_of_the_wrong_shape_raises():
    schedule = tiny("linear")
    with pytest.raises(ValueError, match="model output has shape"):
        schedule.split_prediction(torch.zeros(2, 6, 4, 4), torch.zeros(2, 3, 4, 4), 3, "eps")


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("num_timesteps", [0, -5, 2.5, True])
def test_bad_num_timesteps_raise(name, num_timesteps):
    with pytest.raises(ValueError, match=r"num_timesteps must be an integer in \[1, 100000\]"):
        SCHEDULES.build(name, num_timesteps=num_timesteps)


def test_bad_schedule_knobs_raise():
    with pytest.raises(ValueError, match="0 <= s < 1"):
        SCHEDULES.build("cosine", s=-0.1)
    with pytest.raises(ValueError, match="must be positive"):
        SCHEDULES.build("scaled-linear", beta_start=0.0)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        SCHEDULES.build("linear", beta_start=-1e-4)
