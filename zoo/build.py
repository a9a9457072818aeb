"""From a name (or a recipe, or a folder of weights) to a working pipeline.

zoo.build("ldm-clip-kl")                      # embedded trained weights, offline
zoo.build("ldm-clip-kl", pretrained=False)    # random initialisation
zoo.build("ldm-clip-kl", weights="user/repo") # a Hub repo or a local folder, through huggingface_hub
zoo.build("ddpm-cosine", tiny=True)           # every part's tiny variant (tests)
zoo.build("sd-v1-5", dtype="float16")         # a Stable Diffusion checkpoint from the Hub (downloaded once)
zoo.build(weights="path/to/sd")               # a folder in diffusers' layout (model_index.json)
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from zoo import catalog, pipeline_io
from zoo.assembly import IncompatiblePartsError, assemble, check_compatible
from zoo.pipeline_io import WEIGHTS_ROOT, component_class, embedded_weights
from zoo.pipelines.base import Pipeline
from zoo.recipes import REGISTRIES, Part, Recipe
from zoo.registry import PIPELINES

# Names the app and older scripts import from here; they live in zoo.assembly, zoo.pipeline_io, zoo.recipes.
__all__ = [
    "REGISTRIES",
    "WEIGHTS_ROOT",
    "IncompatiblePartsError",
    "assemble",
    "available",
    "build",
    "check_compatible",
    "component_class",
    "embedded_weights",
    "load_pipeline",
    "recipe",
]


def available() -> dict[str, str]:
    """Every pipeline name with a one-line description, and where its weights come from: embedded, a Hub
    download (with its size, or already cached), or none yet."""
    catalog.load()
    return {name: description + weights_note(name) for name, description in PIPELINES.describe().items()}


def weights_note(name: str) -> str:
    from zoo import diffusers_layout  # imports transformers: only when asked, so `import zoo` stays fast

    if name in catalog.HUB_MODELS:
        hub_id = catalog.HUB_MODELS[name]["hub_id"]
        if diffusers_layout.is_cached(hub_id):
            return f" [Hub weights {hub_id}: in the local cache]"
        return f" [needs a download of {catalog.HUB_MODELS[name]['download']} from the Hub: {hub_id}]"
    return "" if embedded_weights(name) else " [random weights: not trained yet]"


def recipe(name: str) -> Recipe:
    catalog.load()
    return PIPELINES.build(name)


def build(
    name: str | Recipe | None = None,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    tiny: bool = False,
    dtype: torch.dtype | str | None = None,
    **overrides: Any,
) -> Pipeline:
    """A pipeline by registered name (or from a recipe), with trained weights when there are any.

    weights: a folder or Hub repo saved by save_pretrained, or in diffusers' layout (model_index.json).
    dtype: "float16" / "bfloat16" where the device computes in them (float32 by default).
    """
    catalog.load()
    if weights is not None:
        return assemble(*pipeline_io.read(weights), pretrained=True, device=device, dtype=dtype)
    if name is None:
        raise ValueError("build() needs a pipeline name (see zoo.available()) or weights=<folder or Hub repo>")
    chosen = name if isinstance(name, Recipe) else PIPELINES.build(name)
    if pretrained and not tiny and not overrides and chosen.hub_id:
        from zoo import diffusers_layout  # imports transformers: only when building, so `import zoo` stays fast

        trained = diffusers_layout.read_diffusers(chosen.hub_id, name=chosen.name)
        return assemble(*trained, pretrained=True, device=device, dtype=dtype)
    if pretrained and not tiny and not overrides and (folder := embedded_weights(chosen.name)):
        return load_pipeline(folder, device=device, dtype=dtype)
    if not tiny:
        warnings.warn(
            f"{chosen.name}: randomly initialised parts (pretrained=False, no embedded weights, or overrides that "
            "change the recipe): it will draw noise until trained",
            stacklevel=2,
        )
    chosen = chosen.replace(**overrides) if overrides else chosen
    return assemble(
        interface_only(chosen) if tiny and chosen.hub_id else chosen, tiny=tiny, device=device, dtype=dtype
    )


INTERFACE = {"in_channels", "out_channels", "latent_channels", "context_dim", "hidden_size", "scaling_factor"}


def interface_only(chosen: Recipe) -> Recipe:
    """A Hub recipe's tiny twin: each part keeps only the widths the parts exchange (latent channels, context
    width), so tiny=True builds the registries' tiny variants wired as the checkpoint's parts are."""
    parts = {
        role: Part(part.name, {k: v for k, v in part.kwargs.items() if k in INTERFACE})
        for role, part in chosen.parts.items()
        if role != "schedule"  # cheap at full size, and its T fits the recipe's steps and steps offset
    }
    return dataclasses.replace(chosen, **parts)


def load_pipeline(
    source: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
) -> Pipeline:
    """A pipeline saved by `save_pretrained` in the zoo's layout: a local folder or a Hub repo id."""
    return assemble(*pipeline_io.read_zoo(source), pretrained=True, device=device, dtype=dtype)
