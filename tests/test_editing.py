"""Image-to-image (SDEdit) and training-free inpainting (the blended step) on tiny pipelines, and every bad
image, mask, strength and latents input. diffusers as the oracle for Stable Diffusion: tests/test_sd_checkpoints.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.pipelines import image_input
from zoo.pipelines.editing import img2img_grid

SAMPLERS = ("ddpm", "ddim", "dpmpp")
PROMPT = "a red circle on a blue background"


def tiny(name: str):
    torch.manual_seed(0)
    pipe = zoo.build(name, tiny=True, device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the output layers start at zero: perturb so the prediction depends on the input
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return pipe


def picture(size: int = 64) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[..., 2] = 200
    array[size // 4 : size // 2, size // 4 : 3 * size // 4] = (230, 40, 30)
    return Image.fromarray(array)


def right_half(size: int = 64) -> Image.Image:
    array = np.zeros((size, size), dtype=np.uint8)
    array[:, size // 2 :] = 255
    return Image.fromarray(array)


def unet_inputs(pipe):
    """Record every x_t the U-Net is called on (a forward pre-hook); returns (list, handle)."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen, handle


# --------------------------------------------------------------------------------------------------- img2img
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_strength_runs_the_last_int_steps_times_strength_steps_of_the_samplers_grid(pixel, sampler, strength):
    steps, calls = 10, []
    pixel.generate(image=picture(), strength=strength, steps=steps, sampler=sampler, seed=0,
                   callback=lambda i, x, x0: calls.append(i))  # fmt: skip
    assert len(calls) == min(int(steps * strength), steps)
    from components.registry import SAMPLERS as REGISTRY

    grid = pixel.grid(REGISTRY.build(sampler), steps)
    assert img2img_grid(grid, strength).timesteps == grid.timesteps[steps - len(calls) :]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_first_step_sees_the_image_noised_by_ddpm_eq_4_with_the_given_eps(pixel, sampler):
    eps = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    seen, handle = unet_inputs(pixel)
    try:
        pixel.generate(image=picture(), strength=0.5, steps=8, sampler=sampler, seed=0, latents=eps)
    finally:
        handle.remove()
    grid = pixel.grid(zoo.registry.SAMPLERS.build(sampler), 8)
    a = grid.alphas_cumprod[4]  # the first of the last 4 entries
    x0 = image_input.load_image(picture(), 64, 64)
    torch.testing.assert_close(seen[0], math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, atol=1e-5, rtol=0)
    assert len(seen) == 4


def test_strength_one_ignores_the_image_and_strength_zero_returns_it(pixel, latent):
    for pipe, kwargs in ((pixel, {}), (latent, {"prompt": PROMPT})):
        plain = np.asarray(pipe.generate(steps=3, seed=2, **kwargs)[0])
        full = np.asarray(pipe.generate(image=picture(), strength=1.0, steps=3, seed=2, **kwargs)[0])
        np.testing.assert_array_equal(full, plain)
    np.testing.assert_array_equal(np.asarray(pixel.generate(image=picture(), strength=0.0, seed=0)[0]), picture())
    z = latent.diffusion_input(image_input.load_image(picture(), 64, 64), torch.Generator().manual_seed(4))
    kept = latent.generate(PROMPT, image=picture(), strength=0.0, seed=4)[0]
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(latent.decode(z)[0]))  # D(E(x)), no step


def test_low_strength_stays_near_the_image_and_high_strength_moves_away(latent):
    target = np.asarray(picture(), dtype=float)
    distance = [
        np.abs(np.asarray(latent.generate(PROMPT, image=picture(), strength=s, steps=10, seed=1)[0]) - target).mean()
        for s in (0.1, 0.9)
    ]
    assert distance[0] < distance[1]


