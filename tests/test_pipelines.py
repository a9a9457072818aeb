"""Pipelines end to end on tiny parts: building, determinism, compatibility checks, saving, DDPM Eq. 4 through
forward_noise, classifier-free guidance (Ho & Salimans 2022 Eq. 6) and every bad input's error."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import zoo
from zoo.assembly import IncompatiblePartsError
from zoo.data.shapes import Attributes, render
from zoo.pipeline_io import WEIGHTS_ROOT
from zoo.registry import PIPELINES, UnknownNameError

zoo.available()  # fills the registries
PIPELINE_NAMES = PIPELINES.names()
STEPS = 2
PROMPT = "a red circle on a blue background"
OTHER_PROMPT = "a small yellow triangle in the top left on a black background"


def tiny(name: str | zoo.Recipe, *, randomise: bool = True) -> Any:
    """A tiny pipeline on the CPU. `randomise` perturbs every U-Net weight (its output layers start at zero,
    which would make its prediction, and so any check on it, independent of the input)."""
    torch.manual_seed(0)
    pipe = zoo.build(name, tiny=True, device="cpu")
    if randomise:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return pipe


def a_map(shape: str = "circle") -> torch.Tensor:
    """A semantic map (integer label per pixel) from the dataset's renderer."""
    return torch.from_numpy(render(Attributes(shape, "red", "blue", "large", "center"))[1])


def inputs_for(pipe: Any, prompt: str = PROMPT) -> dict[str, Any]:
    """What a pipeline needs to generate: a prompt, a class index, and/or a semantic map."""
    kwargs: dict[str, Any] = {}
    if pipe.recipe.concat_image == "low_res":  # super-resolution: a 16x16 image and nothing else
        return {"image": two_halves(40, 200).resize((16, 16))}
    if pipe.recipe.conditioner is not None:
        kwargs["prompt"] = 5 if pipe.recipe.conditioner.name == "class" else prompt
    if pipe.recipe.spatial is not None:
        kwargs["semantic_map"] = a_map()
    if pipe.recipe.concat_image == "inpaint":  # an inpainting model: an image and its mask (right half repainted)
        kwargs["image"], kwargs["mask_image"] = two_halves(40, 200), np.zeros((64, 64), dtype=np.uint8)
        kwargs["mask_image"][:, 32:] = 255
    return kwargs


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def two_halves(left: int, right: int) -> Image.Image:
    array = np.full((64, 64, 3), left, dtype=np.uint8)
    array[:, 32:] = right
    return Image.fromarray(array)


# --------------------------------------------------------------------------------------------------- build
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_every_registered_name_builds_tiny_and_generates_deterministically(name):
    pipe = tiny(name, randomise=False)
    kwargs = inputs_for(pipe)
    first = pipe.generate(steps=STEPS, seed=3, **kwargs)
    side = pipe.recipe.image_size
    assert len(first) == 1 and first[0].size == (side, side) and first[0].mode == "RGB"
    again = pipe.generate(steps=STEPS, seed=3, **kwargs)
    np.testing.assert_array_equal(pixels(first), pixels(again))
    other = pipe.generate(steps=STEPS, seed=4, **kwargs)
    assert np.abs(pixels(other) - pixels(first)).mean() > 1.0


def test_num_images_are_all_different_and_a_batch_does_not_change_its_first_image():
    pipe = tiny("ldm-clip-kl")
    images = pipe.generate(PROMPT, steps=STEPS, seed=0, num_images=3, guidance_scale=1.0, sampler="ddim")
    array = pixels(images)
    assert len(images) == 3 and np.abs(array[0] - array[1]).mean() > 1.0
    # x_T for image k is drawn after image k-1's from one generator (as diffusers does), so with a deterministic
    # sampler image 0 is the single image; ancestral samplers draw each step's noise for the whole batch
    single = pixels(pipe.generate(PROMPT, steps=STEPS, seed=0, num_images=1, guidance_scale=1.0, sampler="ddim"))[0]
    assert np.abs(single - array[0]).max() <= 1  # batched convolutions may round differently by one level


