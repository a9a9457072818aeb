"""Swap one part under a pinned seed: two pipelines that differ in one part (the conditioner, the autoencoder,
or pixel against latent space), the same prompt, seed, sampler and steps, side by side with the time each took.
Pipelines of the same latent shape start from the same x_T (the seed fixes it)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
from PIL import Image

import zoo
from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, handler, number, on_gpu, slider
from zoo.pipelines.base import MAX_SEED
from zoo.recipes import Recipe

SWAPS = {
    "CLIP <-> BERT, the same KL autoencoder": ("ldm-clip-kl", "ldm-bert-kl"),
    "KL <-> VQ, the same CLIP conditioner": ("ldm-clip-kl", "ldm-clip-vq"),
    "latent <-> pixel space": ("ldm-clip-kl", "ddpm-linear"),
    "CLIP + KL <-> BERT + VQ (both trained)": ("ldm-clip-kl", "ldm-bert-vq"),
}
SAMPLER = "ddpm"  # one sampler for both sides, whatever each default: every shipped model is measured at DDPM 25


def differences(a: Recipe, b: Recipe) -> list[str]:
    """What differs between two recipes, part by part ("conditioner: clip -> bert"), and their kind."""
    found = [f"space: {a.kind} -> {b.kind}"] if a.kind != b.kind else []
    for role in dict.fromkeys([*a.parts, *b.parts]):
        left, right = a.parts.get(role), b.parts.get(role)
        if left != right:
            found.append(f"{role}: {left.name if left else 'none'} -> {right.name if right else 'none'}")
    return found


class Swap:
    """The view's handler over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def choices(self) -> list[str]:
        """The swaps whose two pipelines this server offers."""
        return [label for label, pair in SWAPS.items() if all(name in self.pipes.names() for name in pair)]

    @handler
    @on_gpu
    def swap(
        self, choice: str, prompt: str | None, seed: int, steps: int
    ) -> tuple[list[tuple[Image.Image, str]], str]:
        """Both sides' images, captioned with their pipeline, weights and seconds; what differs, in Markdown."""
        pair = SWAPS[check_choice("swap", choice, self.choices())]
        prompt, notes = clean_prompt(prompt)
        shown = []
        for name in pair:
            pipe = self.pipes.get(name)
            kwargs: dict[str, Any] = {"steps": steps, "seed": seed, "sampler": SAMPLER}
            if pipe.recipe.conditioner is not None:
                kwargs.update(prompt=prompt, guidance_scale=pipe.recipe.guidance_scale)
            start = time.perf_counter()
            image = pipe.generate(**kwargs)[0]
            weights = "trained" if pipe.pretrained else "random weights"
            shown.append((image, f"{name} ({weights}): {time.perf_counter() - start:.2f} s"))
        a, b = (zoo.recipe(name) for name in pair)
        same_start = a.kind == b.kind and a.autoencoder == b.autoencoder
        notes.insert(0, "what changes: " + "; ".join(differences(a, b)))
        notes.append(f"seed {seed}, {SAMPLER}, {steps} steps on both sides")
        notes.append(
            "the same x_T on both sides" if same_start else "different spaces: the seed is the same, x_T is not"
        )
        return shown, "\n".join(f"- {note}" for note in notes)


def tab(handlers: Swap, *, num_timesteps: int = 1000) -> dict[str, gr.components.Component]:
    choices = handlers.choices()
    with gr.Tab("Swap a part", id="swap"):
        with gr.Row():
            with gr.Column(scale=1):
                choice = gr.Radio(choices, value=choices[0] if choices else None, label="the part to swap")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt", max_lines=2)
                seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed (pinned for both)")
                steps = slider(1, num_timesteps, value=25, step=1, precision=0, label="steps")
                button = gr.Button("Swap", variant="primary", elem_id="swap")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="before | after", columns=2, elem_id="swap-images", **display.GALLERY)
                info = gr.Markdown()
    button.click(handlers.swap, [choice, prompt, seed, steps], [gallery, info], api_name="swap")
    return {"button": button, "gallery": gallery, "info": info}