def test_latents_are_the_starting_noise(latent):
    shape = (2, *latent.latent_shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    seeded = latent.generate(PROMPT, sampler="ddim", steps=3, seed=0, num_images=2)
    given = latent.generate(PROMPT, sampler="ddim", steps=3, seed=9, num_images=2, latents=x_T.double())
    for a, b in zip(seeded, given, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_pixel_inpainting_keeps_the_known_region_exactly_and_repaints_the_mask(pixel, sampler):
    out = np.asarray(pixel.generate(image=picture(), mask_image=right_half(), steps=4, sampler=sampler, seed=0)[0])
    np.testing.assert_array_equal(out[:, :32], np.asarray(picture())[:, :32])
    assert np.abs(out[:, 32:].astype(float) - np.asarray(picture())[:, 32:]).mean() > 5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_latent_inpainting_keeps_the_images_latents_exactly_outside_the_mask(latent, sampler):
    last = {}
    images = latent.generate(PROMPT, image=picture(), mask_image=right_half(), steps=4, sampler=sampler, seed=3,
                             num_images=2, callback=lambda i, x, x0: last.update(x=x))  # fmt: skip
    z = latent.diffusion_input(image_input.load_image(picture(), 64, 64), torch.Generator().manual_seed(3))
    h = z.shape[-1] // 2
    torch.testing.assert_close(last["x"][:, :, :, :h], z.expand(2, -1, -1, -1)[:, :, :, :h], atol=0, rtol=0)
    assert (last["x"][:, :, :, h:] - z[:, :, :, h:]).abs().mean() > 0.05
    decoded = np.asarray(latent.decode(z)[0], dtype=float)
    inside = np.abs(np.asarray(images[0], dtype=float) - decoded)
    assert inside[:, :16].mean() < inside[:, 48:].mean()  # the known pixels follow D(z), the repainted ones not


def test_inpainting_with_a_strength_starts_from_the_noised_image(pixel):
    calls = []
    pixel.generate(image=picture(), mask_image=right_half(), strength=0.5, steps=8, seed=0,
                   callback=lambda i, x, x0: calls.append(i))  # fmt: skip
    assert len(calls) == 4


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_strength_outside_zero_one_is_refused(pixel, strength):
    with pytest.raises(ValueError, match="strength"):
        pixel.generate(image=picture(), strength=strength, steps=2)


def test_image_and_mask_of_different_sizes_are_refused(pixel):
    with pytest.raises(ValueError, match="image is 64x64 but mask_image is 32x32"):
        pixel.generate(image=picture(), mask_image=right_half(32), steps=2)


def test_a_mask_without_an_image_is_refused(pixel):
    with pytest.raises(ValueError, match="mask_image needs the image"):
        pixel.generate(mask_image=right_half(), steps=2)


def test_a_grey_mask_is_thresholded_at_one_half_as_diffusers_and_said():
    array = np.zeros((64, 64), dtype=np.uint8)
    array[:, 32:] = 127  # just below 0.5: kept
    array[:, 48:] = 128  # 0.502: repainted
    with pytest.warns(UserWarning, match="thresholded at 0.5"):
        mask = image_input.load_mask(Image.fromarray(array), picture(), 64, 64)
    assert mask[0, 0, :, :48].sum() == 0 and bool(mask[0, 0, :, 48:].all())


def test_an_empty_mask_is_refused_and_an_all_white_one_is_said(pixel):
    with pytest.raises(ValueError, match="empty"):
        pixel.generate(image=picture(), mask_image=Image.new("L", (64, 64), 0), steps=2)
    with pytest.warns(UserWarning, match="all white"):
        pixel.generate(image=picture(), mask_image=Image.new("L", (64, 64), 255), steps=2)


@pytest.mark.parametrize(
    ("image", "said"),
    [
        (Image.new("RGBA", (64, 64), (200, 10, 10, 0)), "alpha channel is dropped"),
        (Image.new("L", (64, 64), 100), "grayscale, repeated to RGB"),
        (np.full((64, 64), 100 * 257, dtype=np.uint16), "16-bit"),
        (Image.fromarray(np.full((64, 64), 100 * 257, dtype=np.uint16)), "16-bit"),
        (Image.new("RGB", (128, 96), (100, 100, 100)), "128x96: resized to 64x64"),
    ],
)
def test_odd_images_are_converted_and_it_is_said(image, said):
    with pytest.warns(UserWarning, match=said):
        x = image_input.load_image(image, 64, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    if "alpha" not in said:
        torch.testing.assert_close(x, torch.full_like(x, 100 / 127.5 - 1), atol=1e-6, rtol=0)  # 100 kept as 100


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(path)

    def decode(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", decode)
    with pytest.raises(ValueError, match="5000x4000: over 16777216 pixels, refused before decoding"):
        image_input.load_image(path, 64, 64)


@pytest.mark.parametrize(
    ("latents", "error", "message"),
    [
        (torch.zeros(1, 3, 32, 32), ValueError, r"latents must have shape \(1, 3, 64, 64\)"),
        (torch.zeros(2, 3, 64, 64), ValueError, r"got \(2, 3, 64, 64\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.long), TypeError, "floating-point tensor"),
        (np.zeros((1, 3, 64, 64), dtype=np.float32), TypeError, r"noise\), got ndarray"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN"),
    ],
)
def test_latents_of_the_wrong_shape_or_dtype_are_refused(pixel, latents, error, message):
    with pytest.raises(error, match=message):
        pixel.generate(latents=latents, steps=2)


def test_bad_input_changes_nothing(pixel):
    before = np.asarray(pixel.generate(image=picture(), strength=0.5, steps=3, seed=5)[0])
    for bad in ({"strength": 2.0}, {"mask_image": Image.new("L", (64, 64), 0)}):
        with pytest.raises(ValueError):
            pixel.generate(image=picture(), steps=3, seed=5, **{"strength": 0.5, **bad})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the good call warns of nothing
        after = np.asarray(pixel.generate(image=picture(), strength=0.5, steps=3, seed=5)[0])
    np.testing.assert_array_equal(before, after)


def test_a_built_sampler_with_its_options_edits_too(pixel):
    from components.registry import SAMPLERS as REGISTRY

    calls = []
    noisy = REGISTRY.build("ddim", eta=1.0)
    pixel.generate(image=picture(), strength=0.5, steps=6, sampler=noisy, seed=0, callback=lambda *a: calls.append(1))
    assert len(calls) == 3
