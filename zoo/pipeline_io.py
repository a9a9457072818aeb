"""Saving and loading pipelines: the one module that knows the file layouts (pipelines do not).

Two layouts, chosen by the recipe's `layout` when saving and by what the folder holds when loading:

    zoo        recipe.json + one Hub-layout folder per part (config.json + model.safetensors, tokenizer files)
    diffusers  model_index.json + unet/ vae/ text_encoder/ tokenizer/ scheduler/ (zoo/diffusers_layout.py)

Loading returns plain data, `(recipe, parts)`; zoo/assembly.py turns that into a pipeline, as it does for
random parts and for training. Only safetensors and JSON are ever read.
"""

from __future__ import annotations

import logging
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

from torch import nn

from components.base import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    HubModule,
    WeightsError,
    read_config,
    read_json_object,
    resolve_folder,
)
from zoo import catalog
from zoo.recipes import REGISTRIES, Part, Recipe, as_tuples
from zoo.shared_parts import part_folder

logger = logging.getLogger(__name__)

WEIGHTS_ROOT = Path(__file__).parent / "weights"  # the embedded weights, one zoo-layout folder per pipeline
RECIPE_FILE = "recipe.json"


def embedded_weights(name: str) -> Path | None:
    """zoo/weights/<name> when the package ships trained weights for that pipeline."""
    folder = WEIGHTS_ROOT / name
    return folder if (folder / RECIPE_FILE).is_file() else None


def component_class(role: str, name: str) -> type[nn.Module]:
    """The class a registered factory declares it returns: the class whose from_pretrained loads the part
    (HubModule's, or a text conditioner's, which also reads its tokenizer)."""
    factory = REGISTRIES[role].get(name)
    cls = typing.get_type_hints(factory).get("return")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(
            f"the {role} factory {name!r} must declare its return class (an nn.Module with from_pretrained)"
        )
    return cls


def load_part(role: str, name: str, folder: str | os.PathLike) -> nn.Module:
    """One trained part (config.json + model.safetensors) of the registered kind `name`."""
    catalog.load()
    return component_class(role, name).from_pretrained(folder)


def read_zoo(source: str | os.PathLike) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and trained parts of a zoo-layout folder or Hub repo id (downloaded by huggingface_hub)."""
    catalog.load()
    folder = resolve_folder(source)
    recipe_file = folder / RECIPE_FILE
    if not recipe_file.is_file():
        raise WeightsError(f"missing {recipe_file}: a pipeline folder holds {RECIPE_FILE} and one folder per part")
    recipe = read_recipe(recipe_file)
    roles = [role for role in recipe.parts if role != "schedule"]
    classes = {role: component_class(role, recipe.parts[role].name) for role in roles}
    places = {role: part_folder(folder, role) for role in roles}  # its own, or one it shares (shared_parts.py)
    for role in roles:  # every part's files are checked before any module is built (a defect costs milliseconds)
        strict = issubclass(classes[role], HubModule)
        check_part_agrees(recipe_file, role, recipe.parts[role], strict, places[role] / CONFIG_NAME)
        check_weights_file(places[role])
        if strict and (places[role] / CONFIG_NAME).is_file():
            read_config(classes[role].config_class, places[role] / CONFIG_NAME)  # every field, each value bounded
        elif (check := getattr(classes[role], "check_config", None)) and (places[role] / CONFIG_NAME).is_file():
            check(places[role] / CONFIG_NAME)  # a transformers text config: every shaping field, bounded
    parts: dict[str, Any] = {"schedule": REGISTRIES["schedule"].build(recipe.schedule.name, **recipe.schedule.kwargs)}
    parts.update({role: classes[role].from_pretrained(places[role]) for role in roles})
    logger.info("read %s from %s", recipe.name, folder)
    return recipe, parts


def read_recipe(recipe_file: Path) -> Recipe:
    """recipe.json as a Recipe; every defect (not UTF-8 JSON, a missing or unknown field, a bad part, a value out
    of range, an unregistered part name) is a WeightsError naming the file."""
    data = read_json_object(recipe_file)
    try:
        recipe = Recipe.from_dict(data)
        for role, part in recipe.parts.items():
            REGISTRIES[role].entry(part.name)
    except (TypeError, ValueError, LookupError) as err:
        raise WeightsError(f"{recipe_file}: {err}") from err
    return recipe


def check_weights_file(folder: Path) -> None:
    """The part's folder exists and its model.safetensors, when there, has a valid header covering the file
    (safetensors reads the header only: no tensor is loaded)."""
    if not folder.is_dir():
        raise WeightsError(f"missing {folder}: a pipeline folder holds one folder per part of its recipe")
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), "pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises several types for corrupt and truncated files
            raise WeightsError(f"{weights} is not valid safetensors (truncated or another format): {err}") from err


SAME_IN_TEXT_CONFIGS = {"hidden_size"}  # a text factory's kwargs that mean the same in its transformers config


def check_part_agrees(recipe_file: Path, role: str, part: Part, strict: bool, config_file: Path) -> None:
    """Each of the recipe's kwargs for `role` must equal the part's config.json value (the weights follow
    config.json, so a recipe that disagrees would describe a model that is not the one loaded). strict: a zoo
    part, whose every kwarg is a config field (a text encoder's factory takes other names too)."""
    if not config_file.is_file():
        return  # from_pretrained names the missing file
    config = read_json_object(config_file)
    for key, wanted in part.kwargs.items():
        if not strict and key not in SAME_IN_TEXT_CONFIGS:  # vocab_size is the tokenizer's cap, not its size
            continue
        if key not in config:
            if strict:
                raise WeightsError(f"{recipe_file}: {role}.kwargs.{key} is not a field of {config_file}")
            continue
        if as_tuples(config[key]) != as_tuples(wanted):
            raise WeightsError(
                f"{recipe_file} says {role}.kwargs.{key} = {wanted!r} but {config_file} has {key} = {config[key]!r}: "
                "they must agree (the weights follow config.json)"
            )


def read(source: str | os.PathLike, *, name: str | None = None) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and trained parts saved at `source`, in whichever layout it holds."""
    from zoo import diffusers_layout  # imports transformers: only when a pipeline is read

    if diffusers_layout.holds_model_index(source):
        return diffusers_layout.read_diffusers(source, name=name)
    return read_zoo(source)


def save(pipeline: Any, folder: str | os.PathLike) -> Path:
    """Write `pipeline` (its recipe and its modules) in the layout its recipe names; returns the folder."""
    if pipeline.recipe.layout == "diffusers":
        from zoo import diffusers_layout

        return diffusers_layout.write_diffusers(pipeline, folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_FILE).write_text(pipeline.recipe.to_json())
    for role, module in pipeline.modules().items():
        module.save_pretrained(folder / role)
    return folder


def push_to_hub(pipeline: Any, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Save to a temporary folder and upload it with huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save(pipeline, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message="Upload Diffusion Zoo pipeline")
    return str(info)
