"""The conditioning switch (LDM Fig. 3): the same seed (so the same x_T), one click changes the path the
condition takes into the U-Net: text tokens through cross-attention (CLIP, BERT), a semantic map concatenated
to z_t, or nothing (the empty prompt, the unconditional model that CFG dropout trains); and, where the zoo has
the model, images by concatenation (an image and its mask for inpainting, a low-res image for super-resolution;
the picked dataset example is the image, zoo/app/image_to_image.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from zoo.app import display, image_to_image
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, fail, handler, number, on_gpu, open_image, slider
from zoo.app.text_to_image import prompt_notes
from zoo.data import shapes
from zoo.pipelines.base import MAX_SEED, Pipeline

DRAWN = "drawn on the sketchpad"
SWITCH: dict[str, dict[str, str]] = {
    "text (CLIP)": {"pipeline": "ldm-clip-kl", "path": "text -> CLIP tokens -> cross-attention in the U-Net"},
    "text (BERT)": {"pipeline": "ldm-bert-vq", "path": "text -> BERT tokens -> cross-attention in the U-Net"},
    "semantic map": {"pipeline": "ldm-seg-kl", "path": "semantic map -> one-hot, downsampled -> concatenated to z_t"},
    "none": {
        "pipeline": "ldm-clip-kl",
        "path": "no condition: the empty prompt's CLIP tokens, the unconditional model that CFG dropout trains",
    },
    **image_to_image.switch_paths(),
}


def uses_text(condition: Any) -> bool:
    """The paths that take the prompt: the text ones, and inpainting (hybrid: the prompt by cross-attention)."""
    return str(condition).startswith("text") or condition == "image + mask (inpainting)"


def snap_map(drawing: Any, size: int) -> np.ndarray:
    """A drawn map (RGB/RGBA, anti-aliased strokes; its size checked before decoding) -> (size, size) labels
    of the nearest SEG_PALETTE colour. Sampled to size x size first (nearest neighbour), then snapped: the same
    labels as snapping every pixel, without a full-resolution distance array."""
    if isinstance(drawing, dict):  # the sketchpad's value: {"background", "layers", "composite"}
        drawing = drawing.get("composite")
    if drawing is None:
        raise fail("draw a semantic map on the sketchpad first, or pick a dataset example map")
    image = open_image(drawing).resize((size, size), Image.Resampling.NEAREST)
    return shapes.rgb_to_map(image).numpy().astype(np.int64)


def map_setup(map_source: str) -> list[str]:
    """Source lines that rebuild the semantic map the app used."""
    if map_source == DRAWN:
        return ["semantic_map = ...  # the drawn map: an integer (64, 64) array of labels 0..3"]
    index = list(display.examples()).index(map_source)
    return [
        "from zoo.data import shapes",
        f'semantic_map = shapes.sample_item({index}, seed={display.EXAMPLE_SEED}, split="train")["semantic_map"]',
    ]


def map_image(semantic_map: np.ndarray) -> Image.Image:
    """Labels as SEG_PALETTE colours, at the map's own size (the page enlarges it without blending)."""
    return Image.fromarray(shapes.map_to_rgb(semantic_map))


