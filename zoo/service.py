"""The app's inference functions: everything `app.py` calls, with no widgets in it.

A `ZooService` loads each pipeline once and reuses it, checks every input (a bad one raises `gr.Error` with a
message that says what is allowed, never a stack trace), reports the sampler's steps through `gr.Progress`,
records the denoising trajectory, times each call and writes the `zoo.build(...)` call that reproduces it.

`ZOO_APP_TINY=1` in the environment makes the service build every pipeline's tiny variant (random weights,
tiny parts): the end-to-end and browser tests use it so a server answers in well under a second on a CPU.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

import zoo
from zoo import catalog
from zoo.build import REGISTRIES, embedded_weights
from zoo.data import shapes
from zoo.pipelines.base import MAX_SEED, Pipeline, to_pil, to_tensor
from zoo.recipes import Part
from zoo.registry import AUTOENCODERS, CONDITIONERS, SAMPLERS, SCHEDULES, UNETS
from zoo.train.plan import SHIPPED

logger = logging.getLogger(__name__)

TINY_ENV = "ZOO_APP_TINY"
DEFAULT_PIPELINE = "ldm-clip-kl"
LATENT_PIPELINE = "ldm-clip-kl"  # its autoencoder encodes/decodes for the forward-noise tab's latent space
SAMPLER_CHOICES = (("DDIM", "ddim"), ("DDPM", "ddpm"), ("DPM-Solver++", "dpmpp"))
SCHEDULE_CHOICES = ("linear", "cosine")
SPACE_CHOICES = ("pixel", "latent")
MAX_UI_IMAGES = 4
MAX_PROMPT_CHARS = 300
MAX_GUIDANCE = 30.0
MAX_UPLOAD_PIXELS = 4096 * 4096
TRAJECTORY_FRAMES = 8
STRIP_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # of T, for the forward-noise strip
NUM_EXAMPLES = 6
MAX_FIGURES = 8  # evaluation figures shown per pipeline in the Zoo table
EXAMPLE_SEED = 0
UPLOAD = "upload"
DRAWN = "drawn on the sketchpad"
RANDOM_WEIGHTS_NOTE = "**random weights: not trained yet**: this pipeline draws noise until it is trained"

# The conditioning switch (LDM Fig. 3): one choice per path a condition can take into the U-Net.
SWITCH: dict[str, dict[str, Any]] = {
    "text (CLIP)": {"pipeline": "ldm-clip-kl", "path": "text -> CLIP tokens -> cross-attention in the U-Net"},
    "text (BERT)": {"pipeline": "ldm-bert-vq", "path": "text -> BERT tokens -> cross-attention in the U-Net"},
    "semantic map": {"pipeline": "ldm-seg-kl", "path": "semantic map -> one-hot, downsampled -> concatenated to z_t"},
    "none": {
        "pipeline": "ldm-clip-kl",
        "path": "no condition: the empty prompt's CLIP tokens, the unconditional model that CFG dropout trains",
    },
}

Loader = Callable[[str], Pipeline]


# ----------------------------------------------------------------------------------------------- inputs
def fail(message: str) -> gr.Error:
    """The error the UI shows as a toast and gradio_client raises; the server keeps serving."""
    return gr.Error(message, print_exception=False)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]; floats with an integral value (what JSON clients send) are accepted."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise fail(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    if not float(value).is_integer() or not low <= value <= high:
        raise fail(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise fail(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
    return value


def check_guidance(value: Any) -> float:
    """Classifier-free guidance weight w (Ho & Salimans 2022 Eq. 6): 1 is the plain conditional model."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= MAX_GUIDANCE:
        raise fail(f"guidance scale must be a number in [0, {MAX_GUIDANCE:g}], got {value!r}")
    return float(value)


def clean_prompt(prompt: Any, name: str = "prompt") -> tuple[str, list[str]]:
    """The prompt, stripped and cut to MAX_PROMPT_CHARS, with a notice when it was cut; None means empty."""
    if prompt is None:
        return "", []
    if not isinstance(prompt, str):
        raise fail(f"{name} must be text, got {type(prompt).__name__}")
    prompt = " ".join(prompt.split())
    if len(prompt) <= MAX_PROMPT_CHARS:
        return prompt, []
    return prompt[:MAX_PROMPT_CHARS], [f"the {name} was cut to its first {MAX_PROMPT_CHARS} characters"]


