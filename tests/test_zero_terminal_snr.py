"""Zero terminal SNR (Lin et al. 2024, arXiv:2305.08891): the rescale of Alg. 1 against its defining identity and
diffusers' rescale_zero_terminal_snr, the schedule's coefficients at alpha_bar_T = 0, the three samplers from the
first step at alpha_bar = 0 (analytic denoisers, diffusers' DDPM and DDIM, the DPM-Solver++ limit), Min-SNR at
SNR = 0, the recipe checks (eps-prediction, spacing), and the default leaving every schedule as it was."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import zoo
from components.registry import SAMPLERS
from components.samplers.ddim import ddim_step
from components.samplers.denoiser import Denoiser
from components.samplers.dpmpp import dpmpp_2m_step
from components.schedulers.losses import diffusion_loss, min_snr_weight, prior_kl, vlb_term
from components.schedulers.schedule import PREDICTION_TYPES, NoiseSchedule
from components.schedulers.variance import MODEL_VARIANCES, model_log_variance
from components.schedulers.zero_terminal_snr import rescale_zero_terminal_snr
from components.validation import ArgumentTypeError
from zoo.assembly import IncompatiblePartsError, assemble
from zoo.registry import SCHEDULES

zoo.available()  # fills the registries
T = 50
DIFFUSERS_NAMES = {"linear": "linear", "scaled-linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def schedules(name: str, num_timesteps: int = T) -> tuple[NoiseSchedule, NoiseSchedule]:
    """(the registered schedule, the same schedule rescaled to zero terminal SNR)."""
    return (
        SCHEDULES.build(name, num_timesteps=num_timesteps),
        SCHEDULES.build(name, num_timesteps=num_timesteps, zero_terminal_snr=True),
    )


def normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tensors(schedule: NoiseSchedule) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(schedule).items() if isinstance(v, torch.Tensor)}


# The rescale, Alg. 1.
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_the_rescaled_schedule_ends_at_alpha_bar_zero_and_keeps_alpha_bar_1(name):
    before, after = schedules(name)
    assert after.zero_terminal_snr and not before.zero_terminal_snr
    assert after.alphas_cumprod[-1].item() == 0.0 and after.betas[-1].item() == 1.0  # exactly
    assert ((after.betas[:-1] > 0) & (after.betas[:-1] < 1)).all() and (after.alphas_cumprod.diff() < 0).all()
    torch.testing.assert_close(after.alphas_cumprod[0], before.alphas_cumprod[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(after.alphas_cumprod, torch.cumprod(1 - after.betas, 0), rtol=0, atol=0)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_sqrt_alpha_bar_after_is_the_affine_map_of_alg_1_of_sqrt_alpha_bar_before(name):
    """a' = (a - a_T) a_1 / (a_1 - a_T) for a = sqrt(alpha_bar): the line through (a_T, 0) and (a_1, a_1)."""
    before, after = schedules(name)
    a, a_new = before.alphas_cumprod.sqrt(), after.alphas_cumprod.sqrt()
    first, last = a[0].item(), a[-1].item()
    torch.testing.assert_close(a_new, (a - last) * first / (first - last), rtol=1e-12, atol=1e-15)
    slopes = (a_new[:-1] - a_new[-1]) / (a[:-1] - a[-1])  # an affine map has one slope between any two points
    torch.testing.assert_close(slopes, torch.full_like(slopes, first / (first - last)), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_rescale_equals_diffusers_rescale_zero_terminal_snr_in_float64(name):
    ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
    before, after = schedules(name)
    torch.testing.assert_close(after.betas, ddpm.rescale_zero_terminal_snr(before.betas.clone()), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["linear", "scaled-linear", "cosine"])
def test_schedules_equal_diffusers_ddpm_scheduler_with_rescale_betas_zero_snr(name):
    diffusers = pytest.importorskip("diffusers")
    knobs = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled-linear" else {}
    oracle = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name], rescale_betas_zero_snr=True, **knobs
    )
    _, ours = schedules(name, 1000)
    torch.testing.assert_close(ours.betas, oracle.betas.double(), atol=1e-5, rtol=0)  # diffusers works in float32
    torch.testing.assert_close(ours.alphas_cumprod, oracle.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert oracle.alphas_cumprod[-1].item() == ours.alphas_cumprod[-1].item() == 0.0


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_the_default_leaves_every_schedule_bit_for_bit_as_it_was(name):
    """zero_terminal_snr=False is the old code path: every coefficient equals that of a schedule made from the
    same betas by the constructor alone, and of the explicit False; the registry's tiny variant is untouched."""
    default = SCHEDULES.build(name, num_timesteps=T)
    explicit = SCHEDULES.build(name, num_timesteps=T, zero_terminal_snr=False)
    plain = NoiseSchedule(default.betas, name=default.name)
    assert not default.zero_terminal_snr and repr(default) == f"NoiseSchedule({name!r}, T={T})"
    for other in (explicit, plain):
        assert tensors(other).keys() == tensors(default).keys()
        for key, value in tensors(default).items():
            assert torch.equal(value, tensors(other)[key]), key
    if name == "linear":  # and the betas are still the formula's: linear in beta, rescaled by 1000 / T
        assert torch.equal(default.betas, torch.linspace(1e-4 * 20, 0.02 * 20, T, dtype=torch.float64))


# The schedule's coefficients at alpha_bar_T = 0.
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_coefficient_is_finite_and_the_closed_forms_hold_at_t(name):
    _, sched = schedules(name)
    for key, value in tensors(sched).items():
        assert torch.isfinite(value).all(), key
    last, x0, eps = T - 1, normal(4, 3, seed=0), normal(4, 3, seed=1)
    assert sched.snr(last).item() == 0.0 and sched.log_snr(last).item() == -math.inf
    assert torch.equal(sched.q_sample(x0, last, eps), eps)  # x_T is pure noise (Eq. 4)
    mean, variance, log_variance = sched.q_posterior(x0, eps, last)  # Eqs. 6-7 at beta_T = 1
    abar_prev = sched.alphas_cumprod[-2]
    torch.testing.assert_close(mean, abar_prev.sqrt() * x0)
    torch.testing.assert_close(variance, (1 - abar_prev).expand_as(eps))
    torch.testing.assert_close(log_variance, (1 - abar_prev).log().expand_as(eps))
    for kind in MODEL_VARIANCES:
        v = torch.zeros_like(eps) if kind == "learned" else None
        assert torch.isfinite(model_log_variance(sched, last, eps, kind, v)).all(), kind


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_v_and_x0_predictions_invert_at_every_t_including_t(name):
    """eps and x0 come back from a v or x0 output at every t, T - 1 too (there: eps = x_T, x0 = -v); eps's own
    inverse, Eq. 15, is 0/0 at T - 1, which is why eps-prediction is refused."""
    _, sched = schedules(name)
    x0, eps = normal(T, 3, seed=0), normal(T, 3, seed=1)
    t = torch.arange(T)
    xt = sched.q_sample(x0, t, eps)
    for prediction_type in ("v", "x0"):
        output = sched.training_target(x0, eps, t, prediction_type)
        eps_hat, x0_hat = sched.split_prediction(output, xt, t, prediction_type)
        torch.testing.assert_close(eps_hat, eps)
        torch.testing.assert_close(x0_hat, x0)
    v = sched.v_target(x0[-1:], eps[-1:], T - 1)
    assert torch.equal(v, -x0[-1:]) and torch.equal(sched.x0_from_v(xt[-1:], T - 1, v), -v)
    assert torch.equal(sched.eps_from_v(xt[-1:], T - 1, v), xt[-1:])
    assert not torch.isfinite(sched.predict_x0_from_eps(xt[-1:], T - 1, eps[-1:])).all()


# Bad inputs to the schedule.
@pytest.mark.parametrize(
    "betas, kwargs, error, message",
    [
        ([0.1, 1.0], {"zero_terminal_snr": True}, ValueError, "0 < beta < 1"),  # a beta of 1 only from the rescale
        ([0.1, 0.2], {"zero_terminal_snr": "yes"}, ArgumentTypeError, "zero_terminal_snr must be true or false"),
        ([0.1, 0.2], {"zero_terminal_snr": 1}, ArgumentTypeError, "zero_terminal_snr must be true or false"),
        ([0.1], {"zero_terminal_snr": True}, ValueError, "needs T >= 2"),
        ([0.999] * 2000, {"zero_terminal_snr": True}, ValueError, "fall strictly"),  # underflow, as without it
    ],
)
def test_bad_zero_terminal_snr_inputs_raise(betas, kwargs, error, message):
    with pytest.raises(error, match=message):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_registered_schedule_checks_its_flag(name):
    with pytest.raises(ArgumentTypeError, match=r"zero_terminal_snr must be true or false \(.*\), got 'true'"):
        SCHEDULES.build(name, tiny=True, zero_terminal_snr="true")
    assert rescale_zero_terminal_snr(SCHEDULES.build(name, tiny=True).betas)[-1].item() == 1.0


# The losses at SNR = 0.
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_min_snr_weights_are_finite_at_snr_zero(prediction_type):
    """Hang et al. 2023 at SNR = 0: min(SNR, gamma) = 0 on the x0 error, so 0 for x0 and v (/ (SNR + 1)), and the
    eps weight min(SNR, gamma) / SNR = min(1, gamma / SNR) is its limit 1, not 0/0."""
    _, sched = schedules("linear")
    t = torch.tensor([0, 20, T - 1])
    weights = min_snr_weight(sched, t, prediction_type, 5.0)
    assert torch.isfinite(weights).all()
    assert weights[-1].item() == (1.0 if prediction_type == "eps" else 0.0)
    x0 = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = lambda xt, t_, **kwargs: torch.zeros_like(xt)  # noqa: E731
    loss = diffusion_loss(model, x0, sched, prediction_type=prediction_type, t=t, snr_gamma=5.0)
    assert torch.isfinite(loss)


def test_the_bound_terms_are_finite_at_t_with_v_prediction():
    _, sched = schedules("cosine")
    x0 = (torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 127.5) - 1
    model = lambda xt, t, **kwargs: torch.zeros_like(xt)  # noqa: E731
    generator = torch.Generator().manual_seed(1)
    assert torch.isfinite(vlb_term(model, x0, T - 1, sched, prediction_type="v", generator=generator)).all()
    assert torch.equal(prior_kl(x0, sched), torch.zeros(2, dtype=x0.dtype))  # q(x_T | x_0) is N(0, I) exactly


# The samplers from the first step at alpha_bar = 0.
M, S = 0.5, 0.5  # data x0 ~ N(M, S^2)


def exact_output(sched: NoiseSchedule, prediction_type: str):
    """The ideal network for Gaussian data: E[x0 | x_t] by Gaussian conditioning, as x0 or as v = (a x_t - x0) / sigma
    (Salimans & Ho 2022; finite at a = 0, where it is -M)."""

    def network(xt, t):
        a = sched.alphas_cumprod[t].sqrt().to(xt).view(-1, 1)
        sigma = (1 - a**2).sqrt()
        x0 = M + a * S**2 / (a**2 * S**2 + sigma**2) * (xt - a * M)
        return x0 if prediction_type == "x0" else (a * xt - x0) / sigma

    return network


def sample(name, network, sched, steps, prediction_type, *, x=None, callback=None, seed=0):
    sampler = SAMPLERS.build(name)
    grid = sampler.grid(sched, steps, spacing="trailing", offset=0, set_alpha_to_one=True)
    assert grid.timesteps[0] == T - 1 and grid.alphas_cumprod[0] == 0.0  # Lin et al. Sec. 3.3: from the last step
    x = normal(4, 1, seed=seed) if x is None else x
    denoiser = Denoiser(network, sched, prediction_type)
    return sampler.sample(denoiser, x, grid, generator=torch.Generator().manual_seed(seed), callback=callback)


@pytest.mark.parametrize("name", SAMPLERS.names())
@pytest.mark.parametrize("prediction_type", ["v", "x0"])
def test_every_sampler_runs_from_pure_noise_with_finite_steps(name, prediction_type):
    _, sched = schedules("linear")
    seen = []
    out = sample(
        name, exact_output(sched, prediction_type), sched, 10, prediction_type, callback=lambda *a: seen.append(a)
    )
    assert len(seen) == 10 and torch.isfinite(out).all()
    assert all(torch.isfinite(xt).all() and torch.isfinite(x0).all() for _, xt, x0 in seen)
    torch.testing.assert_close(seen[0][2], torch.full_like(out, M))  # at SNR = 0 the best x0 is the data's mean


@pytest.mark.parametrize(
    "name, steps, kwargs", [("ddpm", 200, {}), ("ddim", 200, {}), ("ddim", 200, {"eta": 1.0}), ("dpmpp", 20, {})]
)
def test_the_exact_v_model_reproduces_the_data_distribution_from_zero_terminal_snr(name, steps, kwargs):
    _, sched = schedules("cosine", 200)
    n = 20_000
    sampler = SAMPLERS.build(name, **kwargs)
    grid = sampler.grid(sched, steps, spacing="trailing", offset=0, set_alpha_to_one=True)
    x = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).view(n, 1)  # N(0, 1) quantiles
    denoiser = Denoiser(exact_output(sched, "v"), sched, "v")
    samples = sampler.sample(denoiser, x, grid, generator=torch.Generator().manual_seed(0))
    assert samples.mean().item() == pytest.approx(M, abs=0.01)
    assert samples.std().item() == pytest.approx(S, abs=0.012)


