"""Text to image: prompt -> images, with every step of the denoising trajectory (x_t | predicted x_0)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
import torch
from PIL import Image

import zoo
from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, handler, number, on_gpu, slider
from zoo.pipelines.base import MAX_SEED, Pipeline

SAMPLER_CHOICES = (("DDPM", "ddpm"), ("DDIM", "ddim"), ("DPM-Solver++", "dpmpp"))
TEXT_CONDITIONERS = ("clip", "bert")
MAX_UI_IMAGES = 4
MAX_GUIDANCE = 30.0
MAX_FRAMES = 50  # trajectory frames kept (every step up to 50 steps, evenly spaced beyond)


def accepts(name: str) -> bool:
    """A prompt or nothing: text-conditioned latent pipelines and unconditional ones (no map, no class label, no
    image: the inpainting and super-resolution models are the image-to-image tab's)."""
    recipe = zoo.recipe(name)
    text = recipe.conditioner is None or recipe.conditioner.name in TEXT_CONDITIONERS
    return recipe.spatial is None and text and recipe.concat_image is None


def fresh_seed() -> int:
    return random.randrange(2**31)  # short enough to read and retype


class Trajectory:
    """Keeps x_t and predicted x_0 (the first image of the batch) at every step, or MAX_FRAMES evenly spaced."""

    def __init__(self, steps: int, frames: int = MAX_FRAMES):
        count = min(frames, steps)
        self.steps = steps
        self.keep = {round(k * (steps - 1) / max(count - 1, 1)) for k in range(count)}
        self.frames: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, step: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if step in self.keep:
            self.frames.append((step, x_t[:1].detach().clone(), x0[:1].detach().clone()))

    def images(self, to_images: Callable[[torch.Tensor], list[Image.Image]]) -> list[tuple[Image.Image, str]]:
        """Each kept step as one picture, x_t (decoded) left and predicted x_0 right, with a caption."""
        shown = []
        for step, x_t, x0 in self.frames:
            pair = [display.labelled(to_images(x_t)[0], "x_t"), display.labelled(to_images(x0)[0], "predicted x_0")]
            shown.append((display.tiled(pair, across=True), f"step {step + 1}/{self.steps}"))
        return shown


class TextToImage:
    """The tab's handlers over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def names(self) -> list[str]:
        return [name for name in self.pipes.names() if accepts(name)]

    def choices(self) -> list[tuple[str, str]]:
        """(label, name): untrained pipelines are marked."""
        return [(n if self.pipes.trained(n) else f"{n} (random weights)", n) for n in self.names()]

    @handler
    def defaults(self, name: str) -> tuple[Any, ...]:
        """The recipe's sampler, steps and guidance; the prompt boxes and guidance greyed out when unused."""
        recipe = zoo.recipe(check_choice("pipeline", name, self.names()))
        text = recipe.conditioner is not None
        why = "" if text else "unconditional pipeline: no prompt"
        return (
            recipe.sampler,
            recipe.steps,
            gr.Slider(value=recipe.guidance_scale, interactive=text),
            gr.Textbox(interactive=text, placeholder=why),
            gr.Textbox(interactive=text, placeholder=why),
        )

    @handler
    @on_gpu
    def generate(
        self,
        name: str,
        prompt: str | None,
        negative_prompt: str | None,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        randomize_seed: bool,
        num_images: int,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio injects it)
    ) -> tuple[list[Image.Image], list[tuple[Image.Image, str]], str, str, int]:
        """Images, every trajectory step (x_t | predicted x_0), notes in Markdown, code, the seed used."""
        pipe = self.pipes.get(check_choice("pipeline", name, self.names()))
        kwargs, notes = self.generate_kwargs(pipe, prompt, negative_prompt, sampler, steps, guidance_scale)
        kwargs["num_images"] = num_images
        kwargs["seed"] = fresh_seed() if randomize_seed else seed
        trajectory = Trajectory(steps) if isinstance(steps, int) and steps >= 1 else None
        start = time.perf_counter()
        images = pipe.generate(**kwargs, callback=display.progress_callback(steps, progress, trajectory))
        elapsed = time.perf_counter() - start
        frames = trajectory.images(display.to_images(pipe)) if trajectory else []
        notes.insert(0, f"{len(images)} image(s) in {elapsed:.2f} s on {pipe.device} (seed {kwargs['seed']})")
        code = display.call_code(name, self.pipes.tiny, "generate", kwargs.pop("prompt"), **kwargs)
        return images, frames, display.notes_markdown(pipe, notes), code, kwargs["seed"]

    def generate_kwargs(
        self, pipe: Pipeline, prompt: Any, negative_prompt: Any, sampler: Any, steps: Any, w: Any
    ) -> tuple[dict[str, Any], list[str]]:
        """pipe.generate's keyword arguments (the pipeline checks their values), and notices for the user."""
        prompt, notes = clean_prompt(prompt)
        kwargs: dict[str, Any] = {"prompt": prompt, "steps": steps, "sampler": sampler}
        if pipe.recipe.conditioner is None:
            return kwargs, notes + (["this pipeline is unconditional: the prompt is ignored"] if prompt else [])
        negative_prompt, cut = clean_prompt(negative_prompt, "negative prompt")
        kwargs.update(negative_prompt=negative_prompt, guidance_scale=w)
        return kwargs, notes + cut + prompt_notes(pipe, prompt)