@pytest.mark.parametrize(
    ("name", "change", "names"),
    [
        ("ldm-clip-kl", {"autoencoder": {"latent_channels": 3}}, ["'kl-f4'", "3 latent channels", "in_channels=4"]),
        ("ldm-clip-kl", {"unet": {"context_dim": 64}}, ["conditioner 'clip'", "width 128", "context_dim is 64"]),
        ("ldm-class-vq", {"conditioner": {"dim": 32}}, ["conditioner 'class'", "width 32", "context_dim is 128"]),
        ("ldm-none-kl", {"unet": {"context_dim": 16}}, ["conditioner None", "context_dim is 16"]),
        ("ldm-seg-kl", {"unet": {"concat_channels": 2}}, ["spatial conditioner", "gives 4 map channels", "is 2"]),
        ("ldm-seg-kl", {"spatial": {"num_labels": 3, "palette": None}}, ["gives 3 map channels", "is 4"]),
    ],
)
def test_build_checks_that_parts_fit_and_names_both(name, change, names):
    recipe = zoo.recipe(name).replace(**change)
    with pytest.raises(IncompatiblePartsError) as info:
        zoo.build(recipe, tiny=True, device="cpu")
    message = str(info.value)
    assert "U-Net" in message and message.startswith(name), message
    for expected in names:
        assert expected in message, message
    with pytest.raises(IncompatiblePartsError):  # the same overrides straight through build(name, ...)
        zoo.build(name, tiny=True, device="cpu", **change)


def test_concat_conditioning_widens_the_unets_input_by_the_maps_channels():
    for name in ("ldm-seg-kl", "ldm-clip+seg-vq-f8"):
        pipe = tiny(name, randomise=False)
        latent, maps = pipe.autoencoder.latent_channels, pipe.spatial.channels
        assert pipe.unet.config.in_channels == latent and pipe.unet.config.concat_channels == maps
        assert pipe.unet.conv_in.in_channels == latent + maps == 4 + 4
        concat = pipe.condition(None, a_map(), 2)["concat"]
        assert concat.shape == (2, maps, *pipe.latent_shape[1:])
    assert tiny("ldm-clip-kl", randomise=False).unet.conv_in.in_channels == 4


def test_a_name_without_weights_warns_that_it_is_random():
    assert not (WEIGHTS_ROOT / "ldm-class-kl-f8").exists()
    with pytest.warns(UserWarning, match="randomly initialised"):
        pipe = zoo.build("ldm-class-kl-f8", device="cpu")
    assert not pipe.pretrained and "random weights" in repr(pipe)


def test_pretrained_false_gives_random_weights():
    shipped = load_file(WEIGHTS_ROOT / "ldm-clip-kl" / "unet" / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = zoo.build("ldm-clip-kl", pretrained=False, device="cpu")
    assert not pipe.pretrained and "random weights" in repr(pipe)
    key = "conv_in.weight"
    assert pipe.unet.state_dict()[key].shape == shipped[key].shape
    assert not torch.allclose(pipe.unet.state_dict()[key], shipped[key].float())


def test_pretrained_false_warns_about_random_weights():
    with pytest.warns(UserWarning, match="random"):
        zoo.build("ddpm-cosine", pretrained=False, device="cpu")


def test_tiny_and_shipped_builds_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.build("ldm-clip-kl", tiny=True, device="cpu")
        assert zoo.build("ddpm-cosine", device="cpu").pretrained


def test_build_needs_a_name_or_weights():
    with pytest.raises(ValueError, match="needs a pipeline name"):
        zoo.build()


def with_t50(name: str) -> zoo.Recipe:
    """The recipe with the tiny schedule's T written into it (so the round trip below tests the weights alone)."""
    return zoo.recipe(name).replace(schedule={"num_timesteps": 50})


def test_a_saved_tiny_pipeline_keeps_its_schedule(tmp_path):
    pipe = tiny("ddpm-cosine", randomise=False)
    loaded = zoo.load_pipeline(pipe.save_pretrained(tmp_path / "tiny"), device="cpu")
    assert loaded.num_timesteps == pipe.num_timesteps == 50


@pytest.mark.parametrize("name", ["ddpm-cosine", "ldm-clip-kl", "ldm-bert-vq", "ldm-class-kl-f8", "ldm-clip+seg-kl"])
def test_save_pretrained_then_load_gives_identical_images(name, tmp_path):
    pipe = tiny(with_t50(name))
    kwargs = {"steps": STEPS, "seed": 5, **inputs_for(pipe)}
    expected = pixels(pipe.generate(**kwargs))
    pipe.save_pretrained(tmp_path / name)
    roles = {p.name for p in (tmp_path / name).iterdir() if p.is_dir()}
    assert roles == set(pipe.modules()) and (tmp_path / name / "recipe.json").is_file()
    for loaded in (zoo.load_pipeline(tmp_path / name, device="cpu"), zoo.build(weights=tmp_path / name, device="cpu")):
        assert loaded.pretrained and loaded.recipe.to_json() == pipe.recipe.to_json()
        np.testing.assert_array_equal(pixels(loaded.generate(**kwargs)), expected)
    perturbed = tiny(with_t50(name))  # the check can fail: other U-Net weights draw other pixels
    with torch.no_grad():
        next(perturbed.unet.parameters()).mul_(3.0)
    assert np.abs(pixels(perturbed.generate(**kwargs)) - expected).mean() > 0.5


# ------------------------------------------------------------------------------------------- bad inputs
def test_unknown_pipeline_name_raises_with_the_close_match():
    with pytest.raises(UnknownNameError, match="Did you mean 'ddpm-cosine'"):
        zoo.build("ddpm-cosin")


@pytest.mark.parametrize("name", ["ddpm-linear", "ldm-clip-kl"])
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"steps": 0}, ValueError, r"steps must be an integer in \[1, 50\]"),
        ({"steps": -1}, ValueError, r"steps must be an integer in \[1, 50\]"),
        ({"steps": 51}, ValueError, r"steps must be an integer in \[1, 50\] \(the schedule's T\), got 51"),
        ({"steps": 2.5}, ValueError, "steps must be an integer"),
        ({"seed": -1}, ValueError, r"seed must be an integer in \[0, 9223372036854775807\] \(2\*\*63 - 1.*got -1"),
        ({"seed": "7"}, TypeError, r"seed must be an integer .*got '7' \(str\)"),
        ({"seed": True}, TypeError, r"seed must be an integer .*got True \(bool\)"),
        ({"num_images": np.int64(2), "steps": 51}, ValueError, r"steps must be an integer in \[1, 50\]"),
        ({"num_images": 0}, ValueError, r"num_images must be an integer in \[1, 16\], got 0"),
        ({"num_images": 17}, ValueError, r"num_images must be an integer in \[1, 16\], got 17"),
        ({"sampler": "ddimm"}, UnknownNameError, "unknown sampler 'ddimm'. Did you mean 'ddim'"),
    ],
)
def test_bad_generate_inputs_raise_clear_errors(name, change, error, message):
    pipe = tiny(name, randomise=False)
    with pytest.raises(error, match=message):
        pipe.generate(**{"seed": 0, "steps": STEPS, **inputs_for(pipe), **change})