def test_dpmpp_first_step_at_alpha_bar_zero_is_the_analytic_limit():
    """lambda_s = -inf: e^{-h} = 0 and sigma_s = 1, so x_t = sigma_t x_s + alpha_t x0 (the step of DDIM, eta = 0),
    and the regular step tends to it as alpha_bar_s -> 0; the next step, with h_last = inf, is first order
    (r = inf)."""
    x, x0, x0_next = normal(3, 4, seed=0), normal(3, 4, seed=1), normal(3, 4, seed=2)
    abar_t = 0.02
    limit = math.sqrt(1 - abar_t) * x + math.sqrt(abar_t) * x0
    torch.testing.assert_close(dpmpp_2m_step(x, x0, 0.0, abar_t), limit, rtol=0, atol=0)
    torch.testing.assert_close(dpmpp_2m_step(x, x0, 1e-14, abar_t), limit, rtol=0, atol=1e-6)
    torch.testing.assert_close(ddim_step(x0, x, abar_t, 0.0, None), limit, rtol=1e-15, atol=1e-15)  # eps = x_T there
    second = dpmpp_2m_step(limit, x0_next, abar_t, 0.3, x0, 0.0)  # history from alpha_bar = 0
    torch.testing.assert_close(second, dpmpp_2m_step(limit, x0_next, abar_t, 0.3), rtol=0, atol=0)
    # the 2M step tends to it as alpha_bar_last -> 0, slowly: the correction is 1 / (2 r), r ~ |lambda_last| / h
    gap = [(dpmpp_2m_step(limit, x0_next, abar_t, 0.3, x0, a) - second).abs().max() for a in (1e-30, 1e-300)]
    assert gap[1] < gap[0] / 5


