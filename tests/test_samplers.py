"""Samplers against diffusers' schedulers (one step and whole runs, same inputs and noise), an oracle denoiser,
the exact denoiser of Gaussian data (the samples must have the data's mean and spread), the grid and the
denoiser adapter, and bad inputs."""

import math

import pytest
import torch

import components.samplers.ddim
import components.samplers.ddpm
import components.samplers.dpmpp
import components.schedulers.cosine
import components.schedulers.linear  # noqa: F401  (the imports register samplers and schedules)
from components.registry import SAMPLERS, SCHEDULES
from components.samplers.common import Grid, spaced_grid, spaced_timesteps
from components.samplers.ddim import ddim_sigma, ddim_step
from components.samplers.ddpm import ddpm_step
from components.samplers.denoiser import Denoiser
from components.samplers.dpmpp import dpm_timesteps

T = 50
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def schedule(name="linear"):
    return SCHEDULES.build(name, tiny=True)


def toy_model(x, t):
    """A fixed, deterministic stand-in for a network: smooth in x, different at every t."""
    assert t.dtype == torch.long and t.shape == (x.shape[0],) and t.device == x.device
    return 0.8 * torch.tanh(x) + 0.3 * torch.sin(t.to(x.dtype) / 7).view(-1, 1, 1, 1)


def x_T(seed=0):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def run(
    name,
    model,
    x,
    sched,
    steps,
    *,
    prediction_type="eps",
    clip_x0=None,
    grid=None,
    seed=None,
    callback=None,
    spacing="trailing",
    offset=0,
    set_alpha_to_one=True,
    **options,
):
    """The pipeline's call sequence: the registered sampler, its grid, the denoiser adapter, then the steps."""
    sampler = SAMPLERS.build(name, **options)
    if grid is None:
        grid = sampler.grid(sched, steps, spacing=spacing, offset=offset, set_alpha_to_one=set_alpha_to_one)
    denoiser = Denoiser(model, sched, prediction_type, clip_x0=clip_x0)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return sampler.sample(denoiser, x, grid, generator=generator, callback=callback)


def oracle_scheduler(cls_name, sched, prediction_type, **kwargs):
    import diffusers

    cls = getattr(diffusers, cls_name)
    return cls(
        num_train_timesteps=T,
        trained_betas=sched.betas.numpy(),
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        **kwargs,
    )


def diffusers_run(scheduler, x, steps, seed, **step_kwargs):
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps[:steps]:
        out = toy_model(x, t.repeat(x.shape[0]))
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


# Timestep spacing.
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_timesteps, steps", [(1000, 1), (1000, 50), (1000, 61), (1000, 1000), (50, 29), (7, 6)])
def test_spacings_equal_diffusers(spacing, num_timesteps, steps):
    from diffusers import DDIMScheduler

    offset = 1 if spacing == "leading" and steps < num_timesteps else 0
    oracle = DDIMScheduler(num_train_timesteps=num_timesteps, timestep_spacing=spacing, steps_offset=offset)
    oracle.set_timesteps(steps)
    # diffusers' "trailing" sometimes appends a spurious -1 (e.g. T=1000, 61 steps): its first `steps` are the schedule
    assert spaced_timesteps(num_timesteps, steps, spacing, offset) == oracle.timesteps[:steps].tolist()