def check_image(image: Any) -> Image.Image:
    """An uploaded image of any mode and size as RGB (the pipeline resizes it); huge ones are refused."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise fail(f"expected an image (upload one, or pick a dataset example), got {type(image).__name__}")
    if image.width * image.height > MAX_UPLOAD_PIXELS or min(image.size) < 1:
        raise fail(f"the image is {image.width}x{image.height}; images up to 4096x4096 pixels are accepted")
    if image.mode in ("RGBA", "LA", "PA", "P"):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return image.convert("RGB")


def fresh_seed() -> int:
    return random.randrange(2**31)  # short enough to read and retype


# ----------------------------------------------------------------------------------------- the dataset
@functools.cache
def examples() -> dict[str, dict]:
    """Dataset examples by label ("1: a red circle ..."): image (uint8 HxWx3) and semantic map (HxW labels)."""
    found = {}
    for index in range(NUM_EXAMPLES):
        item = shapes.sample_item(index, seed=EXAMPLE_SEED, split="train")
        found[f"{index + 1}: {item['caption']}"] = item
    return found


def snap_map(drawing: Any, size: int) -> np.ndarray:
    """A drawn map (RGB/RGBA, anti-aliased strokes) -> (size, size) labels of the nearest SEG_PALETTE colour."""
    if isinstance(drawing, dict):  # the sketchpad's value: {"background", "layers", "composite"}
        drawing = drawing.get("composite")
    if drawing is None:
        raise fail("draw a semantic map on the sketchpad first, or pick a dataset example map")
    labels = shapes.rgb_to_map(check_image_array(drawing)).numpy().astype(np.uint8)
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST), dtype=np.int64)


def check_image_array(drawing: Any) -> np.ndarray:
    if isinstance(drawing, Image.Image):
        drawing = np.asarray(drawing.convert("RGBA"))
    if not isinstance(drawing, np.ndarray) or drawing.ndim != 3 or drawing.shape[-1] not in (3, 4):
        raise fail(f"a semantic map drawing must be an RGB or RGBA image, got {type(drawing).__name__}")
    return drawing.astype(np.uint8)


def map_setup(map_source: str) -> list[str]:
    """Source lines that rebuild the semantic map the app used."""
    if map_source == DRAWN:
        return ["semantic_map = ...  # the drawn map: an integer (64, 64) array of labels 0..3"]
    index = list(examples()).index(map_source)
    return [
        "from zoo.data import shapes",
        f'semantic_map = shapes.sample_item({index}, seed={EXAMPLE_SEED}, split="train")["semantic_map"]',
    ]


def map_image(semantic_map: np.ndarray, scale: int = 4) -> Image.Image:
    """Labels as SEG_PALETTE colours, enlarged without blending (shown as PNG)."""
    image = Image.fromarray(shapes.map_to_rgb(semantic_map))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


# ------------------------------------------------------------------------------------------- pictures
def labelled(image: Image.Image, text: str, scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times, with a caption strip underneath."""
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + 14), "white")
    canvas.paste(big, (0, 0))
    ImageDraw.Draw(canvas).text((2, big.height + 1), text, fill="black")
    return canvas


def row(images: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    canvas = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)))
    canvas.paste("white", (0, 0, canvas.width, canvas.height))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def column(images: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)))
    canvas.paste("white", (0, 0, canvas.width, canvas.height))
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + gap
    return canvas


