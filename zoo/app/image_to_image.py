"""Image to image: one picture and one mask, every way the zoo edits it, side by side under one seed.

- SDEdit (Meng et al. 2022): the image's latent noised by q(z_t | z_0) (DDPM Eq. 4) to the step `strength` picks
  is where the chain starts; the U-Net sees z_t alone, the prompt by cross-attention.
- inpainting trained by concatenation (ldm-inpaint-kl, Stable Diffusion inpainting's design): z_t, the mask and
  the masked image's latent concatenated as the U-Net's input; the prompt by cross-attention.
- inpainting without training, for any pipeline: the blended step (Avrahami et al. 2022, 2023) or RePaint's
  resampling (Lugmayr et al. 2022), zoo/pipelines/editing.py and repaint.py; the U-Net's input is unchanged.
- super-resolution by concatenation (ldm-sr-kl, LDM Sec. 4.4): the low-resolution image next to z_t.

A mode whose pipeline the zoo's registry does not hold, or this server does not offer, is said to be not available
(the others still run); one with random weights is said to be untrained. Every image passes the app's guard (its
size read from the header before decoding, alpha composited on white); the pipeline resizes it and says so.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

import zoo
from components.registry import SAMPLERS
from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.guard import check_choice, clean_prompt, fail, handler, number, on_gpu, open_image, slider
from zoo.pipelines.base import MAX_SEED, Pipeline
from zoo.pipelines.editing import img2img_grid

TEXT_PIPELINE = "ldm-clip-kl"  # SDEdit and the training-free inpainting run on the text model
INPAINT_PIPELINE = "ldm-inpaint-kl"
SR_PIPELINE = "ldm-sr-kl"
PAINTED = "painted on the image"
MASKS = (PAINTED, "centre square", "right half", "left half")  # white = repaint; presets for scripts and tests
MAX_REPAINT = 10  # the UI's largest jump length and resampling count (the paper's values)


# The conditioning switch's image paths (zoo/app/conditioning.py), shown where the registry has the model.
SWITCH_PATHS = {
    "image + mask (inpainting)": {
        "pipeline": INPAINT_PIPELINE,
        "path": "the mask and the masked image's latent concatenated to z_t (1 + 4 more U-Net input channels); "
        "text -> CLIP tokens -> cross-attention",
    },
    "low-res image (super-resolution)": {
        "pipeline": SR_PIPELINE,
        "path": "the 16x16 low-res image concatenated to z_t (3 more U-Net input channels); no text",
    },
}


def switch_paths() -> dict[str, dict[str, str]]:
    """The image paths whose pipeline the zoo's registry holds."""
    return {label: path for label, path in SWITCH_PATHS.items() if path["pipeline"] in zoo.available()}


def switch_inputs(condition: str, image: Image.Image, prompt: str, pipe: Pipeline) -> dict[str, Any]:
    """pipe.generate's image arguments for one of the switch's image paths: the image and the centre square
    (inpainting, with the prompt), or the image at latent resolution (super-resolution, no prompt, no guidance)."""
    if SWITCH_PATHS[condition]["pipeline"] == SR_PIPELINE:
        return {"image": low_res(pipe, image), "guidance_scale": 1.0}
    return {"prompt": prompt, "image": image, "mask_image": preset_mask("centre square", image.size)}


def example_image(example: str) -> Image.Image:
    """The dataset example's image (the first example's when a drawn map is picked: the switch's image paths)."""
    found = display.examples()
    return Image.fromarray(found.get(example, next(iter(found.values())))["image_uint8"])