# One step against diffusers.
@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_one_ddpm_step_equals_diffusers(prediction_type):
    sched, x, k = schedule(), x_T(), 3
    oracle = oracle_scheduler("DDPMScheduler", sched, prediction_type, timestep_spacing="trailing", clip_sample=False)
    oracle.set_timesteps(10)
    t, t_prev = oracle.timesteps[k].item(), oracle.timesteps[k + 1].item()
    out = toy_model(x, torch.full((2,), t))
    expected = oracle.step(out, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    _, x0 = sched.split_prediction(out, x, t, prediction_type)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    alphas_cumprod = sched.alphas_cumprod
    got = ddpm_step(x0, x, float(alphas_cumprod[t]), float(alphas_cumprod[t_prev]), noise)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_one_ddim_step_equals_diffusers(prediction_type, eta):
    sched, x, k = schedule("cosine"), x_T(), 4
    oracle = oracle_scheduler("DDIMScheduler", sched, prediction_type, timestep_spacing="trailing", clip_sample=False)
    oracle.set_timesteps(10)
    t, t_prev = oracle.timesteps[k].item(), oracle.timesteps[k + 1].item()
    out, noise = toy_model(x, torch.full((2,), t)), torch.randn_like(x)
    expected = oracle.step(out, t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
    eps, x0 = sched.split_prediction(out, x, t, prediction_type)
    alpha_cumprod_t, alpha_cumprod_prev = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[t_prev])
    sigma = ddim_sigma(alpha_cumprod_t, alpha_cumprod_prev, eta)
    got = ddim_step(x0, eps, alpha_cumprod_prev, sigma, noise if eta else None)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    noiseless = ddim_step(x0, eps, alpha_cumprod_prev, sigma, None)
    assert ((got - noiseless).abs().max() > 0.01) == (eta > 0)  # eta > 0 really injects the noise


# Whole runs against diffusers (same starting noise, same generator seed).
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddpm_run_equals_diffusers(prediction_type, spacing):
    sched, x = schedule(), x_T()
    oracle = oracle_scheduler("DDPMScheduler", sched, prediction_type, timestep_spacing=spacing, clip_sample=False)
    expected = diffusers_run(oracle, x, 10, seed=3)
    got = run("ddpm", toy_model, x, sched, 10, prediction_type=prediction_type, spacing=spacing, seed=3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("eta, clip", [(0.0, None), (1.0, None), (0.0, 1.0)])
def test_ddim_run_equals_diffusers(prediction_type, eta, clip):
    sched, x = schedule("cosine"), x_T()
    oracle = oracle_scheduler(
        "DDIMScheduler",
        sched,
        prediction_type,
        timestep_spacing="trailing",
        clip_sample=clip is not None,
        clip_sample_range=clip or 1.0,
    )
    expected = diffusers_run(oracle, x, 10, seed=4, eta=eta)
    got = run("ddim", toy_model, x, sched, 10, prediction_type=prediction_type, eta=eta, seed=4, clip_x0=clip)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 10])
def test_dpmpp_run_equals_diffusers(prediction_type, steps):
    sched, x = schedule(), x_T()
    oracle = oracle_scheduler(
        "DPMSolverMultistepScheduler",
        sched,
        prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
    )
    expected = diffusers_run(oracle, x, steps, seed=0)
    got = run("dpmpp", toy_model, x, sched, steps, prediction_type=prediction_type)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    first_order = run("ddim", toy_model, x, sched, steps, prediction_type=prediction_type)
    assert (got - first_order).abs().max() > 1e-3  # the second-order correction is really there


@pytest.mark.parametrize(("spacing", "offset"), [("leading", 1), ("linspace", 0)])
def test_dpmpp_spacings_equal_diffusers_dpm_solver_grid(spacing, offset):
    """diffusers' DPM-Solver spaces "leading" / "linspace" on S + 1 points (not its DDIM grid): seeds shared from
    a Stable Diffusion config (leading, steps_offset 1) must reproduce, timesteps and whole runs."""
    sched, x = schedule(), x_T()
    oracle = oracle_scheduler(
        "DPMSolverMultistepScheduler",
        sched,
        "eps",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    oracle.set_timesteps(10)
    assert dpm_timesteps(sched.num_timesteps, 10, spacing, offset) == oracle.timesteps.tolist()
    assert dpm_timesteps(sched.num_timesteps, 10, spacing, offset) != spaced_timesteps(
        sched.num_timesteps, 10, spacing, offset
    )
    expected = diffusers_run(oracle, x, 10, seed=0)
    got = run("dpmpp", toy_model, x, sched, 10, spacing=spacing, offset=offset)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# Known answers.
@pytest.mark.parametrize("name", SAMPLERS.names())
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_oracle_model_recovers_x0(name, prediction_type):
    sched, x0 = schedule("cosine"), torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def oracle(xt, t):
        eps = sched.predict_eps_from_x0(xt, t, x0)
        return sched.training_target(x0, eps, t, prediction_type)

    x = torch.randn_like(x0)
    kwargs = {"eta": 1.0} if name == "ddim" else {}  # stochastic DDIM too: the oracle's x0 cancels the noise
    got = run(name, oracle, x, sched, 7, prediction_type=prediction_type, **kwargs)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, x0, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(
    "name, steps, kwargs", [("ddpm", 200, {}), ("ddim", 200, {}), ("ddim", 200, {"eta": 1.0}), ("dpmpp", 20, {})]
)
def test_exact_denoiser_of_gaussian_data_reproduces_the_data_distribution(name, steps, kwargs):
    """For x0 ~ N(m, s^2) the ideal eps-model is known in closed form; enough steps of any sampler must turn
    N(0, 1) into N(m, s^2) (up to a small discretisation bias: DDPM's beta tilde slightly under-disperses)."""
    sched, m, s, n = SCHEDULES.build("cosine", num_timesteps=200), 0.5, 0.5, 20_000

    def exact(xt, t):
        a = sched.alphas_cumprod[t].sqrt().to(xt).view(-1, 1)
        sigma = (1 - a**2).sqrt()
        x0_mean = m + a * s**2 / (a**2 * s**2 + sigma**2) * (xt - a * m)  # E[x0 | xt], Gaussian conditioning
        return (xt - a * x0_mean) / sigma

    x = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).view(n, 1)  # N(0, 1) quantiles
    samples = run(name, exact, x, sched, steps, seed=0, **kwargs)
    assert samples.mean().item() == pytest.approx(m, abs=0.01)
    assert samples.std().item() == pytest.approx(s, abs=0.012)


