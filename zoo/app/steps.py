"""One step, opened up: at a chosen sampler step, x_t, what the U-Net predicted (with guidance: eps_uncond,
eps_cond and their guided mix, Ho & Salimans 2022 Eq. 6) and the predicted x_0 the sampler steps towards.

Nothing is recomputed: the pipeline generates as usual, a forward hook on its U-Net keeps the inputs and the
output of the chosen call, and the sampler's callback gives the predicted x_0. With guidance the pipeline calls
the U-Net once on [uncond; cond], so the two halves of that output are eps_uncond and eps_cond.
"""

from __future__ import annotations

import threading
import time

import gradio as gr
import torch
from PIL import Image

from components.samplers.denoiser import guided
from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, fail, handler, on_gpu, slider
from zoo.app.text_to_image import SAMPLER_CHOICES, TextToImage, prompt_inputs
from zoo.pipelines.base import Pipeline


class UNetCalls:
    """Counts the calls of `pipe.unet` made by this thread inside a `with` block, and keeps the inputs and
    output of call number `keep` (0-based): (x_t, t, output). Other threads' calls are not seen."""

    def __init__(self, pipe: Pipeline, keep: int | None = None):
        self.pipe, self.keep = pipe, keep
        self.calls = 0
        self.kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.thread = threading.get_ident()

    def __enter__(self) -> UNetCalls:
        self.handle = self.pipe.unet.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        if self.calls == self.keep:
            self.kept = (args[0].detach().clone(), args[1].detach().clone(), output.detach().clone())
        self.calls += 1


class OneStep:
    """The view's handler over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes
        self.text = TextToImage(pipes)

    @handler
    @on_gpu
    def inspect(
        self, name: str, prompt: str | None, sampler: str, steps: int, guidance_scale: float, seed: int, step: int
    ) -> tuple[list[tuple[Image.Image, str]], str]:
        """Pictures of x_t, the prediction(s) and predicted x_0 at `step` (1 = the first, from x_T), and notes."""
        pipe = self.pipes.get(check_choice("pipeline", name, self.text.names()))
        prompt, notes = clean_prompt(prompt)
        if not isinstance(step, int) or not isinstance(steps, int) or not 1 <= step <= max(steps, 1):
            raise fail(f"the step to open must be a whole number in [1, steps = {steps}], got {step!r}")
        x0s: dict[int, torch.Tensor] = {}
        keep_x0 = lambda i, x_t, x0: x0s.setdefault(i, x0.detach().clone())  # noqa: E731
        kwargs = {"steps": steps, "sampler": sampler, "seed": seed}
        if pipe.recipe.conditioner is not None:
            kwargs.update(prompt=prompt, guidance_scale=guidance_scale)
        start = time.perf_counter()
        with UNetCalls(pipe, keep=step - 1) as calls:
            pipe.generate(**kwargs, callback=display.progress_callback(steps, None, keep_x0))
        if calls.kept is None:
            raise fail(f"the sampler made {calls.calls} U-Net calls; step {step} was not one of them")
        shown, about = self.pictures(pipe, calls.kept, x0s.get(step - 1), guidance_scale)
        notes = [f"step {step}/{steps} of {sampler}, U-Net call {step} of {calls.calls}", *about, *notes]
        notes.append(f"{time.perf_counter() - start:.2f} s for the whole run (seed {seed})")
        return shown, display.notes_markdown(pipe, notes)

    def pictures(
        self, pipe: Pipeline, kept: tuple, x0: torch.Tensor | None, w: float
    ) -> tuple[list[tuple[Image.Image, str]], list[str]]:
        """The U-Net's output(s) at the kept call, as predicted eps: the schedule's split_prediction turns any
        parameterisation (eps, x0, v) into eps; guidance, linear in the output, is linear in eps too."""
        x, t, output = kept
        to_images = display.to_images(pipe)
        kind = pipe.recipe.prediction_type
        eps_of = lambda out, x_t: pipe.schedule.split_prediction(out, x_t, t[: len(x_t)], kind)[0]  # noqa: E731
        guiding = x.shape[0] == 2  # one batched call on [uncond; cond]
        shown = [(to_images(x[:1])[0], f"x_t at t = {int(t[0]) + 1} (decoded)")]
        about = [f"the U-Net's input timestep index {int(t[0])} (the paper's t = {int(t[0]) + 1})"]
        about.append(f"the network predicts {kind}; shown as eps (the schedule's split_prediction)")
        if guiding:
            x_t = x[:1]
            eps_uncond, eps_cond = (eps_of(half, x_t) for half in output.chunk(2))
            mix = guided(eps_cond, eps_uncond, w)
            for part, caption in ((eps_uncond, "eps_uncond"), (eps_cond, "eps_cond"), (mix, f"guided, w = {w:g}")):
                shown.append((display.channels_image(part[0]), caption))
            gap = float((eps_cond - eps_uncond).pow(2).mean().sqrt())
            about.append(
                f"guided = uncond + w (cond - uncond), Ho & Salimans 2022 Eq. 6; RMS(cond - uncond) = {gap:.4f}"
            )
        else:
            shown.append((display.channels_image(eps_of(output, x)[0]), "predicted eps"))
            about.append("no guidance at this setting (w = 1 or an unconditional model): one prediction")
        if x0 is not None:
            shown.append((to_images(x0[:1])[0], "predicted x_0"))
        return shown, about


def tab(handlers: OneStep, *, num_timesteps: int = 1000) -> dict[str, gr.components.Component]:
    with gr.Tab("One step", id="one-step"):
        with gr.Row():
            with gr.Column(scale=1):
                pipeline, prompt, steps, guidance, seed = prompt_inputs(handlers.text, num_timesteps)
                sampler = gr.Radio(list(SAMPLER_CHOICES), value="ddim", label="sampler")
                step = slider(1, num_timesteps, value=5, step=1, precision=0, label="the step to open (1 = from x_T)")
                button = gr.Button("Open the step", variant="primary", elem_id="open-step")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="x_t | predictions | predicted x_0", columns=3, elem_id="step-images", **display.GALLERY
                )
                info = gr.Markdown()
    button.click(
        handlers.inspect,
        [pipeline, prompt, sampler, steps, guidance, seed, step],
        [gallery, info],
        api_name="one_step",
    )
    return {"button": button, "gallery": gallery, "info": info}