def prompt_notes(pipe: Pipeline, prompt: str) -> list[str]:
    """Words the text conditioner does not know, and whether its tokenizer cuts the prompt."""
    notes = []
    if unknown := pipe.unknown_words(prompt):
        notes.append(f"unknown words (the model has never seen them): {', '.join(map(repr, unknown))}")
    if prompt and pipe.conditioner.was_truncated([prompt])[0]:
        notes.append(f"the prompt is longer than {pipe.conditioner.max_length} tokens: the rest is cut")
    if not prompt:
        notes.append("empty prompt: an unconditional sample")
    return notes


def tab(handlers: TextToImage, *, num_timesteps: int = 1000) -> dict[str, gr.components.Component]:
    """Prompt -> images, with the denoising trajectory (x_t and predicted x_0) to scrub through."""
    choices = handlers.choices()
    first = choices[0][1]
    recipe = zoo.recipe(first)
    sampler_name, steps, guidance = recipe.sampler, recipe.steps, recipe.guidance_scale
    with gr.Tab("Text to image", id="text-to-image"):
        with gr.Row():
            with gr.Column(scale=1):
                pipeline = gr.Dropdown(choices, value=first, label="pipeline")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt", max_lines=2)
                negative = gr.Textbox("", label="negative prompt", max_lines=1)
                sampler = gr.Radio(list(SAMPLER_CHOICES), value=sampler_name, label="sampler")
                steps_box = slider(1, num_timesteps, value=steps, step=1, precision=0, label="steps (1 to T)")
                guidance_box = slider(0, MAX_GUIDANCE, value=guidance, step=0.5, label="guidance scale w")
                with gr.Row():
                    seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    randomize = gr.Checkbox(False, label="randomise seed")
                num_images = slider(1, MAX_UI_IMAGES, value=1, step=1, precision=0, label="number of images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="images", columns=2, elem_id="images", **display.GALLERY)
                info = gr.Markdown(elem_id="generate-info")
                trajectory = gr.Gallery(
                    label="trajectory: x_t | predicted x_0, every step", columns=2, **display.GALLERY
                )
                code = display.code_box()
    inputs = [pipeline, prompt, negative, sampler, steps_box, guidance_box, seed, randomize, num_images]
    button.click(handlers.generate, inputs, [gallery, trajectory, info, code, seed], api_name="generate")
    unused = [sampler, steps_box, guidance_box, prompt, negative]
    pipeline.change(handlers.defaults, pipeline, unused, api_visibility="private")
    return {"button": button, "gallery": gallery, "trajectory": trajectory, "info": info, "code": code}


def prompt_inputs(handlers: TextToImage, num_timesteps: int, *, steps: int = 10, seed_label: str = "seed") -> tuple:
    """What a prompt-driven view starts with: pipeline, prompt, steps, guidance scale and seed inputs."""
    choices = handlers.choices()
    return (
        gr.Dropdown(choices, value=choices[0][1], label="pipeline"),
        gr.Textbox("a red circle on a blue background", label="prompt", max_lines=2),
        slider(1, num_timesteps, value=steps, step=1, precision=0, label="steps"),
        slider(0, MAX_GUIDANCE, value=3.0, step=0.5, label="guidance scale w"),
        number(0, precision=0, minimum=0, maximum=MAX_SEED, label=seed_label),
    )
