"""Samplers with a learned variance (Nichol & Dhariwal 2021 Eq. 15): DDPM steps with Sigma_theta and equals
diffusers' DDPMScheduler with variance_type="learned_range"; DDIM and DPM-Solver++ use the mean part only."""

import pytest
import torch

import components.samplers.ddim
import components.samplers.ddpm
import components.samplers.dpmpp
import components.schedulers.cosine  # noqa: F401  (the imports register samplers and schedules)
from components.registry import SAMPLERS, SCHEDULES
from components.samplers.ddpm import reverse_log_variance
from components.samplers.denoiser import Denoiser

T, STEPS = 50, 10


def mean_part(x, t):
    return 0.8 * torch.tanh(x) + 0.3 * torch.sin(t.to(x.dtype) / 7).view(-1, 1, 1, 1)


def learned(x, t):
    """2C channels: eps, then v in (-1, 1), varying with x and t."""
    return torch.cat([mean_part(x, t), 0.9 * torch.tanh(0.5 * x + t.to(x.dtype).view(-1, 1, 1, 1) / 25 - 1)], dim=1)


def sample(name, network, variance, spacing="leading", seed=3):
    sched = SCHEDULES.build("cosine", num_timesteps=T)
    sampler = SAMPLERS.build(name)
    grid = sampler.grid(sched, STEPS, spacing=spacing)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    denoiser = Denoiser(network, sched, "eps", model_variance=variance)
    return sampler.sample(denoiser, x, grid, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variance, diffusers_type", [("learned", "learned_range"), ("fixed_large", "fixed_large")])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_with_a_learned_variance_equals_diffusers_learned_range(variance, diffusers_type, spacing):
    from diffusers import DDPMScheduler

    sched = SCHEDULES.build("cosine", num_timesteps=T)
    network = learned if variance == "learned" else mean_part
    oracle = DDPMScheduler(
        num_train_timesteps=T,
        trained_betas=sched.betas.numpy(),
        variance_type=diffusers_type,
        clip_sample=False,
        timestep_spacing=spacing,
    )
    oracle.set_timesteps(STEPS)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(3)
    for t in oracle.timesteps:
        x = oracle.step(network(x, t.repeat(2)), t, x, generator=generator).prev_sample
    torch.testing.assert_close(sample("ddpm", network, variance, spacing), x, atol=1e-4, rtol=1e-4)


def test_the_learned_variance_changes_ddpm_but_not_the_deterministic_samplers():
    fixed = sample("ddpm", mean_part, "fixed_small")
    assert (sample("ddpm", learned, "learned") - fixed).abs().max() > 1e-2
    for name in ("ddim", "dpmpp"):  # the probability-flow samplers read the mean part only
        torch.testing.assert_close(sample(name, learned, "learned"), sample(name, mean_part, "fixed_small"))


def test_v_minus_one_and_plus_one_are_the_fixed_variances():
    abar_t, abar_prev = 0.5, 0.8
    small = reverse_log_variance(abar_t, abar_prev, "fixed_small", None)
    large = reverse_log_variance(abar_t, abar_prev, "fixed_large", None)
    v = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    got = reverse_log_variance(abar_t, abar_prev, "learned", v)
    torch.testing.assert_close(got, torch.tensor([small, large, (small + large) / 2], dtype=torch.float64))


def test_guidance_guides_the_mean_and_takes_the_conditional_variance():
    sched = SCHEDULES.build("cosine", num_timesteps=T)

    def network(x, t, c):
        return torch.cat([x * c.view(-1, 1, 1, 1), x * 0 + c.view(-1, 1, 1, 1)], dim=1)

    x = torch.randn(1, 3, 4, 4)
    cond, uncond = {"c": torch.tensor([2.0])}, {"c": torch.tensor([0.5])}
    denoiser = Denoiser(network, sched, "eps", cond=cond, uncond=uncond, guidance_scale=3.0, model_variance="learned")
    (eps, _), v = denoiser.predict(x, 10)
    torch.testing.assert_close(eps, x * (0.5 + 3.0 * (2.0 - 0.5)))
    torch.testing.assert_close(v, torch.full_like(x, 2.0))


def test_a_learned_variance_network_needs_twice_the_channels():
    with pytest.raises(ValueError, match="it must have 6 channels"):
        sample("ddim", mean_part, "learned")
    with pytest.raises(ValueError, match="allowed: fixed_small, fixed_large, learned"):
        Denoiser(mean_part, SCHEDULES.build("cosine", num_timesteps=T), "eps", model_variance="learnt")