# ---------------------------------------------------------------------------------------- trajectories
class Trajectory:
    """The sampler's callback: advances gr.Progress and keeps x_t and predicted x_0 at a few of its steps."""

    def __init__(self, steps: int, progress: Callable | None, frames: int = TRAJECTORY_FRAMES):
        self.steps = steps
        self.progress = progress
        count = min(frames, steps)  # evenly spaced steps, the first and the last included
        self.keep = {round(k * (steps - 1) / max(count - 1, 1)) for k in range(count)}
        self.frames: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, step: int, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        if self.progress is not None:
            self.progress((min(step + 1, self.steps), self.steps), desc="denoising", unit="steps")
        if step in self.keep:
            self.frames.append((step, x_t[:1].detach().clone(), x0_pred[:1].detach().clone()))

    def images(self, to_images: Callable[[torch.Tensor], list[Image.Image]]) -> list[tuple[Image.Image, str]]:
        """Each kept step as one picture, x_t (decoded) left and predicted x_0 right, with a caption."""
        shown = []
        for step, x_t, x0 in self.frames:
            caption = f"step {step + 1}/{self.steps}"
            pair = row([labelled(to_images(x_t)[0], "x_t"), labelled(to_images(x0)[0], "predicted x_0")])
            shown.append((pair, caption))
        return shown


def decoder(pipe: Pipeline) -> Callable[[torch.Tensor], list[Image.Image]]:
    """Latents through the autoencoder's decoder (LDM), or pixels as they are."""
    return pipe.decode if hasattr(pipe, "decode") else to_pil


# ------------------------------------------------------------------------------------------ show as code
def call_code(name: str, tiny: bool, method: str, *args: Any, setup: Sequence[str] = (), **kwargs: Any) -> str:
    """`zoo.build(name).method(*args, **kwargs)` as Python source, after any `setup` lines."""
    build_args = ", tiny=True" if tiny else ""
    arguments = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    lines = ["import zoo", *setup, "", f'pipe = zoo.build("{name}"{build_args})']
    lines.append(f"result = pipe.{method}({arguments})")
    return "\n".join(lines) + "\n"


