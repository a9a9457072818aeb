"""The comparison views without a server, on tiny pipelines: samplers from one x_T, swapping one part, the
autoencoder inspector and one sampler step opened up (zoo/app/{samplers,swap,autoencoders,steps}.py)."""

from __future__ import annotations

import threading

import gradio as gr
import pytest
import torch
from app_support import pixels, seeded_tiny
from PIL import Image

from zoo.app import autoencoders, cache, display, samplers, steps, swap
from zoo.pipelines.base import to_tensor
from zoo.registry import SAMPLERS
from zoo.train.stages import psnr

PROMPT = "a red circle on a blue background"


def test_each_view_builds_alone_with_its_handlers_injected(pipes):
    for module, handlers in (
        (samplers, samplers.SamplerComparison(pipes)),
        (swap, swap.Swap(pipes)),
        (steps, steps.OneStep(pipes)),
    ):
        with gr.Blocks() as demo:
            parts = module.tab(handlers, num_timesteps=50)
        assert isinstance(parts["button"], gr.Button) and len(demo.fns) == 1
    with gr.Blocks() as demo:
        autoencoders.tab(autoencoders.Inspector(pipes))
    assert "inspect_autoencoders" in {fn.api_name for fn in demo.fns.values()}


# ------------------------------------------------------------------------------------------- samplers
def test_samplers_start_from_one_x_T_and_report_calls_and_movement(pipes):
    shown, curves, table = samplers.SamplerComparison(pipes).compare("ldm-clip-kl", PROMPT, 4, 3.0, 5)
    assert [caption.split(":")[0] for _, caption in shown] == ["DDPM", "DDIM (eta 0)", "DPM-Solver++"]
    assert all("4 U-Net calls" in caption for _, caption in shown)  # one batched [uncond; cond] call per step
    reference = pipes.get("ldm-clip-kl").generate(PROMPT, steps=4, seed=5, guidance_scale=3.0, sampler="ddim")[0]
    assert (pixels(shown[1][0]) == pixels(reference)).all()  # the view changes nothing about sampling
    assert sorted(set(curves.sampler)) == ["DDIM (eta 0)", "DDPM", "DPM-Solver++"]
    assert (curves.groupby("sampler").size() == 3).all() and (curves["x0 movement"] >= 0).all()
    assert "| DDIM (eta 0) | 4 |" in table and "same seed 5" in table


def test_ddim_eta_reaches_the_sampler(pipes):
    view = samplers.SamplerComparison(pipes)
    noisy, _, _ = view.compare("ldm-clip-kl", PROMPT, 4, 3.0, 5, eta=1.0)
    reference = pipes.get("ldm-clip-kl").generate(
        PROMPT, steps=4, seed=5, guidance_scale=3.0, sampler=SAMPLERS.build("ddim", eta=1.0)
    )[0]
    deterministic = pipes.get("ldm-clip-kl").generate(PROMPT, steps=4, seed=5, guidance_scale=3.0, sampler="ddim")[0]
    assert noisy[1][1].startswith("DDIM (eta 1)") and (pixels(noisy[1][0]) == pixels(reference)).all()
    assert (pixels(reference) != pixels(deterministic)).any()  # eta = 1 adds noise at every step
    with pytest.raises(gr.Error, match="eta must be a number"):
        view.compare("ldm-clip-kl", PROMPT, 2, 3.0, 5, eta=-1.0)


def test_x0_movement_is_the_rms_change_between_steps():
    x0s = [torch.zeros(1, 2), torch.full((1, 2), 3.0), torch.full((1, 2), 3.0)]
    assert samplers.movement(x0s) == [3.0, 0.0]


# ----------------------------------------------------------------------------------------------- swap
def test_a_swap_changes_one_part_and_pins_the_seed(pipes):
    view = swap.Swap(pipes)
    assert view.choices() == list(swap.SWAPS)  # the partners are offered by default
    shown, notes = view.swap("CLIP <-> BERT, the same KL autoencoder", PROMPT, 3, 2)
    assert [caption.split(" ")[0] for _, caption in shown] == ["ldm-clip-kl", "ldm-bert-kl"]
    assert "conditioner: clip -> bert" in notes and "the same x_T on both sides" in notes
    again = pipes.get("ldm-bert-kl").generate(PROMPT, steps=2, seed=3, sampler="ddpm", guidance_scale=3.0)[0]
    assert (pixels(shown[1][0]) == pixels(again)).all()
    _, notes = view.swap("latent <-> pixel space", PROMPT, 3, 2)
    assert "space: latent -> pixel" in notes and "x_T is not" in notes
    with pytest.raises(gr.Error, match="unknown swap"):
        view.swap("CLIP <-> T5", PROMPT, 3, 2)