@pytest.mark.parametrize("w", [-0.5, 30.5])
def test_guidance_scale_out_of_range_raises(w):
    with pytest.raises(ValueError, match=rf"guidance_scale must be a number in \[0, 30\], got {w}"):
        tiny("ldm-clip-kl", randomise=False).generate(PROMPT, guidance_scale=w, steps=STEPS, seed=0)


def test_a_map_conditioned_pipeline_without_a_map_raises():
    pipe = tiny("ldm-seg-kl", randomise=False)
    with pytest.raises(ValueError, match="conditioned on a semantic map: pass semantic_map="):
        pipe.generate(steps=STEPS, seed=0)


@pytest.mark.parametrize("name", ["ddpm-cosine", "ldm-seg-vq"])
@pytest.mark.parametrize(
    ("image", "t", "kwargs", "error", "message"),
    [
        ("image", -1, {}, ValueError, r"t must be an integer in \[0, 50\] \(0 the image, T pure noise\), got -1"),
        ("image", 51, {}, ValueError, r"t must be an integer in \[0, 50\] \(0 the image, T pure noise\), got 51"),
        ("image", 1.5, {}, ValueError, r"t must be an integer in \[0, 50\]"),
        ("image", 3, {"seed": -2}, ValueError, r"seed must be an integer in \[0, "),
        ("a cat.png", 3, {}, TypeError, "expected a PIL image, a uint8 array or an image tensor, got str"),
        (np.zeros((8, 8, 3), np.float32), 3, {}, ValueError, "an image array must be uint8"),
        (torch.zeros(1, 4, 8, 8), 3, {}, ValueError, r"an image tensor must be float \(3, H, W\)"),
        ("image", 3, {"space": "frequency"}, ValueError, "space must be"),
    ],
)
def test_bad_forward_noise_inputs_raise_clear_errors(name, image, t, kwargs, error, message):
    pipe = tiny(name, randomise=False)
    image = two_halves(96, 160) if isinstance(image, str) and image == "image" else image
    with pytest.raises(error, match=message):
        pipe.forward_noise(image, t, **kwargs)


# ------------------------------------------------------------------------------------------ forward_noise
def test_forward_noise_at_t0_returns_the_image():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for name in ("ddpm-linear", "ldm-clip-kl"):
        np.testing.assert_array_equal(np.asarray(tiny(name).forward_noise(image, 0, seed=9)), np.asarray(image))


