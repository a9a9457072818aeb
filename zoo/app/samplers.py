"""Samplers from one x_T: DDPM (Alg. 2), DDIM (Eq. 12) and DPM-Solver++(2M) side by side from the same seed, so
the same starting noise, with the U-Net calls each made (NFE), the seconds each took, and how far the predicted
x_0 moved at each step (RMS of its change: large early, small once the sampler has settled)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, handler, on_gpu, slider
from zoo.app.steps import UNetCalls
from zoo.app.text_to_image import SAMPLER_CHOICES, TextToImage, prompt_inputs
from zoo.pipelines.base import Pipeline
from zoo.registry import SAMPLERS


def movement(x0s: list[torch.Tensor]) -> list[float]:
    """RMS change of the predicted x_0 from each step to the next (one number per step after the first)."""
    return [float((b - a).pow(2).mean().sqrt()) for a, b in zip(x0s, x0s[1:], strict=False)]


class SamplerComparison:
    """The view's handler over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes
        self.text = TextToImage(pipes)

    def run(self, pipe: Pipeline, sampler: Any, kwargs: dict[str, Any]) -> tuple[Image.Image, int, float, list]:
        """One sampler: (image, U-Net calls, seconds, predicted x_0 at every step)."""
        x0s: list[torch.Tensor] = []
        keep = lambda i, x_t, x0: x0s.append(x0[:1].detach().float().cpu())  # noqa: E731
        start = time.perf_counter()
        with UNetCalls(pipe) as calls:
            image = pipe.generate(**kwargs, sampler=sampler, callback=display.progress_callback(0, None, keep))[0]
        return image, calls.calls, time.perf_counter() - start, x0s

    @handler
    @on_gpu
    def compare(
        self, name: str, prompt: str | None, steps: int, guidance_scale: float, seed: int, eta: float = 0.0
    ) -> tuple[list[tuple[Image.Image, str]], pd.DataFrame, str]:
        """Each sampler's image (captioned with NFE and seconds), the x_0-movement curves, a table in Markdown.
        DDIM runs with `eta` (DDIM Eq. 16: 0 deterministic, 1 the DDPM posterior's noise)."""
        pipe = self.pipes.get(check_choice("pipeline", name, self.text.names()))
        prompt, notes = clean_prompt(prompt)
        kwargs: dict[str, Any] = {"steps": steps, "seed": seed}
        if pipe.recipe.conditioner is not None:
            kwargs.update(prompt=prompt, guidance_scale=guidance_scale)
        shown, curves, rows = [], [], ["| sampler | U-Net calls (NFE) | seconds |", "|---|---|---|"]
        for label, registered in SAMPLER_CHOICES:
            ddim = registered == "ddim"
            sampler = SAMPLERS.build(registered, eta=eta) if ddim else registered  # the library checks eta
            label = f"DDIM (eta {eta:g})" if ddim else label
            image, calls, seconds, x0s = self.run(pipe, sampler, kwargs)
            shown.append((image, f"{label}: {calls} U-Net calls, {seconds:.2f} s"))
            moved = movement(x0s)
            curves.append(pd.DataFrame({"step": range(2, len(moved) + 2), "x0 movement": moved, "sampler": label}))
            rows.append(f"| {label} | {calls} | {seconds:.2f} |")
        notes.insert(0, f"one x_T for all three: the same seed {seed}, {steps} steps")
        text = display.notes_markdown(pipe, notes) + "\n\n" + "\n".join(rows)
        return shown, pd.concat(curves, ignore_index=True), text


def tab(handlers: SamplerComparison, *, num_timesteps: int = 1000) -> dict[str, gr.components.Component]:
    with gr.Tab("Samplers", id="samplers"):
        with gr.Row():
            with gr.Column(scale=1):
                inputs = list(prompt_inputs(handlers.text, num_timesteps, seed_label="seed (the one x_T)"))
                inputs.append(slider(0, 1, value=0.0, step=0.1, label="DDIM eta (0 deterministic, 1 DDPM-like noise)"))
                button = gr.Button("Compare the samplers", variant="primary", elem_id="compare-samplers")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="DDPM | DDIM | DPM-Solver++, one x_T", columns=3, elem_id="sampler-images", **display.GALLERY
                )
                plot = gr.LinePlot(x="step", y="x0 movement", color="sampler", title="how far predicted x_0 moves")
                info = gr.Markdown()
    button.click(handlers.compare, inputs, [gallery, plot, info], api_name="compare_samplers")
    return {"button": button, "gallery": gallery, "plot": plot, "info": info}