def test_swaps_need_both_pipelines_offered():
    fewer = cache.PipelineCache(("ldm-clip-kl", "ldm-bert-vq", "ddpm-linear"), tiny=True, loader=seeded_tiny)
    assert swap.Swap(fewer).choices() == ["latent <-> pixel space", "CLIP + KL <-> BERT + VQ (both trained)"]


# --------------------------------------------------------------------------------------- autoencoders
def test_the_inspector_shows_each_autoencoders_round_trip_psnr_and_codes(pipes):
    view = autoencoders.Inspector(pipes)
    assert view.autoencoders() == {"kl-f4 (ldm-clip-kl)": "ldm-clip-kl", "vq-f4 (ldm-clip-vq)": "ldm-clip-vq"}
    example = next(iter(display.examples()))
    shown, table = view.inspect(example, None)
    assert len(shown) == 1 + 2 * 2  # the input, then a reconstruction and the latents per autoencoder
    image = Image.fromarray(display.examples()[example]["image_uint8"])
    pipe = pipes.get("ldm-clip-kl")
    reconstruction = pipe.decode(pipe.encode(image))[0]
    assert (pixels(shown[1][0]) == pixels(reconstruction)).all()
    db = psnr(to_tensor(reconstruction, 64), to_tensor(image, 64))
    assert f"{db:.1f} dB" in shown[1][1] and f"| {db:.2f} |" in table
    assert shown[2][0].width == 4 * 2 * 16 + 3 * 4  # four latent channels of 16x16, enlarged twice, side by side
    assert "of 16 codes (perplexity" in table.splitlines()[-1]  # the tiny VQ codebook
    with pytest.raises(gr.Error, match="pick a dataset example, or upload an image first"):
        view.inspect("upload", None)


# ------------------------------------------------------------------------------------------- one step
def test_one_step_shows_the_guided_mix_the_sampler_used(pipes):
    pipe = pipes.get("ldm-clip-kl")
    x0s = {}
    with steps.UNetCalls(pipe, keep=2) as calls:
        pipe.generate(
            PROMPT, steps=4, seed=1, guidance_scale=3.0, sampler="ddim", callback=lambda i, x, x0: x0s.update({i: x0})
        )
    x_both, t, output = calls.kept
    assert calls.calls == 4 and x_both.shape[0] == 2  # [uncond; cond]
    out_uncond, out_cond = output.chunk(2)
    out = out_uncond + 3.0 * (out_cond - out_uncond)  # Ho & Salimans 2022 Eq. 6, on the network's output
    abar = pipe.schedule.alphas_cumprod[t[0]].item()
    x_t = x_both[:1]
    if pipe.recipe.prediction_type == "v":  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
        x0 = abar**0.5 * x_t - (1 - abar) ** 0.5 * out
    else:
        x0 = (x_t - (1 - abar) ** 0.5 * out) / abar**0.5  # DDPM Eq. 15
    torch.testing.assert_close(x0, x0s[2], atol=1e-4, rtol=1e-4)  # what the sampler stepped towards
    shown, info = steps.OneStep(pipes).inspect("ldm-clip-kl", PROMPT, "ddim", 4, 3.0, 1, 3)
    captions = [caption for _, caption in shown]
    assert captions[1:4] == ["eps_uncond", "eps_cond", "guided, w = 3"] and captions[-1] == "predicted x_0"
    assert "U-Net call 3 of 4" in info
    shown, info = steps.OneStep(pipes).inspect("ldm-clip-kl", PROMPT, "ddim", 4, 1.0, 1, 1)
    assert [caption for _, caption in shown][1] == "predicted eps" and "no guidance" in info


def test_unet_calls_from_other_threads_are_not_counted(pipes):
    pipe = pipes.get("ddpm-linear")
    with steps.UNetCalls(pipe) as calls:
        worker = threading.Thread(target=lambda: pipe.generate(steps=3, seed=0))
        worker.start()
        worker.join()
        pipe.generate(steps=2, seed=0)
    assert calls.calls == 2


@pytest.mark.parametrize("step", [0, 5, 2.5])
def test_a_step_outside_the_run_is_refused(pipes, step):
    with pytest.raises(gr.Error, match=r"the step to open must be a whole number in \[1, steps = 4\]"):
        steps.OneStep(pipes).inspect("ldm-clip-kl", PROMPT, "ddim", 4, 3.0, 1, step)
