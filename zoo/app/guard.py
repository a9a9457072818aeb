"""What every tab's handlers share besides the pipeline cache: library errors shown as UI errors, the few checks
that only the app makes (a choice among the offered names, image pixels before decoding, prompt length), and
ZeroGPU's decorator.

Everything else (steps, seeds, t, guidance, sampler names, map shapes) is checked once, by the library, whose
ValueError / TypeError / LookupError messages say what is allowed; `handler` shows them as they are.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 4096 * 4096  # any image input, checked from its header before it is decoded
MAX_PROMPT_CHARS = 300  # longer prompts are cut at a word boundary (the tokenizers cut at 77 tokens anyway)
LIBRARY_ERRORS = (ValueError, TypeError, LookupError, RuntimeError, OSError)  # WeightsError is a RuntimeError


def fail(message: str) -> gr.Error:
    """The error the UI shows as a toast and gradio_client raises; the server keeps serving."""
    return gr.Error(message, print_exception=False)


def handler(fn: Callable) -> Callable:
    """`fn` with every exception shown to the user with its message (never a bare "Error"): the library's own
    errors as they are, anything else named by its type and logged with its traceback."""

    @functools.wraps(fn)  # gradio reads the signature through __wrapped__ (gr.Progress defaults included)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LIBRARY_ERRORS as err:
            raise fail(str(err).strip("'\"") or type(err).__name__) from err
        except Exception as err:  # a bug of ours: say so, keep serving
            logger.exception("%s failed", fn.__qualname__)
            raise fail(f"the server failed ({type(err).__name__}: {err}); the log has the details") from err

    return wrapped


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise fail(f"unknown {name} {value!r:.80}; choose one of: {', '.join(allowed)}")
    return value


def clean_prompt(prompt: Any, name: str = "prompt") -> tuple[str, list[str]]:
    """The prompt with its whitespace collapsed, cut at a word boundary to at most MAX_PROMPT_CHARS, with one
    notice when it was cut; None is the empty prompt."""
    if prompt is None:
        return "", []
    if not isinstance(prompt, str):
        raise fail(f"{name} must be text, got {type(prompt).__name__}")
    prompt = " ".join(prompt.encode("utf-8", "replace").decode("utf-8").split())  # lone surrogates -> "?"
    if len(prompt) <= MAX_PROMPT_CHARS:
        return prompt, []
    cut = prompt[: MAX_PROMPT_CHARS + 1].rsplit(" ", 1)[0] if " " in prompt[:MAX_PROMPT_CHARS] else ""
    cut = cut or prompt[:MAX_PROMPT_CHARS]
    return cut, [f"the {name} was cut at a word boundary to {len(cut)} characters (at most {MAX_PROMPT_CHARS})"]


def check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS or min(width, height) < 1:
        raise fail(f"the image is {width}x{height}; images up to 4096x4096 pixels are accepted")


def opened(source: str | Path | io.BytesIO) -> Image.Image:
    """Image.open, which reads the header only, with the size checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # the size is checked below, with a message of ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as err:
        raise fail(f"the image is too large ({err}); images up to 4096x4096 pixels are accepted") from err
    except (OSError, ValueError) as err:
        raise fail(f"expected an image file (PNG, JPEG, WebP, ...); could not read it ({err})") from err
    check_pixels(*image.size)
    return image


def open_image(value: Any) -> Image.Image:
    """An image input (a file path, as gradio hands uploads over, or an array / PIL image from a script) as
    RGB, its size checked from the header before any pixel is decoded; transparency composited on white."""
    if isinstance(value, str | Path):
        image = opened(value)
    elif isinstance(value, np.ndarray):
        if value.ndim not in (2, 3):
            raise fail(f"expected an HxW or HxWxC image array, got shape {value.shape}")
        check_pixels(value.shape[1], value.shape[0])
        image = Image.fromarray(value if value.dtype == np.uint8 else np.clip(value, 0, 255).astype(np.uint8))
    elif isinstance(value, Image.Image):
        image = value
    else:
        raise fail(f"expected an image (upload one, or pick a dataset example), got {type(value).__name__}")
    check_pixels(*image.size)
    if image.mode in ("RGBA", "LA", "PA", "P"):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return image.convert("RGB")


def payload_files(component: gr.components.Component, payload: Any) -> list[Any]:
    """The files of an image input's payload as gradio receives it: an ImageData, or an editor's background,
    layers and composite (FileData, or bytes its blob storage holds for the payload's id)."""
    if payload is None or not hasattr(payload, "composite"):
        return [payload]
    files = [payload.background, *payload.layers, payload.composite]
    blobs = getattr(component, "blob_storage", {}).get(payload.id) if payload.id is not None else None
    return files + ([blobs.background, *blobs.layers, blobs.composite] if blobs else [])


def check_file_header(file: Any) -> None:
    """A file of an image payload refused when its header says it is too large (or it is no image)."""
    if isinstance(file, bytes | bytearray | memoryview):
        source: str | io.BytesIO | None = io.BytesIO(bytes(file))
    elif getattr(file, "path", None):
        source = file.path
    elif (url := getattr(file, "url", None) or "").startswith("data:") and "," in url:
        source = io.BytesIO(base64.b64decode(url.split(",", 1)[1]))  # bounded by the request body limit
    else:
        return  # nothing to read: gradio's own preprocessing says what is missing
    with opened(source):
        pass


def bound_image_inputs(demo: gr.Blocks) -> None:
    """Every image input of `demo` checks its files' headers before gradio's preprocessing decodes them (it
    converts every upload and drawing to the component's image mode, at full size, even when the handler never
    uses it). Wrapped on the instances, as `named_refusals` does."""
    for block in demo.blocks.values():
        if isinstance(block, gr.Image | gr.ImageEditor):
            block.preprocess = checked_preprocess(block, block.preprocess)


def checked_preprocess(component: gr.components.Component, original: Callable) -> Callable:
    def preprocess(payload: Any) -> Any:
        for file in payload_files(component, payload):
            check_file_header(file)
        return original(payload)

    return preprocess


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


def check_number(label: str, payload: Any, low: float | None, high: float | None) -> None:
    """A finite number within [low, high] (None: unbounded), else an error naming the input and its range."""
    number = isinstance(payload, int | float) and not isinstance(payload, bool) and math.isfinite(payload)
    if not number or (low is not None and payload < low) or (high is not None and payload > high):
        span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise fail(f"{label} must be a number in {span}, got {payload!r:.60}")


def named_refusals(component: gr.Slider | gr.Number) -> gr.Slider | gr.Number:
    """The component, refusing a bad value with its label and range (gradio's own message names an index).

    Its `preprocess` is wrapped on the instance: a subclass of a gradio component would make gradio write a
    .pyi stub next to this file at import."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None or isinstance(component, gr.Slider):
            check_number(component.label or "a number", payload, component.minimum, component.maximum)
        return original(payload)

    component.preprocess = preprocess
    return component


def slider(*args: Any, **kwargs: Any) -> gr.Slider:
    return named_refusals(gr.Slider(*args, **kwargs))


def number(*args: Any, **kwargs: Any) -> gr.Number:
    return named_refusals(gr.Number(*args, **kwargs))
