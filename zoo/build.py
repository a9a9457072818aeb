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
import logging
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from components.base import WeightsError, resolve_folder
from zoo import catalog
from zoo.pipelines.base import Pipeline
from zoo.pipelines.latent import LatentPipeline
from zoo.pipelines.pixel import PixelPipeline
from zoo.recipes import Part, Recipe
from zoo.registry import AUTOENCODERS, CONDITIONERS, PIPELINES, SCHEDULES, UNETS, Registry

logger = logging.getLogger(__name__)

WEIGHTS_ROOT = Path(__file__).parent / "weights"
REGISTRIES: dict[str, Registry] = {
    "schedule": SCHEDULES,
    "unet": UNETS,
    "autoencoder": AUTOENCODERS,
    "conditioner": CONDITIONERS,
    "spatial": CONDITIONERS,
}


class IncompatiblePartsError(ValueError):
    """Two parts of a recipe that cannot work together; the message names both and the mismatch."""


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


def embedded_weights(name: str) -> Path | None:
    folder = WEIGHTS_ROOT / name
    return folder if (folder / "recipe.json").is_file() else None


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
    from zoo import diffusers_layout  # imports transformers: only when building, so `import zoo` stays fast

    catalog.load()
    if weights is not None:
        if diffusers_layout.holds_model_index(weights):
            return diffusers_layout.load_diffusers(weights, device=device, dtype=dtype)
        return load_pipeline(weights, device=device, dtype=dtype)
    if name is None:
        raise ValueError("build() needs a pipeline name (see zoo.available()) or weights=<folder or Hub repo>")
    chosen = name if isinstance(name, Recipe) else PIPELINES.build(name)
    if pretrained and not tiny and not overrides and chosen.hub_id:
        return diffusers_layout.load_diffusers(chosen.hub_id, name=chosen.name, device=device, dtype=dtype)
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


def assemble(
    chosen: Recipe,
    *,
    tiny: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Pipeline:
    """Build each part from the registries (random weights), check they fit, and wrap them in a pipeline.

    With `tiny`, each part's tiny overrides are written into the recipe first, so a saved tiny pipeline
    says exactly what it is (its schedule's T included) and loads back the same.
    """
    if tiny:
        tiny_parts = {
            role: Part(p.name, {**REGISTRIES[role].entry(p.name).tiny, **p.kwargs}) for role, p in chosen.parts.items()
        }
        chosen = dataclasses.replace(chosen, **tiny_parts)
    parts = {role: REGISTRIES[role].build(part.name, **part.kwargs) for role, part in chosen.parts.items()}
    check_compatible(chosen, parts)
    pipeline_class = LatentPipeline if chosen.kind == "latent" else PixelPipeline
    return pipeline_class(chosen, parts, device=device, dtype=dtype)


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


def check_compatible(chosen: Recipe, parts: dict[str, Any]) -> None:
    """The autoencoder's latent channels, the conditioner's width and the map's channels must fit the U-Net."""
    unet = parts["unet"].config
    if (ae := parts.get("autoencoder")) is not None and ae.latent_channels != unet.in_channels:
        raise IncompatiblePartsError(
            f"{chosen.name}: the autoencoder {chosen.autoencoder.name!r} makes {ae.latent_channels} latent channels "
            f"but the U-Net {chosen.unet.name!r} takes in_channels={unet.in_channels}; set one to the other"
        )
    if chosen.kind == "pixel" and unet.in_channels != 3:
        raise IncompatiblePartsError(
            f"{chosen.name}: a pixel U-Net takes 3 channels, got in_channels={unet.in_channels}"
        )
    cond = parts.get("conditioner")
    width = cond.dim if cond is not None else None
    if width != unet.context_dim:
        raise IncompatiblePartsError(
            f"{chosen.name}: the conditioner {getattr(chosen.conditioner, 'name', None)!r} gives tokens of width "
            f"{width} but the U-Net's context_dim is {unet.context_dim}; they must be equal"
        )
    spatial = parts.get("spatial")
    channels = spatial.channels if spatial is not None else 0
    if channels != unet.concat_channels:
        raise IncompatiblePartsError(
            f"{chosen.name}: the spatial conditioner gives {channels} map channels but the U-Net's concat_channels is "
            f"{unet.concat_channels}: its input is latent channels + map channels, so they must be equal"
        )


def component_class(role: str, name: str) -> type:
    """The class a registered factory declares it returns: the class whose from_pretrained loads the part."""
    factory = REGISTRIES[role].get(name)
    cls = typing.get_type_hints(factory).get("return")
    if not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        raise TypeError(f"the {role} factory {name!r} must declare its return class (with from_pretrained)")
    return cls


def load_pipeline(
    source: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
) -> Pipeline:
    """A pipeline saved by `save_pretrained`: a local folder or a Hub repo id (downloaded by huggingface_hub)."""
    catalog.load()
    folder = resolve_folder(source)
    recipe_file = folder / "recipe.json"
    if not recipe_file.is_file():
        raise WeightsError(f"missing {recipe_file}: a pipeline folder holds recipe.json and one folder per part")
    chosen = Recipe.from_json(recipe_file.read_text())
    parts = {"schedule": SCHEDULES.build(chosen.schedule.name, **chosen.schedule.kwargs)}
    for role, part in chosen.parts.items():
        if role != "schedule":
            parts[role] = component_class(role, part.name).from_pretrained(folder / role)
    check_compatible(chosen, parts)
    pipeline_class = LatentPipeline if chosen.kind == "latent" else PixelPipeline
    pipeline = pipeline_class(chosen, parts, device=device, dtype=dtype)
    pipeline.pretrained = True
    logger.info("loaded %s from %s", chosen.name, folder)
    return pipeline