def switch_code(kwargs: dict[str, Any], example: str) -> tuple[dict[str, Any], list[str]]:
    """The switch's generate arguments with the image (and mask) as names, and the lines that rebuild them."""
    index = list(display.examples()).index(example) if example in display.examples() else 0
    item = f'shapes.sample_item({index}, seed={display.EXAMPLE_SEED}, split="train")["image_uint8"]'
    setup = ["from PIL import Image", "", "from zoo.data import shapes", f"image = Image.fromarray({item})"]
    width, height = example_image(example).size
    if kwargs["image"].size != (width, height):
        side = kwargs["image"].size[0]
        setup.append(f"image = image.resize(({side}, {side}), Image.Resampling.BICUBIC)  # the low-res input")
    shown = {**kwargs, "image": display.Raw("image")}
    if "mask_image" in kwargs:
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        setup += [
            "mask = Image.new('L', image.size, 0)",
            f"mask.paste(255, {box})  # the centre square: white = repaint",
        ]
        shown["mask_image"] = display.Raw("mask")
    return shown, setup


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way to edit: the pipeline it runs and what it takes."""

    pipeline: str
    inpaint: str | None = None  # generate's inpaint= (a training-free method), None: the model's own way
    masked: bool = False  # needs the mask
    upsamples: bool = False  # takes the low-resolution image alone (no prompt, no mask)


MODES = {
    "SDEdit (image to image)": Mode(TEXT_PIPELINE),
    "inpaint: trained (ldm-inpaint-kl)": Mode(INPAINT_PIPELINE, masked=True),
    "inpaint: training-free, blended step": Mode(TEXT_PIPELINE, "blend", masked=True),
    "inpaint: training-free, RePaint": Mode(TEXT_PIPELINE, "repaint", masked=True),
    "super-resolution (ldm-sr-kl)": Mode(SR_PIPELINE, upsamples=True),
}
DEFAULT_MODES = ("SDEdit (image to image)", "inpaint: training-free, blended step", "inpaint: training-free, RePaint")


def preset_mask(choice: str, size: tuple[int, int]) -> Image.Image:
    """A white-on-black mask (white = repaint) of `size` = (width, height)."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    if choice == "centre square":
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    elif choice == "right half":
        mask[:, width // 2 :] = 255
    else:  # left half
        mask[:, : width // 2] = 255
    return Image.fromarray(mask)


def editor_parts(value: Any) -> tuple[Any, list[Any]]:
    """(background, painted layers) of the image editor's value; a plain image (a script's) has no layers."""
    if isinstance(value, dict):
        background, layers = value.get("background"), value.get("layers") or []
    else:
        background, layers = value, []
    if background is None:
        raise fail("upload an image into the editor first, or load a dataset example or the last generated image")
    if not isinstance(layers, list):
        raise fail(f"the editor's layers must be a list of images, got {type(layers).__name__}")
    return background, layers


def painted_mask(layers: Sequence[Any], size: tuple[int, int]) -> Image.Image | None:
    """The strokes of every layer as one mask of `size` (white = repaint), or None when nothing was painted. Each
    layer passes the guard (size from its header, transparency on white), so a stroke is what is darker than
    mid-grey there: the brush is black, anti-aliased edges count from half coverage (diffusers' 0.5 threshold)."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        grey = open_image(layer).convert("L").resize(size, Image.Resampling.NEAREST)
        painted |= np.asarray(grey) < 128
    return Image.fromarray(painted.astype(np.uint8) * 255) if painted.any() else None


def overlay(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """The image with the region to repaint tinted red, so the mask used can be checked."""
    if mask is None:
        return image
    red = Image.new("RGB", image.size, (255, 0, 0))
    return Image.composite(Image.blend(image, red, 0.5), image, mask.resize(image.size, Image.Resampling.NEAREST))


def first_of_gallery(gallery: Any) -> dict[str, Any]:
    """The editor's value holding the first image of a gallery (the text-to-image tab's last result)."""
    if not gallery:
        raise fail("the text-to-image tab has no image yet: generate one there first")
    item = gallery[0]
    image = item[0] if isinstance(item, tuple | list) else item
    image = image.get("image", image) if isinstance(image, dict) else image
    image = image.get("path", image) if isinstance(image, dict) else image
    return {"background": open_image(image), "layers": [], "composite": None}


def example_value(example: Any) -> dict[str, Any]:
    """The editor's value holding a dataset example (item `index` of the train split at the examples' seed)."""
    check_choice("dataset example", example, list(display.examples()))
    return {"background": Image.fromarray(display.examples()[example]["image_uint8"]), "layers": [], "composite": None}


def path_of(pipe: Pipeline, mode: Mode, start: int | None) -> str:
    """What goes into the U-Net's input, and what by cross-attention, for one mode (channels from the U-Net)."""
    c, extra = pipe.unet.config.in_channels, pipe.unet.config.concat_channels
    side = pipe.latent_shape[1]
    if mode.upsamples:
        return f"the {side}x{side} low-res image concatenated to z_t: U-Net input {c} + {extra} channels, no text"
    if mode.masked and mode.inpaint is None:
        return (
            f"z_t + the mask at {side}x{side} + the masked image's latent concatenated: U-Net input {c} + {extra} "
            "channels; the prompt by cross-attention"
        )
    if mode.inpaint is not None:
        how = "blended step" if mode.inpaint == "blend" else "RePaint: blended, and resampled back up by q"
        return f"U-Net input z_t alone ({c} channels), the prompt by cross-attention; known region replaced ({how})"
    return (
        f"the image's latent noised by q(z_t|z_0) to t = {start} starts the chain; U-Net input z_t ({c} channels), "
        "the prompt by cross-attention"
    )


