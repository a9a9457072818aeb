"""The one assembly function: a recipe and (some of) its parts -> a checked, working pipeline.

`zoo.build` (random or tiny parts), the loaders (trained parts read by zoo/pipeline_io.py, either layout) and
training (trained autoencoder and frozen text tower, a fresh U-Net) all end here:

    assemble(recipe)                                   # every part built from the registries, random weights
    assemble(recipe, tiny=True)                        # every part's tiny variant, written into the recipe
    assemble(recipe, {"autoencoder": trained_ae})      # given parts used as they are, the rest built
    assemble(recipe, parts, pretrained=True)           # all parts trained (what the loaders do)

Before anything is wrapped, the parts must fit: the autoencoder's latent channels against the U-Net's input,
the conditioner's token width against the U-Net's context width, the map's channels against its concat input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from components.schedulers.variance import output_channels
from components.schedulers.zero_terminal_snr import check_zero_terminal_snr_settings
from zoo.pipelines.base import Pipeline
from zoo.pipelines.latent import LatentPipeline
from zoo.pipelines.pixel import PixelPipeline
from zoo.pipelines.super_resolution import LOW_RES_CHANNELS
from zoo.recipes import REGISTRIES, Part, Recipe

PIPELINE_CLASSES: dict[str, type[Pipeline]] = {"pixel": PixelPipeline, "latent": LatentPipeline}  # by recipe.kind


class IncompatiblePartsError(ValueError):
    """Two parts of a recipe that cannot work together; the message names both and the mismatch."""


def with_tiny_parts(recipe: Recipe) -> Recipe:
    """The recipe with each part's tiny overrides written in, so a saved tiny pipeline says exactly what it is
    (its schedule's T included) and loads back the same."""
    tiny = {
        role: Part(p.name, {**REGISTRIES[role].entry(p.name).tiny, **p.kwargs}) for role, p in recipe.parts.items()
    }
    return dataclasses.replace(recipe, **tiny)


def assemble(
    recipe: Recipe,
    parts: Mapping[str, Any] | None = None,
    *,
    tiny: bool = False,
    pretrained: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Pipeline:
    """The pipeline of `recipe`: the given `parts` as they are, every other role built from its registry (its
    tiny variant with `tiny`), checked to fit, wrapped in the pipeline class of `recipe.kind`.

    pretrained: the parts carry trained weights (the pipeline says so in its repr and in the app)."""
    chosen = with_tiny_parts(recipe) if tiny else recipe
    given = dict(parts or {})
    unknown = set(given) - set(chosen.parts)
    if unknown:
        raise IncompatiblePartsError(f"{chosen.name}: parts {sorted(unknown)} have no role in the recipe")
    built = {
        role: given[role] if role in given else REGISTRIES[role].build(part.name, **part.kwargs)
        for role, part in chosen.parts.items()
    }
    check_compatible(chosen, built)
    pipeline = PIPELINE_CLASSES[chosen.kind](chosen, built, device=device, dtype=dtype)
    pipeline.pretrained = pretrained
    return pipeline


def check_compatible(chosen: Recipe, parts: Mapping[str, Any]) -> None:
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
    if unet.out_channels != (wanted := output_channels(unet.in_channels, chosen.variance)):
        raise IncompatiblePartsError(
            f"{chosen.name}: variance={chosen.variance!r} needs a U-Net with out_channels={wanted} (the mean"
            f"{' and the variance' if chosen.variance == 'learned' else ''} of {unet.in_channels} channels), "
            f"got out_channels={unet.out_channels}"
        )
    cond = parts.get("conditioner")
    width = cond.dim if cond is not None else None
    if width != unet.context_dim:
        name = chosen.conditioner.name if chosen.conditioner is not None else None
        raise IncompatiblePartsError(
            f"{chosen.name}: the conditioner {name!r} gives tokens of width "
            f"{width} but the U-Net's context_dim is {unet.context_dim}; they must be equal"
        )
    spatial = parts.get("spatial")
    channels = spatial.channels if spatial is not None else 0
    image = concat_image_channels(chosen.concat_image, ae.latent_channels if ae is not None else 0)
    if channels + image != unet.concat_channels:
        what = f" + {image} {CONCAT_IMAGE_WORDS[chosen.concat_image]} channels" if image else ""
        raise IncompatiblePartsError(
            f"{chosen.name}: the spatial conditioner gives {channels} map channels{what} but the U-Net's "
            f"concat_channels is {unet.concat_channels}: its input is latent channels + map channels, so they must "
            "be equal"
        )
    check_noise_augmentation(chosen, unet, parts["schedule"].num_timesteps)
    if parts["schedule"].zero_terminal_snr:  # a schedule given as a part, which the recipe's kwargs need not name
        try:
            check_zero_terminal_snr_settings(chosen.prediction_type, chosen.timestep_spacing)
        except ValueError as error:
            raise IncompatiblePartsError(f"{chosen.name}: the schedule and the recipe disagree: {error}") from None


CONCAT_IMAGE_WORDS = {"inpaint": "inpainting (mask, masked image's latent)", "low_res": "low-res image (RGB)"}


def concat_image_channels(concat_image: str | None, latent_channels: int) -> int:
    """The U-Net inputs a recipe's concat_image adds: the mask + the masked image's latent, or the low-res RGB."""
    if concat_image == "inpaint":
        return 1 + latent_channels if latent_channels else 0
    return LOW_RES_CHANNELS if concat_image == "low_res" else 0


def check_noise_augmentation(chosen: Recipe, unet: Any, num_timesteps: int) -> None:
    """A super-resolution model with noise augmentation takes the level s in [0, max] as a class label; s is a
    time of the pipeline's schedule, so max <= T."""
    if chosen.noise_augmentation > num_timesteps:
        raise IncompatiblePartsError(
            f"{chosen.name}: noise_augmentation={chosen.noise_augmentation} is a noise level of the schedule "
            f"{chosen.schedule.name!r}, whose T is {num_timesteps}: it must be at most T"
        )
    wanted = chosen.noise_augmentation + 1 if chosen.noise_augmentation else None
    if chosen.concat_image == "low_res" and unet.num_classes != wanted:
        raise IncompatiblePartsError(
            f"{chosen.name}: noise_augmentation={chosen.noise_augmentation} needs a U-Net with num_classes={wanted} "
            f"(one class embedding per noise level 0..{chosen.noise_augmentation}; None when 0), got "
            f"num_classes={unet.num_classes}"
        )