class Conditioning:
    """The tab's handlers over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def semantic_map(self, map_source: Any, drawing: Any, size: int) -> np.ndarray:
        check_choice("map source", map_source, [DRAWN, *display.examples()])
        if map_source == DRAWN:
            return snap_map(drawing, size)
        return display.examples()[map_source]["semantic_map"]

    def run(self, condition: Any, prompt: Any, map_source: Any, drawing: Any, seed: Any, steps: Any, progress=None):
        """One path: (image, the pipeline, its keyword arguments, notes)."""
        check_choice("conditioning", condition, list(SWITCH))
        pipe = self.pipes.get(SWITCH[condition]["pipeline"])
        kwargs = self.kwargs(pipe, condition, prompt, map_source, drawing, seed, steps)
        image = pipe.generate(**kwargs, callback=display.progress_callback(steps, progress))[0]
        notes = [f"the condition's path into the U-Net: {SWITCH[condition]['path']}"]
        notes += prompt_notes(pipe, kwargs["prompt"]) if uses_text(condition) else []
        return image, pipe, kwargs, notes

    @handler
    @on_gpu
    def switch(
        self,
        condition: str,
        prompt: str | None,
        map_source: str,
        drawing: Any,
        seed: int,
        steps: int,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio injects it)
    ) -> tuple[Image.Image, Image.Image | None, str, str]:
        """One conditioning path from the same seed: the image, the map used, the path in words, the code."""
        image, pipe, kwargs, notes = self.run(condition, prompt, map_source, drawing, seed, steps, progress)
        shown_map, setup = None, ()
        if "semantic_map" in kwargs:
            shown_map, setup = map_image(kwargs["semantic_map"]), map_setup(map_source)
            kwargs = {**kwargs, "semantic_map": display.Raw("semantic_map")}
        if "image" in kwargs:  # an image path: the image (and mask) it was given, and how to rebuild them
            shown_map = image_to_image.overlay(kwargs["image"], kwargs.get("mask_image"))
            kwargs, setup = image_to_image.switch_code(kwargs, map_source)
        name = SWITCH[condition]["pipeline"]
        code = display.call_code(name, self.pipes.tiny, "generate", kwargs.pop("prompt"), setup=setup, **kwargs)
        return image, shown_map, display.notes_markdown(pipe, notes), code

    def kwargs(
        self, pipe: Pipeline, condition: str, prompt: Any, map_source: Any, drawing: Any, seed: Any, steps: Any
    ) -> dict[str, Any]:
        """pipe.generate's arguments for one path: the recipe's sampler and guidance, the same seed."""
        prompt, _ = clean_prompt(prompt)
        kwargs = {
            "prompt": prompt if uses_text(condition) else "",
            "steps": steps,
            "seed": seed,
            "sampler": pipe.recipe.sampler,
            "guidance_scale": 1.0 if condition == "none" else pipe.recipe.guidance_scale,
        }
        if condition == "semantic map":
            kwargs["semantic_map"] = self.semantic_map(map_source, drawing, pipe.recipe.image_size)
        if condition in image_to_image.SWITCH_PATHS:
            check_choice("map source", map_source, [DRAWN, *display.examples()])
            image = image_to_image.example_image(map_source)
            kwargs.update(image_to_image.switch_inputs(condition, image, prompt, pipe))
        return kwargs

    @handler
    @on_gpu
    def switch_all(
        self, prompt: str | None, map_source: str, drawing: Any, seed: int, steps: int
    ) -> tuple[list[tuple[Image.Image, str]], str]:
        """Every conditioning path from the same seed, side by side, each captioned with its condition."""
        shown, notes = [], []
        for condition, about in SWITCH.items():
            image, pipe, _, _ = self.run(condition, prompt, map_source, drawing, seed, steps)
            shown.append((image, condition))
            untrained = "" if pipe.pretrained else " (random weights: not trained yet)"
            notes.append(f"- **{condition}** ({pipe.recipe.name}): {about['path']}{untrained}")
        return shown, f"Same seed {seed}, same x_T, {len(SWITCH)} paths into the U-Net:\n" + "\n".join(notes)

    @staticmethod
    def inputs_for(condition: str) -> tuple[gr.Textbox, gr.Dropdown]:
        """The prompt only for the text paths, the map only for the map path: the others are greyed out."""
        text, drawn = uses_text(condition), condition == "semantic map" or condition in image_to_image.SWITCH_PATHS
        return (
            gr.Textbox(interactive=text, placeholder="" if text else f"not used by the '{condition}' path"),
            gr.Dropdown(interactive=drawn),
        )


def tab(handlers: Conditioning, *, num_timesteps: int = 1000) -> dict[str, gr.components.Component]:
    examples = list(display.examples())
    colours = ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in shapes.SEG_PALETTE.values()]
    conditions = list(SWITCH)
    with gr.Tab("Conditioning switch", id="conditioning"):
        with gr.Row():
            with gr.Column(scale=1):
                condition = gr.Radio(conditions, value=conditions[0], label="conditioning")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt (text paths)", max_lines=2)
                map_source = gr.Dropdown(
                    [DRAWN, *examples], value=examples[0], label="semantic map (map path)", interactive=False
                )
                sketch = gr.Sketchpad(
                    type="filepath",
                    image_mode="RGBA",
                    format="png",
                    canvas_size=(256, 256),
                    label="draw a map (used when 'drawn on the sketchpad' is picked; drawing picks it)",
                    brush=gr.Brush(colors=colours[1:], default_color=colours[1], color_mode="fixed", default_size=24),
                )
                gr.Markdown("Colours: red = circle, green = square, blue = triangle; white/empty = background.")
                with gr.Row():
                    seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    steps = slider(1, num_timesteps, value=min(25, num_timesteps), step=1, precision=0, label="steps")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="switch")
                    compare = gr.Button("Compare all paths")
            with gr.Column(scale=2):
                with gr.Row():
                    image = gr.Image(label="result", type="pil", elem_id="switch-image", **display.IMAGE)
                    used_map = gr.Image(
                        label="the map used (snapped to the palette)", elem_id="used-map", **display.IMAGE
                    )
                path = gr.Markdown()
                side_by_side = gr.Gallery(label="every path, same seed", columns=4, **display.GALLERY)
                summary = gr.Markdown()
                code = display.code_box()
    inputs = [condition, prompt, map_source, sketch, seed, steps]
    outputs = [image, used_map, path, code]
    button.click(handlers.switch, inputs, outputs, api_name="switch")
    condition.change(handlers.switch, inputs, outputs, api_visibility="private")
    condition.change(handlers.inputs_for, condition, [prompt, map_source], api_visibility="private")
    drawn = lambda: ("semantic map", gr.Dropdown(value=DRAWN, interactive=True))  # noqa: E731 (a drawing is used)
    sketch.input(drawn, None, [condition, map_source], api_visibility="private")
    compare.click(handlers.switch_all, inputs[1:], [side_by_side, summary], api_name="switch_all")
    return {"button": button, "compare": compare, "image": image, "path": path, "gallery": side_by_side}