def low_res(pipe: Pipeline, image: Image.Image) -> Image.Image:
    """The super-resolution model's input: the image at latent resolution, bicubic as LDM Sec. 4.4 degrades it."""
    side = pipe.latent_shape[1]
    return image.resize((side, side), Image.Resampling.BICUBIC)


def start_timestep(pipe: Pipeline, sampler: str, steps: int, strength: float) -> int | None:
    """SDEdit's first timestep in the paper's convention (1..T), from the pipeline's own grid; None: no step."""
    run = img2img_grid(pipe.grid(SAMPLERS.build(sampler), steps), strength)
    return None if run is None else run.timesteps[0] + 1


@dataclasses.dataclass
class Edit:
    """What every mode of one run shares: the image, the mask (None: no inpainting asked) and the settings."""

    image: Image.Image
    mask: Image.Image | None
    prompt: str
    strength: Any  # as given: the pipeline checks every value
    seed: Any
    steps: Any
    repaint_jump: Any
    repaint_resample: Any


class ImageToImage:
    """The tab's handlers over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def unavailable(self, label: str) -> str | None:
        """Why a mode cannot run here (its pipeline not registered, or not offered), or None."""
        name = MODES[label].pipeline
        if name not in zoo.available():
            return f"{name} is not in this zoo's registry yet"
        if name not in self.pipes.names():
            return f"this server does not offer {name}"
        return None

    def choices(self) -> list[tuple[str, str]]:
        """(label, mode): a mode that cannot run is marked; an untrained one too."""
        found = []
        for label, mode in MODES.items():
            why = self.unavailable(label)
            mark = " (not available)" if why else ("" if self.pipes.trained(mode.pipeline) else " (random weights)")
            found.append((label + mark, label))
        return found

    def inputs(self, editor: Any, mask_choice: Any, modes: list[str]) -> tuple[Image.Image, Image.Image | None]:
        """The image (guarded) and the mask: painted in the editor or a preset; None when no mode inpaints."""
        check_choice("mask", mask_choice, list(MASKS))
        background, layers = editor_parts(editor)
        image = open_image(background)
        if not any(MODES[label].masked for label in modes):
            return image, None
        mask = painted_mask(layers, image.size) if mask_choice == PAINTED else preset_mask(mask_choice, image.size)
        if mask is None:
            raise fail("paint the region to repaint on the image (black brush), or pick a preset mask")
        return image, mask

    @handler
    @on_gpu
    def edit(
        self,
        editor: Any,
        modes: list[str],
        mask_choice: str,
        prompt: str | None,
        strength: float,
        seed: int,
        steps: int,
        repaint_jump: int,
        repaint_resample: int,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio injects it)
    ) -> tuple[list[tuple[Image.Image, str]], Image.Image, str, str]:
        """Each chosen mode from the same seed, side by side (captioned with its path into the U-Net), the input
        with its mask, notes and the code of every call."""
        if not isinstance(modes, list) or not modes:
            raise fail("choose at least one mode")
        for label in modes:
            check_choice("mode", label, list(MODES))
        image, mask = self.inputs(editor, mask_choice, modes)
        prompt, notes = clean_prompt(prompt)
        edit = Edit(image, mask, prompt, strength, seed, steps, repaint_jump, repaint_resample)
        shown, code = [], []
        for label in modes:
            result = self.run(label, edit, progress)
            notes += result["notes"]
            if result["image"] is not None:
                shown.append((result["image"], label))
                code.append(result["code"])
        summary = f"Same seed {seed} for every mode:\n" + "\n".join(f"- {n}" for n in notes)
        setup = ["import zoo", "from PIL import Image", "", "image = Image.open('input.png')  # the editor's image"]
        setup += ["mask = Image.open('mask.png')  # white = repaint"] if mask is not None else []
        return shown, overlay(image, mask), summary, "\n".join(setup) + "\n\n" + "\n".join(code)

    def run(self, label: str, edit: Edit, progress: Any = None) -> dict[str, Any]:
        """One mode: {"image", "notes", "code"}; a mode that cannot run has no image, and a note that says why."""
        if why := self.unavailable(label):
            return {"image": None, "notes": [f"**{label}**: not available ({why})"], "code": ""}
        mode = MODES[label]
        pipe = self.pipes.get(mode.pipeline)
        kwargs = self.kwargs(pipe, mode, edit)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = pipe.generate(**kwargs, callback=display.progress_callback(edit.steps, progress))[0]
        sdedit = not (mode.masked or mode.upsamples)
        start = start_timestep(pipe, pipe.recipe.sampler, edit.steps, edit.strength) if sdedit else None
        untrained = "" if pipe.pretrained else " (random weights: not trained yet)"
        said = list(dict.fromkeys(str(w.message) for w in caught))
        notes = [f"**{label}** ({pipe.recipe.name}{untrained}): {path_of(pipe, mode, start)}", *said]
        side = pipe.latent_shape[1]
        small = f"image.resize(({side}, {side}), Image.Resampling.BICUBIC)"  # what low_res hands the SR model
        shown = {**kwargs, "image": display.Raw(small if mode.upsamples else "image")}
        shown.update({"mask_image": display.Raw("mask")} if "mask_image" in kwargs else {})
        code = display.call_code(mode.pipeline, self.pipes.tiny, "generate", **shown).split("\n", 1)[1]
        return {"image": image, "notes": notes, "code": code}

    @staticmethod
    def kwargs(pipe: Pipeline, mode: Mode, edit: Edit) -> dict[str, Any]:
        """pipe.generate's arguments for one mode (the pipeline checks their values)."""
        kwargs: dict[str, Any] = {"seed": edit.seed, "steps": edit.steps}
        if mode.upsamples:
            return {**kwargs, "image": low_res(pipe, edit.image)}
        kwargs.update(prompt=edit.prompt, image=edit.image)
        if not mode.masked:
            return {**kwargs, "strength": edit.strength}
        kwargs["mask_image"] = edit.mask
        if mode.inpaint == "repaint":
            kwargs.update(repaint_jump=edit.repaint_jump, repaint_resample=edit.repaint_resample, sampler="ddpm")
        return {**kwargs, "inpaint": mode.inpaint} if mode.inpaint else kwargs


