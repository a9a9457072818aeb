"""RePaint (Lugmayr et al. 2022) on tiny pipelines: its jump schedule against diffusers' RePaintScheduler, r = 1
equal to the blended step, the known region kept, the step back up by q (statistically), and every bad argument."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

import zoo
from components.registry import SAMPLERS
from tests.test_editing import PROMPT, picture, right_half, unet_inputs
from zoo.pipelines import image_input
from zoo.pipelines.repaint import RePaint


def diffusers_path(steps: int, jump: int, resample: int) -> list[int]:
    """diffusers' RePaintScheduler timesteps as grid positions, walked as its RePaintPipeline walks them: a
    timestep below the last is a step down (position + 1), any other a step back up (position - 1)."""
    from diffusers import RePaintScheduler

    scheduler = RePaintScheduler(num_train_timesteps=steps)
    scheduler.set_timesteps(steps, jump_length=jump, jump_n_sample=resample)
    position, path, last = 0, [0], steps
    for t in scheduler.timesteps.tolist():
        position += 1 if t < last else -1
        path.append(position)
        last = t
    return path


@pytest.mark.parametrize(("steps", "jump", "resample"), [(10, 1, 1), (10, 1, 3), (20, 5, 2), (25, 10, 10), (7, 3, 4)])
def test_the_jump_schedule_is_the_authors_as_diffusers_writes_it(steps, jump, resample):
    path = RePaint(jump, resample).path(steps)
    assert path == diffusers_path(steps, jump, resample)
    assert path[-1] == steps and all(abs(b - a) == 1 for a, b in zip(path, path[1:], strict=False))


@pytest.mark.parametrize("name", ["pixel", "latent"])
def test_resampling_once_is_the_blended_step_exactly(name, request):
    pipe = request.getfixturevalue(name)
    edit = {
        "image": picture(),
        "mask_image": right_half(),
        "steps": 4,
        "seed": 4,
        "num_images": 2 if name == "latent" else 1,
    }
    blended = pipe.generate(PROMPT, sampler="ddpm", inpaint="blend", **edit)
    once = pipe.generate(PROMPT, inpaint="repaint", repaint_jump=2, repaint_resample=1, **edit)
    twice = pipe.generate(PROMPT, inpaint="repaint", repaint_jump=2, repaint_resample=2, **edit)
    for a, b in zip(blended, once, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(twice[0], dtype=float) - np.asarray(blended[0], dtype=float)).mean() > 1


def test_pixel_repaint_keeps_the_known_region_exactly(pixel):
    out = pixel.generate(image=picture(), mask_image=right_half(), inpaint="repaint", repaint_jump=2,
                         repaint_resample=3, steps=6, seed=0)[0]  # fmt: skip
    kept, given = np.asarray(out, dtype=float)[:, :32], np.asarray(picture(), dtype=float)[:, :32]
    np.testing.assert_array_equal(kept, given)  # PSNR outside the mask: infinite (>= 35 dB)
    assert np.abs(np.asarray(out, dtype=float)[:, 32:] - np.asarray(picture(), dtype=float)[:, 32:]).mean() > 5


def test_latent_repaint_keeps_the_images_latents_exactly_outside_the_mask(latent):
    last = {}
    latent.generate(PROMPT, image=picture(), mask_image=right_half(), inpaint="repaint", repaint_jump=2,
                    repaint_resample=2, steps=4, seed=3, callback=lambda i, x, x0: last.update(x=x))  # fmt: skip
    z = latent.diffusion_input(image_input.load_image(picture(), 64, 64), torch.Generator().manual_seed(3))
    h = z.shape[-1] // 2
    torch.testing.assert_close(last["x"][..., :h], z[..., :h], atol=0, rtol=0)


def test_each_step_back_up_is_the_forward_process_so_the_known_region_is_a_sample_of_q(pixel):
    """After the walk lands on x_0 it goes j = 2 positions back up by two respaced forward steps; their product
    is q(x_t | x_0) (DDPM Eq. 4) at the grid's t = tau_{S-2}: standardised, the known pixels are N(0, 1)."""
    steps, repaint = 6, RePaint(jump=2, resample=2)
    path = repaint.path(steps)
    up = next(i for i, (a, b) in enumerate(zip(path, path[1:], strict=False)) if a == steps and b < a)
    call = sum(b > a for a, b in zip(path[: up + 3], path[1 : up + 3], strict=False))  # down steps before it
    seen, handle = unet_inputs(pixel)
    try:
        pixel.generate(image=picture(), mask_image=right_half(), inpaint="repaint", repaint_jump=2,
                       repaint_resample=2, steps=steps, seed=1)  # fmt: skip
    finally:
        handle.remove()
    assert len(seen) == repaint.denoising_steps(steps)
    grid = pixel.grid(SAMPLERS.build("ddpm"), steps)
    alpha_bar = grid.alphas_cumprod[steps - 2]
    x0 = image_input.load_image(picture(), 64, 64)
    z = (seen[call] - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
    known = z[..., :32].flatten()  # 6144 values
    assert abs(float(known.mean())) < 0.05 and abs(float(known.std()) - 1) < 0.05


def test_repaint_costs_the_down_steps_of_its_path(pixel):
    calls = []
    pixel.generate(image=picture(), mask_image=right_half(), inpaint="repaint", repaint_jump=2, repaint_resample=3,
                   steps=6, seed=0, callback=lambda i, x, x0: calls.append(i))  # fmt: skip
    assert len(calls) == RePaint(2, 3).denoising_steps(6) == 6 + 2 * 2 * 2  # S + (r - 1) j P, P = 2 jump points


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inpaint": "poisson"}, "unknown inpaint 'poisson'; allowed: blend, repaint"),
        ({"inpaint": "repaint", "repaint_jump": 0}, "repaint_jump must be"),
        ({"inpaint": "repaint", "repaint_resample": 0}, "repaint_resample must be"),
        ({"inpaint": "repaint", "repaint_resample": 101}, "repaint_resample must be an integer in"),
        ({"inpaint": "repaint", "repaint_jump": 1.5}, "repaint_jump must be an integer"),
        ({"inpaint": "repaint", "repaint_jump": 4, "repaint_resample": 2}, "repaint_jump=4 must be below the 4 steps"),
        ({"inpaint": "repaint", "sampler": "ddim"}, "use sampler='ddpm'"),
        ({"inpaint": "blend", "repaint_jump": 2}, "apply only with inpaint='repaint'"),
        ({"repaint_resample": 2}, "apply only with inpaint='repaint'"),
    ],
)
def test_bad_repaint_arguments_are_refused_clearly(pixel, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pixel.generate(image=picture(), mask_image=right_half(), steps=4, seed=0, **kwargs)


def test_repaint_without_a_mask_or_on_the_trained_inpainting_model_is_refused(pixel):
    with pytest.raises(ValueError, match="needs a mask"):
        pixel.generate(image=picture(), inpaint="repaint", steps=4)
    trained = zoo.build("ldm-inpaint-kl", tiny=True, device="cpu")
    with pytest.raises(ValueError, match="trained to inpaint"):
        trained.generate(PROMPT, image=picture(), mask_image=right_half(), inpaint="repaint", steps=2)


def test_a_refused_repaint_changes_nothing(pixel):
    edit = {"image": picture(), "mask_image": right_half(), "steps": 4, "seed": 2, "inpaint": "repaint"}
    before = np.asarray(pixel.generate(repaint_jump=1, repaint_resample=2, **edit)[0])
    with pytest.raises(ValueError):
        pixel.generate(repaint_jump=9, repaint_resample=2, **edit)
    after = np.asarray(pixel.generate(repaint_jump=1, repaint_resample=2, **edit)[0])
    np.testing.assert_array_equal(before, after)


def test_the_inpainting_bench_times_every_method_and_the_trained_models_against_plain_generation(capsys):
    from zoo import bench_inpaint

    medians = bench_inpaint.main(["--tiny", "--trained", "--steps", "2", "--repeats", "1", "--repaint", "1,2"])
    assert list(medians) == [
        "plain",
        "blended step",
        "RePaint j=1 r=2",
        "ldm-inpaint-kl (trained inpainting)",
        "ldm-sr-kl (super-resolution)",
    ]
    assert all(seconds > 0 for seconds in medians.values())
    out = capsys.readouterr().out
    # every row at ldm-clip-kl's default sampler
    assert "dpmpp 2 steps" in out and "1.5x the steps" in out and out.count("target <= 1.5x") == 2
    assert bench_inpaint.parse_pairs("") == [] and bench_inpaint.parse_pairs("5,3 10,10") == [(5, 3), (10, 10)]
    with pytest.raises(argparse.ArgumentTypeError, match="expected pairs 'j,r j,r'"):
        bench_inpaint.parse_pairs("5")
