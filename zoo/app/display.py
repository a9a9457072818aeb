"""How the tabs show things: images enlarged without blending, captioned strips, progress, and the
`zoo.build(...)` call that reproduces a result. No mathematics here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
import torch
from PIL import Image, ImageDraw

from zoo.data import shapes
from zoo.pipelines.base import Pipeline, to_pil

# Images are sent at their native size (downloads are the real pixels) and shown large, each pixel a block.
CSS = """
img { image-rendering: pixelated; }
.zoo-image img { object-fit: contain !important; width: 100% !important; height: 100% !important; }
"""
IMAGE = {"format": "png", "interactive": False, "height": 320, "elem_classes": "zoo-image"}  # one image, shown large
GALLERY = {"format": "png", "object_fit": "contain", "height": "auto", "elem_classes": "zoo-gallery"}  # whole images
RANDOM_WEIGHTS_NOTE = "**random weights: not trained yet**: this pipeline draws noise until it is trained"


def labelled(image: Image.Image, text: str, scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times, with a caption strip underneath."""
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + 14), "white")
    canvas.paste(big, (0, 0))
    ImageDraw.Draw(canvas).text((2, big.height + 1), text, fill="black")
    return canvas


def tiled(images: Sequence[Image.Image], *, across: bool, gap: int = 4) -> Image.Image:
    """Images side by side (across) or stacked, on white, `gap` pixels apart."""
    along = [i.width if across else i.height for i in images]
    other = max(i.height if across else i.width for i in images)
    length = sum(along) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (length, other) if across else (other, length), "white")
    offset = 0
    for image, size in zip(images, along, strict=True):
        canvas.paste(image, (offset, 0) if across else (0, offset))
        offset += size + gap
    return canvas


def to_images(pipe: Pipeline) -> Callable[[torch.Tensor], list[Image.Image]]:
    """Latents through the pipeline's decoder (LDM), pixels as they are."""
    return pipe.decode if pipe.recipe.kind == "latent" else to_pil


def weights_note(pipe: Pipeline) -> str:
    return "" if pipe.pretrained else RANDOM_WEIGHTS_NOTE


def notes_markdown(pipe: Pipeline, notes: Sequence[str]) -> str:
    lines = [f"**{pipe.recipe.name}**: {pipe.recipe.description}"]
    if note := weights_note(pipe):
        lines.append(note)
    return "\n\n".join([*lines, "\n".join(f"- {n}" for n in notes)])


def progress_callback(steps: int, progress: Callable | None, keep: Callable | None = None) -> Callable:
    """The sampler's callback: advances gr.Progress and hands (step, x_t, predicted x_0) to `keep`."""

    def callback(step: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if progress is not None:
            progress((min(step + 1, steps), steps), desc="denoising", unit="steps")
        if keep is not None:
            keep(step, x_t, x0)

    return callback


class Raw(str):
    """A string shown without quotes in generated code."""

    def __repr__(self) -> str:
        return str(self)


def call_code(name: str, tiny: bool, method: str, *args: Any, setup: Sequence[str] = (), **kwargs: Any) -> str:
    """`zoo.build(name).method(*args, **kwargs)` as Python source, after any `setup` lines."""
    build_args = ", tiny=True" if tiny else ""
    arguments = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    lines = ["import zoo", *setup, "", f'pipe = zoo.build("{name}"{build_args})']
    lines.append(f"result = pipe.{method}({arguments})")
    return "\n".join(lines) + "\n"


def code_box(label: str = "show as code") -> gr.Code:
    with gr.Accordion(label, open=False):
        return gr.Code(language="python", label="the call that reproduces this result", interactive=False)


NUM_EXAMPLES = 6
EXAMPLE_SEED = 0


@functools.cache
def examples() -> dict[str, dict]:
    """Dataset examples by label ("1: a red circle ..."): image (uint8 HxWx3) and semantic map (HxW labels)."""
    found = {}
    for index in range(NUM_EXAMPLES):
        item = shapes.sample_item(index, seed=EXAMPLE_SEED, split="train")
        found[f"{index + 1}: {item['caption']}"] = item
    return found


def channels_image(x: torch.Tensor, scale: float = 3.0) -> Image.Image:
    """Each channel of one (C, h, w) tensor as a grey tile, -scale black to +scale white, captioned with its
    number, side by side (wide pictures fill a gallery cell's width): a latent, or a predicted eps, as it is."""
    grey = ((x.detach().float().cpu().clamp(-scale, scale) / scale + 1) * 127.5).round().to(torch.uint8)
    tiles = [
        labelled(Image.fromarray(channel.numpy(), "L").convert("RGB"), f"ch {i}") for i, channel in enumerate(grey)
    ]
    return tiled(tiles, across=True)