def test_forward_noise_pixels_have_the_closed_forms_mean_and_variance():
    """DDPM Eq. 4 read back from PNG pixels: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Paper's t = 3
    is the schedule's 0-based index 2. Grey levels 96 / 160 and a std of 0.17 keep clamping at [-1, 1] over 4 sigma
    away; the uint8 rounding adds (2/255)^2 / 12 = 5e-6 of variance, negligible against 1 - alpha_bar_t = 0.03."""
    pipe = tiny("ddpm-linear", randomise=False)
    t, alpha_cumprod = 3, float(pipe.scheduler.alphas_cumprod[2])
    x_t = np.stack(
        [np.asarray(pipe.forward_noise(two_halves(96, 160), t, seed=s)) / 127.5 - 1 for s in range(16)]
    )  # (16, 64, 64, 3) in [-1, 1]
    for half, level in ((x_t[:, :, :32], 96), (x_t[:, :, 32:], 160)):
        x0 = level / 127.5 - 1
        standard_error = (1 - alpha_cumprod) ** 0.5 / half.size**0.5
        assert abs(half.mean() - alpha_cumprod**0.5 * x0) < 4 * standard_error
        assert half.var() == pytest.approx(1 - alpha_cumprod, rel=0.03)
    neighbours = [float(1 - pipe.scheduler.alphas_cumprod[i]) for i in (1, 3)]  # t = 2 and t = 4 would fail
    assert all(abs(x_t[:, :, :32].var() / v - 1) > 0.3 for v in neighbours)


def test_closed_form_tensor_statistics_over_many_seeds():
    """Per element over 400 seeds at t = T/2: mean sqrt(alpha_bar_t) x_0, variance 1 - alpha_bar_t (DDPM Eq. 4)."""
    pipe = tiny("ddpm-cosine", randomise=False)
    t = pipe.num_timesteps // 2
    alpha_cumprod = float(pipe.scheduler.alphas_cumprod[t - 1])
    x0 = torch.linspace(-0.9, 0.9, 3 * 8 * 8).reshape(1, 3, 8, 8)
    x_t = torch.cat([pipe.closed_form(x0, t, seed) for seed in range(400)]).double()
    tolerance = 4 * ((1 - alpha_cumprod) / 400) ** 0.5
    assert (x_t.mean(0) - alpha_cumprod**0.5 * x0[0]).abs().max() < tolerance
    assert x_t.var(0).mean().item() == pytest.approx(1 - alpha_cumprod, rel=0.05)
    assert torch.equal(pipe.closed_form(x0, t, 7), pipe.closed_form(x0, t, 7))  # seeded


def test_forward_noise_in_latent_space_noises_the_latents_and_decodes():
    pipe = tiny("ldm-clip-kl", randomise=False)
    image = render(Attributes("square", "green", "white", "large", "center"))[0]
    clean = np.asarray(pipe.decode(pipe.encode(image))[0], dtype=np.int16)
    at0 = np.asarray(pipe.forward_noise(image, 0, space="latent"), dtype=np.int16)
    np.testing.assert_array_equal(at0, clean)  # t = 0: the autoencoder's round trip, no noise
    noisy = [np.asarray(pipe.forward_noise(image, t, seed=1, space="latent"), dtype=np.int16) for t in (5, 50)]
    distances = [np.abs(x - clean).mean() for x in noisy]
    assert 0 < distances[0] < distances[1]
    with pytest.raises(ValueError, match="space must be 'pixel'"):
        tiny("ddpm-cosine", randomise=False).forward_noise(image, 1, space="latent")


# ------------------------------------------------------------------------------------- device, scheduler
def test_to_cpu_moves_every_module_and_returns_the_pipeline():
    pipe = tiny("ldm-clip+seg-kl", randomise=False)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    for role, module in pipe.modules().items():
        assert all(p.device.type == "cpu" for p in module.parameters()), role
        assert not module.training, role
    assert set(pipe.modules()) == {"unet", "autoencoder", "conditioner", "spatial"}


def test_scheduler_exposes_the_schedule():
    pipe = tiny("ddpm-linear", randomise=False)
    s = pipe.scheduler
    assert s is pipe.schedule and s.num_timesteps == pipe.num_timesteps == 50
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))  # alpha_bar_t = prod(1 - beta_s)
    assert s.betas.dtype == torch.float64 and bool((s.alphas_cumprod.diff() < 0).all())