def tab(
    handlers: ImageToImage, *, num_timesteps: int = 1000, generated: gr.Gallery | None = None
) -> dict[str, gr.components.Component]:
    """Upload, load an example or the last generated image, paint the mask; run the chosen modes side by side.
    `generated`: the text-to-image tab's gallery, whose first image the "use the last generated" button takes."""
    examples = list(display.examples())
    choices = handlers.choices()
    chosen = [label for label in DEFAULT_MODES if handlers.unavailable(label) is None]
    with gr.Tab("Image to image", id="image-to-image"):
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    value=example_value(examples[0]),
                    type="filepath",
                    image_mode="RGBA",
                    format="png",
                    label="the image (upload one, or load one below); paint the region to repaint",
                    brush=gr.Brush(colors=["#000000"], default_color="#000000", color_mode="fixed", default_size=6),
                    eraser=gr.Eraser(default_size=6),
                    elem_id="img2img-editor",
                )
                with gr.Row():
                    example = gr.Dropdown(examples, value=examples[0], label="dataset example (train split, seed 0)")
                    load = gr.Button("Load the example")
                last = gr.Button("Use the last text-to-image result") if generated is not None else None
                mask_choice = gr.Radio(list(MASKS), value="centre square", label="mask (white = repaint)")
                modes = gr.CheckboxGroup(choices, value=chosen, label="modes (each from the same seed)")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt (not for super-resolution)")
                strength = slider(
                    0, 1, value=0.6, step=0.05, label="strength (SDEdit: 0 keeps the image, 1 ignores it)"
                )
                with gr.Row():
                    seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    steps = slider(1, num_timesteps, value=min(25, num_timesteps), step=1, precision=0, label="steps")
                with gr.Row():
                    jump = slider(1, MAX_REPAINT, value=5, step=1, precision=0, label="RePaint jump length j")
                    resample = slider(1, MAX_REPAINT, value=3, step=1, precision=0, label="RePaint resampling r")
                button = gr.Button("Edit", variant="primary", elem_id="image-to-image")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="every mode, same seed", columns=2, elem_id="img2img-images", **display.GALLERY
                )
                used = gr.Image(label="the input, the region to repaint in red", **display.IMAGE)
                summary = gr.Markdown()
                code = display.code_box()
    inputs = [editor, modes, mask_choice, prompt, strength, seed, steps, jump, resample]
    button.click(handlers.edit, inputs, [gallery, used, summary, code], api_name="image_to_image")
    load.click(handler(example_value), example, editor, api_visibility="private")
    if last is not None:
        last.click(handler(first_of_gallery), generated, editor, api_visibility="private")
    return {"button": button, "gallery": gallery, "editor": editor, "summary": summary}