def forward_noise_code(name: str, tiny: bool, schedule: str, t: int, seed: int, space: str) -> str:
    """The closed form written out (DDPM Eq. 4), for the schedule chosen, in pixel or latent space."""
    lines = [
        "import torch, zoo",
        "from zoo.registry import SCHEDULES",
        "",
        f'pipe = zoo.build("{name}"{", tiny=True" if tiny else ""})',
        f'schedule = SCHEDULES.build("{schedule}", num_timesteps=pipe.num_timesteps)',
        "x0 = pipe.encode(image)" if space == "latent" else "x0 = zoo.pipelines.base.to_tensor(image, 64)",
        f"eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed({seed}))",
        f"x_t = schedule.q_sample(x0, {t} - 1, eps)  # DDPM Eq. 4, 0-based index t - 1" if t else "x_t = x0",
        "picture = pipe.decode(x_t)[0]" if space == "latent" else "picture = zoo.pipelines.base.to_pil(x_t)[0]",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- GPUs
def on_gpu(fn: Callable) -> Callable:
    """ZeroGPU's `spaces.GPU` around GPU work when the `spaces` package is installed; otherwise `fn` itself.

    `getattr` because, run from this repository's root, `import spaces` finds our own spaces/ folder.
    """
    try:
        import spaces
    except ImportError:
        return fn
    decorator = getattr(spaces, "GPU", None)
    return decorator(fn) if callable(decorator) else fn


def build_pipeline(name: str, *, tiny: bool = False) -> Pipeline:
    """zoo.build, with its "random weights" warning sent to the log (the UI says it in words instead)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = zoo.build(name, tiny=tiny)
    for warning in caught:
        logger.warning("%s", warning.message)
    return pipe


# ---------------------------------------------------------------------------------------------- service
class ZooService:
    """The app's functions, over a cache of pipelines (each built once, by `loader`, and reused)."""

    def __init__(self, loader: Loader | None = None, *, tiny: bool = False, shipped: Sequence[str] = SHIPPED):
        self.tiny = tiny
        self.loader = loader or functools.partial(build_pipeline, tiny=tiny)
        self.shipped = tuple(shipped)
        self._pipes: dict[str, Pipeline] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> ZooService:
        """Tiny pipelines when ZOO_APP_TINY=1 (tests), the embedded weights otherwise."""
        return cls(tiny=os.environ.get(TINY_ENV, "") not in ("", "0"))

    # Pipelines and their names.
    def names(self, every: bool = False) -> list[str]:
        """The shipped pipelines (default first), or every registered one."""
        return sorted(zoo.available()) if every else list(self.shipped)

    def pipeline(self, name: Any) -> Pipeline:
        check_choice("pipeline", name, self.names(every=True))
        with self._lock:
            if name not in self._pipes:
                self._pipes[name] = self.loader(name)
            return self._pipes[name]

    def preload(self, name: str = DEFAULT_PIPELINE) -> threading.Thread:
        """Load a pipeline in the background while the server starts, so the first click only samples."""
        catalog.load()  # here, not in two threads at once: catalog.load's functools.cache is not a lock
        thread = threading.Thread(target=self.pipeline, args=(name,), name=f"preload {name}", daemon=True)
        thread.start()
        return thread

    def defaults(self, name: str) -> tuple[str, int, float]:
        """A pipeline's recipe defaults for the text-to-image tab: (sampler, steps, guidance scale)."""
        recipe = zoo.recipe(check_choice("pipeline", name, self.names(every=True)))
        return recipe.sampler, recipe.steps, recipe.guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self.schedule("linear").num_timesteps

    @functools.cache  # noqa: B019 (a handful of schedules, alive as long as the service)
    def schedule(self, name: str) -> Any:
        catalog.load()
        kwargs = zoo.recipe(f"ddpm-{name}").schedule.kwargs
        return SCHEDULES.build(name, tiny=self.tiny, **kwargs)  # as zoo.build makes it, so T is the pipelines' T

    def weights_note(self, pipe: Pipeline) -> str:
        return "" if pipe.pretrained else RANDOM_WEIGHTS_NOTE

    # Text to image.
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
        """Images, the trajectory (x_t | predicted x_0 at a few steps), notes in Markdown, code, the seed used."""
        pipe = self.pipeline(name)
        kwargs, notes = self.generate_kwargs(pipe, prompt, negative_prompt, sampler, steps, guidance_scale, num_images)
        kwargs["seed"] = fresh_seed() if randomize_seed else check_int("seed", seed, 0, MAX_SEED)
        trajectory = Trajectory(kwargs["steps"], progress)
        start = time.perf_counter()
        images = self.run(pipe, callback=trajectory, **kwargs)
        elapsed = time.perf_counter() - start
        frames = trajectory.images(decoder(pipe))
        notes.insert(0, f"{len(images)} image(s) in {elapsed:.2f} s on {pipe.device} (seed {kwargs['seed']})")
        code = call_code(name, self.tiny, "generate", kwargs.pop("prompt"), **kwargs)
        return images, frames, self.markdown(pipe, notes), code, kwargs["seed"]

    def generate_kwargs(
        self, pipe: Pipeline, prompt: Any, negative_prompt: Any, sampler: Any, steps: Any, w: Any, num_images: Any
    ) -> tuple[dict[str, Any], list[str]]:
        """The checked keyword arguments of pipe.generate, and notices about what was changed or ignored."""
        prompt, notes = clean_prompt(prompt)
        negative_prompt, cut = clean_prompt(negative_prompt, "negative prompt")
        kwargs = {
            "prompt": prompt,
            "steps": check_int("steps", steps, 1, pipe.num_timesteps),
            "sampler": check_choice("sampler", sampler, [value for _, value in SAMPLER_CHOICES]),
            "num_images": check_int("number of images", num_images, 1, MAX_UI_IMAGES),
        }
        if pipe.recipe.kind == "pixel":
            return kwargs, notes + (["the pixel DDPM is unconditional: the prompt is ignored"] if prompt else [])
        kwargs.update(negative_prompt=negative_prompt, guidance_scale=check_guidance(w))
        notes += cut + self.prompt_notes(pipe, prompt)
        if getattr(pipe, "spatial", None) is not None:
            kwargs["semantic_map"] = next(iter(examples().values()))["semantic_map"]
            notes.append("this pipeline is conditioned on a semantic map: it uses dataset example 1's map")
        return kwargs, notes

    def prompt_notes(self, pipe: Pipeline, prompt: str) -> list[str]:
        """Words the text conditioner does not know, and whether its tokenizer cuts the prompt."""
        notes = []
        if unknown := pipe.unknown_words(prompt):
            notes.append(f"unknown words (the model has never seen them): {', '.join(map(repr, unknown))}")
        conditioner = getattr(pipe, "conditioner", None)
        if prompt and hasattr(conditioner, "was_truncated") and conditioner.was_truncated([prompt])[0]:
            notes.append(f"the prompt is longer than {conditioner.max_length} tokens: the rest is cut")
        if not prompt and conditioner is not None:
            notes.append("empty prompt: an unconditional sample")
        return notes

    @on_gpu
    def run(self, pipe: Pipeline, **kwargs: Any) -> list[Image.Image]:
        """pipe.generate, with its ValueError/TypeError shown to the user as a clear gr.Error."""
        try:
            return pipe.generate(**kwargs)
        except (ValueError, TypeError) as err:
            raise fail(str(err)) from err

    def markdown(self, pipe: Pipeline, notes: list[str]) -> str:
        lines = [f"**{pipe.recipe.name}**: {pipe.recipe.description}"]
        if note := self.weights_note(pipe):
            lines.append(note)
        return "\n\n".join([*lines, "\n".join(f"- {n}" for n in notes)])

    # Forward noise.
    def source_image(self, example: Any, upload: Any) -> Image.Image:
        """The picked dataset example, or the uploaded image when "upload" is picked."""
        check_choice("image source", example, [UPLOAD, *examples()])
        if example == UPLOAD:
            if upload is None:
                raise fail("pick a dataset example, or upload an image first")
            return check_image(upload)
        return Image.fromarray(examples()[example]["image_uint8"])

    def forward_noise(
        self, example: str, upload: Any, t: int, schedule: str, space: str, seed: int
    ) -> tuple[Image.Image, Image.Image, pd.DataFrame, pd.DataFrame, str, str]:
        """x_t from the closed form (DDPM Eq. 4), a strip of x_t over t for both schedules, the two plots,
        the formula with the live numbers, and the code."""
        image = self.source_image(example, upload)
        T = self.num_timesteps
        t, seed = check_int("t", t, 0, T), check_int("seed", seed, 0, MAX_SEED)
        schedule = check_choice("schedule", schedule, SCHEDULE_CHOICES)
        space = check_choice("space", space, SPACE_CHOICES)
        x0, to_images = self.clean_signal(image, space)
        eps = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(x0)
        x_t = to_images(self.q_sample(schedule, x0, t, eps))[0]
        strip = self.strip(x0, eps, to_images)
        abar, log_snr = self.plots(t)
        name = LATENT_PIPELINE if space == "latent" else f"ddpm-{schedule}"
        code = forward_noise_code(name, self.tiny, schedule, t, seed, space)
        return x_t, strip, abar, log_snr, self.formula(schedule, t), code

    def clean_signal(self, image: Image.Image, space: str) -> tuple[torch.Tensor, Callable]:
        """x_0 in pixel space, or z_0 = E(x_0) in the latent space (LDM), and the way back to pictures."""
        if space == "pixel":
            return to_tensor(image, self.pipeline(f"ddpm-{SCHEDULE_CHOICES[0]}").recipe.image_size), to_pil
        pipe = self.pipeline(LATENT_PIPELINE)
        return pipe.encode(image).cpu(), pipe.decode

    def q_sample(self, schedule: str, x0: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, DDPM Eq. 4; t is the paper's (t = 0 is x_0 itself)."""
        return x0 if t == 0 else self.schedule(schedule).q_sample(x0, t - 1, eps)

    def strip(self, x0: torch.Tensor, eps: torch.Tensor, to_images: Callable) -> Image.Image:
        """x_t at a few t, one row per schedule, from the same x_0 and the same eps."""
        T = self.num_timesteps
        ts = [round(f * T) for f in STRIP_FRACTIONS]
        rows = []
        for name in SCHEDULE_CHOICES:
            pictures = to_images(torch.cat([self.q_sample(name, x0, t, eps) for t in ts]))
            rows.append(row([labelled(p, f"{name} t={t}") for p, t in zip(pictures, ts, strict=True)]))
        return column(rows)

    def plots(self, t: int, points: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
        """abar_t and log-SNR(t) = log(abar_t / (1 - abar_t)) against t for both schedules, with the chosen t."""
        T = self.num_timesteps
        ts = sorted({*np.linspace(1, T, points).round().astype(int).tolist()})
        frames = {"abar_t": [], "log-SNR": []}
        for name in SCHEDULE_CHOICES:
            index = torch.tensor(ts) - 1  # paper t -> 0-based index
            abar = self.schedule(name).alphas_cumprod[index].numpy()
            log_snr = self.schedule(name).log_snr(index).numpy()
            frames["abar_t"].append(pd.DataFrame({"t": ts, "value": abar, "schedule": name}))
            frames["log-SNR"].append(pd.DataFrame({"t": ts, "value": log_snr, "schedule": name}))
        return tuple(self.with_marker(pd.concat(parts), t) for parts in frames.values())

    @staticmethod
    def with_marker(frame: pd.DataFrame, t: int) -> pd.DataFrame:
        """A vertical line at the chosen t, as its own series."""
        marker = pd.DataFrame({"t": [t, t], "value": [frame.value.min(), frame.value.max()], "schedule": "chosen t"})
        return pd.concat([frame, marker], ignore_index=True)

    def formula(self, schedule: str, t: int) -> str:
        """DDPM Eq. 4 with the numbers of the chosen schedule at t."""
        if t == 0:
            return "t = 0: x_0 itself, no noise yet (DDPM Eq. 4 starts at t = 1)"
        abar = float(self.schedule(schedule).alphas_cumprod[t - 1])
        return (
            f"DDPM Eq. 4, {schedule} schedule, t = {t}:  \n"
            f"x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps = **{abar**0.5:.4f}** x_0 + "
            f"**{(1 - abar) ** 0.5:.4f}** eps"
            f"  \n(abar_t = {abar:.5f}, SNR = abar_t / (1 - abar_t) = {abar / (1 - abar):.4g})"
        )

    # The conditioning switch.
    def semantic_map(self, map_source: Any, drawing: Any, size: int) -> np.ndarray:
        check_choice("map source", map_source, [DRAWN, *examples()])
        if map_source == DRAWN:
            return snap_map(drawing, size)
        return examples()[map_source]["semantic_map"]

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
        """One conditioning path, from the same seed (so the same x_T): the image, the map used, the path, code."""
        check_choice("conditioning", condition, list(SWITCH))
        name = SWITCH[condition]["pipeline"]
        pipe = self.pipeline(name)
        kwargs = self.switch_kwargs(pipe, condition, prompt, map_source, drawing, seed, steps)
        trajectory = Trajectory(kwargs["steps"], progress, frames=0)
        image = self.run(pipe, callback=trajectory, **kwargs)[0]
        notes = [f"the condition's path into the U-Net: {SWITCH[condition]['path']}"]
        notes += self.prompt_notes(pipe, kwargs["prompt"]) if condition.startswith("text") else []
        shown_map = map_image(kwargs["semantic_map"]) if "semantic_map" in kwargs else None
        setup = map_setup(map_source) if "semantic_map" in kwargs else ()
        kwargs = {**kwargs, "semantic_map": _Raw("semantic_map")} if "semantic_map" in kwargs else kwargs
        code = call_code(name, self.tiny, "generate", kwargs.pop("prompt"), setup=setup, **kwargs)
        return image, shown_map, self.markdown(pipe, notes), code

    def switch_kwargs(
        self, pipe: Pipeline, condition: str, prompt: Any, map_source: Any, drawing: Any, seed: Any, steps: Any
    ) -> dict[str, Any]:
        prompt, _ = clean_prompt(prompt)
        kwargs = {
            "prompt": "" if condition in ("none", "semantic map") else prompt,
            "steps": check_int("steps", steps, 1, pipe.num_timesteps),
            "seed": check_int("seed", seed, 0, MAX_SEED),
            "sampler": pipe.recipe.sampler,
            "guidance_scale": 1.0 if condition == "none" else pipe.recipe.guidance_scale,
        }
        if condition == "semantic map":
            kwargs["semantic_map"] = self.semantic_map(map_source, drawing, pipe.recipe.image_size)
        return kwargs

    def switch_all(
        self, prompt: str | None, map_source: str, drawing: Any, seed: int, steps: int
    ) -> tuple[list[tuple[Image.Image, str]], str]:
        """Every conditioning path from the same seed, side by side, each captioned with its path."""
        shown, notes = [], []
        for condition in SWITCH:
            image, _, _, _ = self.switch(condition, prompt, map_source, drawing, seed, steps, progress=None)
            pipe = self.pipeline(SWITCH[condition]["pipeline"])
            shown.append((image, f"{condition}: {SWITCH[condition]['path']}"))
            path = SWITCH[condition]["path"]
            notes.append(f"- **{condition}** ({pipe.recipe.name}): {path}" + self.short_note(pipe))
        return shown, f"Same seed {seed}, same x_T, four paths into the U-Net:\n" + "\n".join(notes)

    def short_note(self, pipe: Pipeline) -> str:
        return "" if pipe.pretrained else " (random weights: not trained yet)"

    # The zoo.
    def zoo_table(self, every: bool = False) -> pd.DataFrame:
        """One row per pipeline: parts, parameters, latent shape, where its weights come from, evaluation."""
        rows = [self.zoo_row(name) for name in self.names(every)]
        return pd.DataFrame(rows)

    def zoo_row(self, name: str) -> dict[str, str]:
        recipe = zoo.recipe(name)
        counts = {role: part_facts(role, part, self.tiny) for role, part in recipe.parts.items() if role != "schedule"}
        latent = "-"
        if "autoencoder" in counts:
            channels, factor = counts["autoencoder"][1:]
            latent = f"{channels}x{recipe.image_size // factor}x{recipe.image_size // factor}"
        folder = embedded_weights(name)
        return {
            "pipeline": name,
            "kind": recipe.kind,
            "parts": ", ".join(f"{role}={part.name}" for role, part in recipe.parts.items()),
            "parameters": f"{sum(c[0] for c in counts.values()):,}",
            "per part": ", ".join(f"{role} {c[0]:,}" for role, c in counts.items()),
            "latent shape": latent,
            "weights": f"embedded: zoo/weights/{name}" if folder else "random init (not trained yet)",
            "evaluation": evaluation_summary(folder),
        }

    def components_table(self) -> pd.DataFrame:
        """Every registered component: its kind, name and description."""
        catalog.load()
        registries = {
            "schedule": SCHEDULES,
            "sampler": SAMPLERS,
            "unet": UNETS,
            "autoencoder": AUTOENCODERS,
            "conditioner": CONDITIONERS,
        }
        rows = [
            {"kind": kind, "name": name, "description": about}
            for kind, registry in registries.items()
            for name, about in registry.describe().items()
        ]
        return pd.DataFrame(rows)


class _Raw(str):
    """A string shown without quotes in generated code."""

    def __repr__(self) -> str:
        return str(self)


@functools.cache
def _part_facts(role: str, name: str, kwargs_json: str, tiny: bool) -> tuple[int, int, int]:
    module = REGISTRIES[role].build(name, tiny=tiny, **json.loads(kwargs_json))
    count = sum(p.numel() for p in module.parameters())
    return count, getattr(module, "latent_channels", 0), getattr(module, "downsample_factor", 1)


def part_facts(role: str, part: Part, tiny: bool) -> tuple[int, int, int]:
    """(parameters, latent channels, downsampling factor) of one part, built once per architecture."""
    return _part_facts(role, part.name, json.dumps(dict(part.kwargs), sort_keys=True), tiny)


def evaluation_summary(folder: Path | None) -> str:
    """The scalar figures of zoo/weights/<name>/metrics.json or evaluation.json, else "not evaluated"."""
    for file in ("evaluation.json", "metrics.json") if folder else ():
        path = folder / file
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                return f"unreadable {file}"
            figures = list(flatten(data).items())[:MAX_FIGURES]
            return ", ".join(f"{k}={v:.4g}" for k, v in figures) or f"{file} holds no numbers"
    return "not evaluated"


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a JSON document, keyed by their dotted paths."""
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(data, int | float) and not isinstance(data, bool):
        return {prefix.rstrip("."): float(data)}
    return {}