@pytest.mark.parametrize(("name", "shape"), [("ddpm-cosine", (2, 3, 64, 64)), ("ldm-bert-kl-f8", (2, 4, 8, 8))])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp"])
def test_callback_is_called_once_per_step_with_x_t_and_x0(name, shape, sampler):
    pipe, calls = tiny(name), []
    pipe.generate(
        steps=3, sampler=sampler, seed=0, num_images=2, callback=lambda *a: calls.append(a), **inputs_for(pipe)
    )
    assert [c[0] for c in calls] == [0, 1, 2]
    for _, x_t, x0 in calls:
        assert x_t.shape == shape and x0.shape == shape and torch.isfinite(x0).all()
    assert not torch.equal(calls[0][1], calls[-1][1])  # x_t moves from step to step


# ------------------------------------------------------------------------------ classifier-free guidance
def test_guidance_at_w1_is_the_conditional_and_at_w0_the_unconditional_prediction():
    pipe = tiny("ldm-clip-kl")
    cond, uncond = pipe.condition(PROMPT, None, 2), pipe.condition(None, None, 2)
    x_t = torch.randn(2, *pipe.latent_shape)
    t = torch.tensor([10, 40])
    with torch.no_grad():
        eps_cond, eps_uncond = pipe.unet(x_t, t, **cond), pipe.unet(x_t, t, **uncond)
        assert (eps_cond - eps_uncond).abs().mean() > 1e-2  # the U-Net reads the context, so the check can fail
        torch.testing.assert_close(pipe.denoiser(cond, uncond, 1.0).network_output(x_t, t), eps_cond)
        torch.testing.assert_close(
            pipe.denoiser(cond, uncond, 0.0).network_output(x_t, t), eps_uncond, atol=1e-5, rtol=1e-4
        )
        guided = pipe.denoiser(cond, uncond, 3.0).network_output(
            x_t, t
        )  # Ho & Salimans Eq. 6: eps_u + w (eps_c - eps_u)
        torch.testing.assert_close(guided, eps_uncond + 3.0 * (eps_cond - eps_uncond), atol=1e-5, rtol=1e-4)


def test_the_empty_condition_is_the_conditioners_empty_input():
    pipe = tiny("ldm-class-kl")
    null = pipe.conditioner.empty_input()
    torch.testing.assert_close(pipe.condition(None, None, 1)["context"], pipe.condition(null, None, 1)["context"])
    assert not torch.equal(pipe.condition(None, None, 1)["context"], pipe.condition(3, None, 1)["context"])


def test_a_negative_prompt_changes_the_image_only_when_guidance_is_on():
    pipe = tiny("ldm-clip-kl")
    base = {"steps": 3, "seed": 0, "guidance_scale": 4.0}
    plain = pixels(pipe.generate(PROMPT, **base))
    negative = pixels(pipe.generate(PROMPT, negative_prompt=OTHER_PROMPT, **base))
    assert np.abs(plain - negative).mean() > 0.5
    at_w1 = {**base, "guidance_scale": 1.0}
    np.testing.assert_array_equal(
        pixels(pipe.generate(PROMPT, **at_w1)), pixels(pipe.generate(PROMPT, negative_prompt=OTHER_PROMPT, **at_w1))
    )


def test_the_prompt_and_the_map_reach_the_image():
    pipe = tiny("ldm-clip+seg-kl")
    base = {"steps": 3, "seed": 0, "guidance_scale": 1.0}
    reference = pixels(pipe.generate(PROMPT, semantic_map=a_map("circle"), **base))
    assert np.abs(pixels(pipe.generate(OTHER_PROMPT, semantic_map=a_map("circle"), **base)) - reference).mean() > 0.5
    assert np.abs(pixels(pipe.generate(PROMPT, semantic_map=a_map("square"), **base)) - reference).mean() > 0.5


def test_assemble_uses_the_given_parts_as_they_are_and_builds_the_rest():
    """The one assembly: training hands it trained parts, the loaders all of them, zoo.build none."""
    from zoo.assembly import assemble

    recipe = zoo.recipe("ldm-class-kl")
    first = assemble(recipe, tiny=True, device="cpu")
    again = assemble(recipe, {"autoencoder": first.autoencoder}, tiny=True, device="cpu", pretrained=True)
    assert again.autoencoder is first.autoencoder and again.unet is not first.unet and again.pretrained
    assert type(again).__name__ == "LatentPipeline" and not first.pretrained
    with pytest.raises(IncompatiblePartsError, match=r"parts \['spatial'\] have no role in the recipe"):
        assemble(recipe, {"spatial": first.autoencoder}, tiny=True, device="cpu")
    narrow = type(first.autoencoder)(first.autoencoder.config.replace(latent_channels=3))
    with pytest.raises(IncompatiblePartsError, match="makes 3 latent channels"):  # a given part is checked too
        assemble(recipe, {"autoencoder": narrow}, tiny=True, device="cpu")