# The common contract.
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_callback_sees_every_step_and_the_generator_makes_runs_reproducible(name):
    sched, seen = schedule(), []
    callback = lambda i, xt, x0: seen.append((i, xt, x0))  # noqa: E731
    go = lambda seed, cb=None: run(name, toy_model, x_T(), sched, 6, seed=seed, callback=cb)  # noqa: E731
    out = go(0, callback)
    assert [i for i, _, _ in seen] == list(range(6)) and torch.equal(seen[-1][1], out)
    torch.testing.assert_close(go(0), out, atol=0, rtol=0)
    stochastic = name == "ddpm"  # ddim (eta = 0 by default) and dpmpp are deterministic
    assert ((go(1) - out).abs().max() > 1e-3) == stochastic


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_clip_x0_bounds_the_predicted_x0(name):
    sched, seen = schedule(), []
    loud = lambda xt, t: -20 * xt  # noqa: E731  (an eps that sends x0 far outside [-1, 1])
    run(name, loud, x_T(), sched, 4, clip_x0=1.0, callback=lambda i, xt, x0: seen.append(x0))
    assert all(x0.abs().max() <= 1.0 for x0 in seen) and seen[0].abs().max() == 1.0


# Bad inputs.
@pytest.mark.parametrize("name", SAMPLERS.names())
@pytest.mark.parametrize("steps", [0, T + 1, 2.5, True])
def test_steps_out_of_range_raise(name, steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 50\]"):
        run(name, toy_model, x_T(), schedule(), steps)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"prediction_type": "epsilon"}, ValueError, "allowed: eps, x0, v"),
        ({"spacing": "uniform"}, ValueError, "allowed: leading, trailing, linspace"),
        ({"offset": 1}, ValueError, "non-zero only with 'leading'"),
        ({"offset": -1, "spacing": "leading"}, ValueError, r"steps_offset must be an integer >= 0, got -1"),
        ({"offset": 0.5, "spacing": "leading"}, TypeError, r"steps_offset must be an integer >= 0, got 0.5"),
        ({"steps": T, "offset": 1, "spacing": "leading"}, ValueError, "beyond T - 1"),
        ({"clip_x0": 0.0}, ValueError, "positive bound"),
        ({"clip_x0": True}, TypeError, "clip_x0 must be a finite number"),
    ],
)
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_bad_sampler_arguments_raise(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        run(name, toy_model, x_T(), schedule(), **{"steps": 5, **kwargs})


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_bad_x_and_bad_model_output_raise(name):
    with pytest.raises(TypeError, match="floating-point tensor"):
        run(name, toy_model, torch.zeros(2, 3, 8, 8, dtype=torch.long), schedule(), 5)
    with pytest.raises(ValueError, match="model output has shape"):
        run(name, lambda x, t: torch.cat([x, x], 1), x_T(), schedule(), 5)
    with pytest.raises(TypeError, match="grid must be a Grid"):
        SAMPLERS.build(name).sample(Denoiser(toy_model, schedule()), x_T(), [49, 20, 0])


@pytest.mark.parametrize("eta", [-0.5, math.nan, "1", True])
def test_bad_eta_raises(eta):
    with pytest.raises(ValueError, match=r"eta must be a (finite )?number >= 0"):
        SAMPLERS.build("ddim", eta=eta)


# The grid and the denoiser adapter.
def test_the_grid_ends_where_set_alpha_to_one_says_and_slices_into_grids():
    sched = schedule()
    ends_at_data = spaced_grid(sched, 10)
    ends_at_first = spaced_grid(sched, 10, set_alpha_to_one=False)
    assert ends_at_data.timesteps == ends_at_first.timesteps == tuple(spaced_timesteps(T, 10))
    assert ends_at_data.alphas_cumprod[-1] == 1.0
    assert ends_at_first.alphas_cumprod[-1] == float(sched.alphas_cumprod[0])
    tail = ends_at_first[-3:]
    assert tail.timesteps == ends_at_first.timesteps[-3:] and tail.alphas_cumprod == ends_at_first.alphas_cumprod[-4:]
    assert [step.last for step in tail] == [False, False, True]
    head = ends_at_data[:2]
    assert head.alphas_cumprod[-1] == float(sched.alphas_cumprod[ends_at_data.timesteps[2]])  # lands on the next one
    with pytest.raises(TypeError, match="contiguous slice"):
        ends_at_data[::2]
    with pytest.raises(ValueError, match="S >= 1 timesteps and S \\+ 1"):
        Grid((3, 1), (0.5, 0.9))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_a_run_on_the_last_k_entries_of_the_grid_continues_the_full_run(name):
    """img2img's contract: starting at grid[-k:] from the full run's x at that point ends where the full run ends."""
    sched = schedule()
    grid = SAMPLERS.build(name).grid(sched, 8, spacing="trailing", offset=0, set_alpha_to_one=True)
    seen = {}
    full = run(name, toy_model, x_T(), sched, 8, grid=grid, callback=lambda i, xt, x0: seen.setdefault(i, xt))
    if name == "dpmpp":  # multistep: the history restarts, so the first step of the tail is first order
        tail = run(name, toy_model, seen[4], sched, 3, grid=grid[-3:])
        assert (tail - full).abs().max() < 0.1 * full.abs().max()
        return
    tail = run(name, toy_model, seen[4], sched, 3, grid=grid[-3:], seed=None if name != "ddpm" else 0)
    if name == "ddpm":
        assert tail.shape == full.shape and torch.isfinite(tail).all()  # fresh noise: only the shape is shared
    else:
        torch.testing.assert_close(tail, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_a_tensor_returned_by_the_callback_replaces_x_t(name):
    """Inpainting's hook: what the callback returns is where the next step starts."""
    sched, starts = schedule(), []
    model = lambda xt, t: (starts.append(xt.clone()), toy_model(xt, t))[1]  # noqa: E731
    run(name, model, x_T(), sched, 3, callback=lambda i, xt, x0: torch.zeros_like(xt))
    assert all(torch.equal(x, torch.zeros_like(x)) for x in starts[1:])
    assert not torch.equal(starts[0], torch.zeros_like(starts[0]))


def test_the_denoiser_guides_with_one_batched_call():
    calls = []

    def network(x, t, context):
        calls.append(x.shape[0])
        return x * 0 + context.view(-1, 1, 1, 1)

    sched, x = schedule(), x_T()
    cond, uncond = {"context": torch.full((2,), 2.0)}, {"context": torch.full((2,), -1.0)}
    for w, expected in [(1.0, 2.0), (0.0, -1.0), (3.0, -1.0 + 3.0 * 3.0)]:
        denoiser = Denoiser(network, sched, "eps", cond=cond, uncond=uncond, guidance_scale=w)
        eps, x0 = denoiser(x, 10)  # Ho & Salimans Eq. 6: eps_u + w (eps_c - eps_u)
        torch.testing.assert_close(eps, torch.full_like(x, expected))
        torch.testing.assert_close(x0, sched.predict_x0_from_eps(x, 10, eps))
    assert calls == [2, 4, 4]  # w = 1 needs no unconditional pass; otherwise both in one batch
    with pytest.raises(ValueError, match=r"guidance_scale must be a number in \[0, 30\], got 31"):
        Denoiser(network, sched, guidance_scale=31)
