"""Forward noise: x_t from the closed form q(x_t | x_0) (DDPM Eq. 4) in pixel or latent space, the linear and
cosine schedules side by side, abar_t and log-SNR plotted.

Every number comes from a pipeline: `closed_form` noises, `check_t` / `check_seed` validate, the schedule holds
alphas_cumprod and log_snr. The schedule's index i is the paper's t = i + 1 (t = 0 is x_0 itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, fail, handler, number, on_gpu, open_image, slider
from zoo.pipelines.base import MAX_SEED, Pipeline, check_seed, to_pil, to_tensor

SCHEDULE_CHOICES = ("linear", "cosine")
SPACE_CHOICES = ("pixel", "latent")
LATENT_PIPELINE = "ldm-clip-kl"  # its autoencoder encodes and decodes for the latent space
STRIP_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # of T, for the strip of x_t across t
PLOT_POINTS = 200
UPLOAD = "upload"


def noiser_name(schedule: str) -> str:
    """The pixel DDPM whose schedule noises: ddpm-linear or ddpm-cosine."""
    return f"ddpm-{schedule}"


def source_image(example: Any, upload: Any) -> Image.Image:
    """The picked dataset example, or the uploaded image (size checked before decoding) when "upload" is."""
    check_choice("image source", example, [UPLOAD, *display.examples()])
    if example != UPLOAD:
        return Image.fromarray(display.examples()[example]["image_uint8"])
    if upload is None:
        raise fail("pick a dataset example, or upload an image first")
    return open_image(upload)


class ForwardNoise:
    """The tab's handlers over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    @property
    def num_timesteps(self) -> int:
        return self.noiser(SCHEDULE_CHOICES[0]).num_timesteps

    def noiser(self, schedule: Any) -> Pipeline:
        return self.pipes.get(noiser_name(check_choice("schedule", schedule, SCHEDULE_CHOICES)))

    @handler
    @on_gpu
    def forward_noise(
        self, example: str, upload: Any, t: int, schedule: str, space: str, seed: int
    ) -> tuple[Image.Image, Image.Image, pd.DataFrame, pd.DataFrame, str, str]:
        """x_t, a strip of x_t over t for both schedules, the two plots, the formula with its numbers, code."""
        image = source_image(example, upload)
        noiser = self.noiser(schedule)
        t, seed = noiser.check_t(t), check_seed(seed)
        x0, to_images = self.clean_signal(image, check_choice("space", space, SPACE_CHOICES))
        x_t = to_images(noiser.closed_form(x0, t, seed))[0]
        strip = self.strip(x0, seed, to_images)
        abar, log_snr = self.plots(t)
        code = forward_noise_code(schedule, self.pipes.tiny, t, seed, space)
        return x_t, strip, abar, log_snr, self.formula(noiser, t), code

    def clean_signal(self, image: Image.Image, space: str) -> tuple[torch.Tensor, Callable]:
        """x_0 in pixel space, or z_0 = E(x_0) in the latent space (LDM), and the way back to pictures."""
        if space == "pixel":
            return to_tensor(image, self.noiser(SCHEDULE_CHOICES[0]).recipe.image_size), to_pil
        pipe = self.pipes.get(LATENT_PIPELINE)
        return pipe.encode(image), pipe.decode

    def strip(self, x0: torch.Tensor, seed: int, to_images: Callable) -> Image.Image:
        """x_t at a few t, one row per schedule, from the same x_0 and the same eps (the same seed)."""
        T = self.num_timesteps
        ts = [round(f * T) for f in STRIP_FRACTIONS]
        rows = []
        for name in SCHEDULE_CHOICES:
            noiser = self.noiser(name)
            pictures = to_images(torch.cat([noiser.closed_form(x0, t, seed) for t in ts]))
            row = [display.labelled(p, f"{name} t={t}") for p, t in zip(pictures, ts, strict=True)]
            rows.append(display.tiled(row, across=True))
        return display.tiled(rows, across=False)

    def curves(self) -> dict[str, pd.DataFrame]:
        """abar_t and log-SNR(t) against the paper's t = 1..T (thinned to PLOT_POINTS), both schedules."""
        found: dict[str, list[pd.DataFrame]] = {"abar_t": [], "log-SNR": []}
        for name in SCHEDULE_CHOICES:
            schedule = self.noiser(name).schedule
            index = torch.from_numpy(np.unique(np.linspace(0, schedule.num_timesteps - 1, PLOT_POINTS).round()))
            t = (index + 1).long().numpy()  # index i is the paper's t = i + 1
            abar, log_snr = schedule.alphas_cumprod[index.long()], schedule.log_snr(index.long())
            found["abar_t"].append(pd.DataFrame({"t": t, "value": abar.numpy(), "schedule": name}))
            found["log-SNR"].append(pd.DataFrame({"t": t, "value": log_snr.numpy(), "schedule": name}))
        return {key: pd.concat(parts, ignore_index=True) for key, parts in found.items()}

    def plots(self, t: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both curves with the chosen t marked as a vertical line of its own series."""
        return tuple(with_marker(frame, t) for frame in self.curves().values())

    @handler
    def initial_plots(self, t: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The plots as the tab opens (before any click)."""
        return self.plots(self.noiser(SCHEDULE_CHOICES[0]).check_t(t))

    def formula(self, noiser: Pipeline, t: int) -> str:
        """DDPM Eq. 4 with the numbers of the chosen schedule at t."""
        if t == 0:
            return "t = 0: x_0 itself, no noise yet (DDPM Eq. 4 starts at t = 1)"
        abar = float(noiser.schedule.alphas_cumprod[t - 1])  # the paper's t is index t - 1
        name = noiser.recipe.schedule.name
        return (
            f"DDPM Eq. 4, {name} schedule, t = {t}:  \n"
            f"x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps = **{abar**0.5:.4f}** x_0 + "
            f"**{(1 - abar) ** 0.5:.4f}** eps"
            f"  \n(abar_t = {abar:.5f}, SNR = abar_t / (1 - abar_t) = {abar / (1 - abar):.4g})"
        )


def with_marker(frame: pd.DataFrame, t: int) -> pd.DataFrame:
    marker = pd.DataFrame({"t": [t, t], "value": [frame.value.min(), frame.value.max()], "schedule": "chosen t"})
    return pd.concat([frame, marker], ignore_index=True)


def forward_noise_code(schedule: str, tiny: bool, t: int, seed: int, space: str) -> str:
    """The pipeline calls that reproduce x_t: encode (latent space), closed_form (DDPM Eq. 4), decode."""
    build = ", tiny=True" if tiny else ""
    lines = ["import zoo", "from zoo.pipelines.base import to_pil, to_tensor", ""]
    lines.append(f'noiser = zoo.build("{noiser_name(schedule)}"{build})  # its {schedule} schedule noises')
    if space == "latent":
        lines += [f'pipe = zoo.build("{LATENT_PIPELINE}"{build})', "x0 = pipe.encode(image)  # z_0 = E(x_0)"]
    else:
        lines.append("x0 = to_tensor(image, noiser.recipe.image_size)")
    lines.append(f"x_t = noiser.closed_form(x0, {t}, seed={seed})  # DDPM Eq. 4")
    lines.append("picture = pipe.decode(x_t)[0]" if space == "latent" else "picture = to_pil(x_t)[0]")
    return "\n".join(lines) + "\n"


def tab(handlers: ForwardNoise) -> dict[str, gr.components.Component]:
    """The tab's layout; the plots are drawn as it loads."""
    examples = list(display.examples())
    T = handlers.num_timesteps
    with gr.Tab("Forward noise", id="forward-noise"):
        with gr.Row():
            with gr.Column(scale=1):
                example = gr.Dropdown([UPLOAD, *examples], value=examples[0], label="image: a dataset example")
                upload = gr.Image(type="filepath", sources=["upload"], label="or upload one (pick 'upload' above)")
                t = slider(0, T, value=T // 4, step=1, precision=0, label="t (0 = the image, T = noise)")
                schedule = gr.Radio(list(SCHEDULE_CHOICES), value="linear", label="schedule")
                space = gr.Radio(list(SPACE_CHOICES), value="pixel", label="space (latent: encode, noise, decode)")
                seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed of eps")
                button = gr.Button("Add noise", variant="primary", elem_id="add-noise")
            with gr.Column(scale=2):
                x_t = gr.Image(label="x_t", type="pil", elem_id="noise-image", **display.IMAGE)
                formula = gr.Markdown()
                strip = gr.Image(label="x_t across t: linear (top) and cosine (bottom)", format="png", type="pil")
        with gr.Row():
            abar = gr.LinePlot(x="t", y="value", color="schedule", title="abar_t", y_title="abar_t")
            log_snr = gr.LinePlot(x="t", y="value", color="schedule", title="log-SNR(t)", y_title="log SNR")
        code = display.code_box()
    inputs = [example, upload, t, schedule, space, seed]
    outputs = [x_t, strip, abar, log_snr, formula, code]
    button.click(handlers.forward_noise, inputs, outputs, api_name="forward_noise")
    t.release(handlers.forward_noise, inputs, outputs, api_visibility="private")
    upload.upload(lambda: UPLOAD, None, example, api_visibility="private")  # an upload is used, not ignored
    return {"button": button, "x_t": x_t, "strip": strip, "code": code, "plots": (abar, log_snr), "t": t}