def test_the_dpmpp_sampler_takes_the_limit_as_its_first_step():
    _, sched = schedules("linear")
    network, seen = exact_output(sched, "v"), []
    x = normal(4, 1, seed=3)
    sample("dpmpp", network, sched, 5, "v", x=x, callback=lambda i, xt, x0: seen.append((xt, x0)))
    grid = SAMPLERS.build("dpmpp").grid(sched, 5, spacing="trailing", offset=0, set_alpha_to_one=True)
    abar_next = grid.alphas_cumprod[1]
    torch.testing.assert_close(seen[0][0], math.sqrt(1 - abar_next) * x + math.sqrt(abar_next) * M)


@pytest.mark.parametrize("prediction_type", ["v", "x0"])
@pytest.mark.parametrize("name, cls, step_kwargs", [("ddpm", "DDPMScheduler", {}), ("ddim", "DDIMScheduler", {})])
def test_ddpm_and_ddim_runs_equal_diffusers_on_a_zero_terminal_snr_schedule(prediction_type, name, cls, step_kwargs):
    diffusers = pytest.importorskip("diffusers")
    _, sched = schedules("linear")
    oracle = getattr(diffusers, cls)(
        num_train_timesteps=T,
        trained_betas=sched.betas.numpy(),
        prediction_type={"v": "v_prediction", "x0": "sample"}[prediction_type],
        timestep_spacing="trailing",
        clip_sample=False,
    )
    assert oracle.alphas_cumprod[-1].item() == 0.0
    network = lambda x, t: 0.8 * torch.tanh(x) + 0.3 * torch.sin(t.to(x.dtype) / 7).view(-1, 1, 1, 1)  # noqa: E731
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    oracle.set_timesteps(10)
    expected, generator = x, torch.Generator().manual_seed(3)
    for t in oracle.timesteps:
        out = network(expected, t.repeat(2))
        expected = oracle.step(out, t, expected, generator=generator, **step_kwargs).prev_sample
    sampler = SAMPLERS.build(name)
    grid = sampler.grid(sched, 10, spacing="trailing", offset=0, set_alpha_to_one=True)
    got = sampler.sample(
        Denoiser(network, sched, prediction_type), x, grid, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# Recipes and pipelines.
def test_a_recipe_takes_zero_terminal_snr_as_a_schedule_kwarg_and_round_trips_json():
    recipe = zoo.recipe("ddpm-linear").replace(schedule={"zero_terminal_snr": True}, prediction_type="v")
    assert recipe.schedule.kwargs == {"zero_terminal_snr": True}
    assert zoo.Recipe.from_json(recipe.to_json()) == recipe
    latent = zoo.recipe("ldm-clip-kl")  # already v-prediction: the schedule override alone is enough
    assert latent.replace(**json.loads('{"schedule": {"zero_terminal_snr": true}}')).schedule.kwargs[
        "zero_terminal_snr"
    ]


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp"])
def test_a_tiny_pixel_pipeline_with_zero_terminal_snr_draws_finite_images(name):
    torch.manual_seed(0)
    recipe = zoo.recipe("ddpm-linear").replace(schedule={"zero_terminal_snr": True}, prediction_type="v")
    pipe = zoo.build(recipe, tiny=True, device="cpu")
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    assert pipe.schedule.zero_terminal_snr and pipe.schedule.alphas_cumprod[-1].item() == 0.0
    seen = []
    pipe.generate(steps=3, sampler=name, seed=0, callback=lambda i, xt, x0: seen.append((xt, x0)))
    assert len(seen) == 3 and all(torch.isfinite(xt).all() and torch.isfinite(x0).all() for xt, x0 in seen)


def test_eps_prediction_with_zero_terminal_snr_is_refused_at_recipe_validation_naming_the_fix():
    with pytest.raises(ValueError, match=r"recipe 'ddpm-linear': .*eps-prediction.*Set prediction_type \"v\""):
        zoo.recipe("ddpm-linear").replace(schedule={"zero_terminal_snr": True})
    with pytest.raises(ValueError, match="eps-prediction"):
        zoo.Recipe.from_dict(
            {
                **zoo.recipe("ddpm-linear").to_dict(),
                "schedule": {"name": "cosine", "kwargs": {"zero_terminal_snr": True}},
            }
        )


def test_leading_spacing_with_zero_terminal_snr_is_refused():
    with pytest.raises(ValueError, match=r"timestep_spacing 'leading' does not: use \"trailing\""):
        zoo.recipe("ldm-clip-kl").replace(schedule={"zero_terminal_snr": True}, timestep_spacing="leading")
    zoo.recipe("ldm-clip-kl").replace(schedule={"zero_terminal_snr": True}, timestep_spacing="linspace")


def test_a_given_zero_terminal_snr_schedule_with_an_eps_recipe_is_refused_at_assembly():
    schedule = SCHEDULES.build("linear", tiny=True, zero_terminal_snr=True)
    with pytest.raises(IncompatiblePartsError, match=r"ddpm-linear: the schedule and the recipe disagree: .*eps"):
        assemble(zoo.recipe("ddpm-linear"), {"schedule": schedule}, tiny=True, device="cpu")


# Training from a saved pipeline, and the diffusers layout.
def test_fine_tuning_with_a_schedule_override_trains_on_the_new_schedule(tmp_path):
    """--init with --overrides '{"schedule": {"zero_terminal_snr": true}, ...}': the pipeline's schedule is rebuilt,
    not only its recipe (which is what gets saved)."""
    from zoo.train import stages

    zoo.build("ddpm-linear", tiny=True, device="cpu").save_pretrained(tmp_path / "eps")
    overrides = json.dumps({"schedule": {"zero_terminal_snr": True}, "prediction_type": "v"})
    args = SimpleNamespace(init=str(tmp_path / "eps"), pipeline="ddpm-linear", overrides=overrides, objective=None)
    pipe = stages.build_for_training(args)
    assert pipe.recipe.schedule.kwargs["zero_terminal_snr"] and pipe.recipe.prediction_type == "v"
    assert pipe.schedule.zero_terminal_snr and pipe.schedule.alphas_cumprod[-1].item() == 0.0


def test_the_diffusers_scheduler_config_says_rescale_betas_zero_snr_and_reads_back(tmp_path):
    from zoo import diffusers_layout as dl

    recipe = zoo.recipe("ldm-clip-kl").replace(schedule={"zero_terminal_snr": True, "num_timesteps": 1000})
    pipeline = SimpleNamespace(recipe=recipe, schedule=SCHEDULES.build(recipe.schedule.name, **recipe.schedule.kwargs))
    config = dl.scheduler_config(pipeline)
    assert config["rescale_betas_zero_snr"] is True
    assert (config["beta_start"], config["beta_end"]) == pytest.approx((1e-4, 0.02), rel=1e-12)  # before the rescale
    plain = SimpleNamespace(recipe=zoo.recipe("ldm-clip-kl"), schedule=SCHEDULES.build("linear"))
    assert "rescale_betas_zero_snr" not in dl.scheduler_config(plain)  # the default config is as it was
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    settings = dl.scheduler_settings(tmp_path)
    assert settings["schedule"].kwargs["zero_terminal_snr"] is True
    rebuilt = SCHEDULES.build(settings["schedule"].name, **settings["schedule"].kwargs)
    assert torch.equal(rebuilt.betas, pipeline.schedule.betas)
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDIMScheduler.from_config(config)
    torch.testing.assert_close(theirs.alphas_cumprod.double(), pipeline.schedule.alphas_cumprod, atol=1e-6, rtol=0)
