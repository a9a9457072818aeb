"""The registry, recipes as data, and zoo.available(): names are data, behaviour is code (STYLE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import catalog
from zoo.assembly import assemble
from zoo.pipeline_io import WEIGHTS_ROOT
from zoo.recipes import Part, Recipe
from zoo.registry import PIPELINES, SCHEDULES, UNETS, DuplicateNameError, Registry, UnknownNameError

catalog.load()
PIPELINE_NAMES = PIPELINES.names()
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in WEIGHTS_ROOT.iterdir() if (p / "recipe.json").is_file())


def echo(**kwargs):
    """Returns its keyword arguments."""
    return kwargs


@pytest.fixture
def things() -> Registry:
    registry = Registry("thing")
    registry.add("ldm-clip-kl", echo, tiny={"width": 8, "depth": 1})
    registry.add("ldm-bert-vq", echo, description="a described thing")
    registry.add("ddpm-cosine", echo)
    return registry


# ------------------------------------------------------------------------------------------------ registry
def test_registering_a_name_twice_raises_and_keeps_the_first(things):
    with pytest.raises(DuplicateNameError, match="thing 'ldm-clip-kl' is already registered"):
        things.add("ldm-clip-kl", dict)
    with pytest.raises(DuplicateNameError):
        things.register("ddpm-cosine")(dict)
    assert things.get("ldm-clip-kl") is echo
    with pytest.raises(DuplicateNameError, match="pipeline 'ldm-clip-kl'"):  # the real registry, too
        PIPELINES.add("ldm-clip-kl", echo)


def test_unknown_name_lists_close_matches_and_every_name(things):
    with pytest.raises(UnknownNameError) as info:
        things.build("ldm-clip-kll")
    message = str(info.value)
    assert "unknown thing 'ldm-clip-kll'" in message
    assert "Did you mean 'ldm-clip-kl'" in message
    assert "Known things: ddpm-cosine, ldm-bert-vq, ldm-clip-kl" in message
    with pytest.raises(UnknownNameError) as info:
        things.get("zzz")
    assert "Did you mean" not in str(info.value)  # nothing close: no guess, still the full list
    assert "ldm-bert-vq" in str(info.value)


def test_unknown_pipeline_through_zoo_build_names_the_close_match_and_the_full_list():
    with pytest.raises(UnknownNameError) as info:
        zoo.build("ldm-clip-kll")
    message = str(info.value)
    assert "Did you mean 'ldm-clip-kl'" in message
    assert all(name in message for name in PIPELINE_NAMES)
    with pytest.raises(LookupError):  # UnknownNameError is a LookupError, so `except LookupError` catches it
        zoo.recipe("ddpm-quadratic")


def test_build_applies_the_tiny_variant_and_explicit_overrides_win(things):
    assert things.build("ldm-clip-kl") == {}
    assert things.build("ldm-clip-kl", tiny=True) == {"width": 8, "depth": 1}
    assert things.build("ldm-clip-kl", tiny=True, width=16) == {"width": 16, "depth": 1}
    assert things.build("ldm-clip-kl", width=16) == {"width": 16}  # no tiny: overrides only
    assert things.build("ddpm-cosine", tiny=True) == {}  # an entry without tiny overrides


def test_descriptions_default_to_the_factory_docstring(things):
    assert things.describe() == {
        "ddpm-cosine": "Returns its keyword arguments.",
        "ldm-bert-vq": "a described thing",
        "ldm-clip-kl": "Returns its keyword arguments.",
    }
    assert list(things) == ["ddpm-cosine", "ldm-bert-vq", "ldm-clip-kl"] and len(things) == 3
    assert "ldm-bert-vq" in things and "ldm-bert-kl" not in things


def test_real_registries_take_overrides_and_have_tiny_variants():
    assert SCHEDULES.build("linear", num_timesteps=10).num_timesteps == 10
    assert SCHEDULES.build("cosine").num_timesteps == 1000
    assert SCHEDULES.build("cosine", tiny=True).num_timesteps == 50
    full, tiny = UNETS.build("unet-ldm"), UNETS.build("unet-ldm", tiny=True)
    assert tiny.num_parameters() * 10 < full.num_parameters()
    assert UNETS.build("unet-ldm", tiny=True, context_dim=24).config.context_dim == 24


# ------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_every_recipe_round_trips_through_json(name):
    recipe = zoo.recipe(name)
    assert recipe.name == name
    text = recipe.to_json()
    again = Recipe.from_json(text)
    assert again.to_json() == text
    assert again.replace(unet={}) == again and again.parts.keys() == recipe.parts.keys()
    assert set(json.loads(text)) == {f for f in recipe.__dataclass_fields__}


def test_recipes_come_back_from_json_equal_as_objects():
    """A recipe read from recipe.json must equal the registered one (JSON turns the kwargs' tuples into lists)."""
    unequal = [name for name in PIPELINE_NAMES if Recipe.from_json(zoo.recipe(name).to_json()) != zoo.recipe(name)]
    assert not unequal, f"{len(unequal)} recipes differ after a JSON round trip, e.g. {unequal[:3]}"


def test_recipe_validation_errors():
    schedule, unet = Part("linear"), Part("unet-ddpm")
    with pytest.raises(ValueError, match=r"kind must be one of \('pixel', 'latent'\), got 'voxel'"):
        Recipe("r", "", "voxel", schedule, unet)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        Recipe("r", "", "pixel", schedule, unet, prediction_type="score")
    with pytest.raises(ValueError, match="a latent pipeline needs an autoencoder"):
        Recipe("r", "", "latent", schedule, unet)
    with pytest.raises(ValueError, match="pixel pipeline is unconditional and has no autoencoder"):
        Recipe("r", "", "pixel", schedule, unet, conditioner=Part("clip"))
    data = zoo.recipe("ldm-clip-kl").to_dict()
    with pytest.raises(ValueError, match=r"unknown recipe fields \['sampler_name'\]"):
        Recipe.from_dict({**data, "sampler_name": "ddim"})


def test_replace_merges_a_parts_kwargs_and_replaces_top_level_fields():
    recipe = zoo.recipe("ldm-seg-kl")
    changed = recipe.replace(unet={"model_channels": 8}, steps=7)
    assert changed.unet.name == "unet-ldm"
    assert changed.unet.kwargs == {**recipe.unet.kwargs, "model_channels": 8}
    assert changed.steps == 7 and changed.spatial == recipe.spatial
    assert recipe.unet.kwargs.get("model_channels") is None and recipe.steps == 25  # the original is untouched
    swapped = recipe.replace(autoencoder=Part("vq-f4", {"latent_channels": 4}))  # a Part replaces the whole part
    assert swapped.autoencoder == Part("vq-f4", {"latent_channels": 4})
    renamed = recipe.replace(schedule="cosine")  # a string (JSON overrides) names another part, its defaults
    assert renamed.schedule == Part("cosine", {}) and renamed.unet == recipe.unet
    assert assemble(renamed, {}, tiny=True, device="cpu").schedule.name == "cosine"
    with pytest.raises(LookupError, match="unknown schedule .cosin.. Did you mean .cosine."):
        assemble(recipe.replace(schedule="cosin"), {}, tiny=True, device="cpu")
    with pytest.raises(ValueError, match="kind must be one of"):  # replace validates like the constructor
        recipe.replace(kind="voxel")


def test_a_recipe_holds_plain_data_only():
    for name in PIPELINE_NAMES:
        for value in json.loads(zoo.recipe(name).to_json()).values():
            assert isinstance(value, str | int | float | dict | type(None)), (name, value)


# --------------------------------------------------------------------------------------------- available
def test_available_lists_every_pipeline_with_a_one_line_description():
    listed = zoo.available()
    assert sorted(listed) == PIPELINE_NAMES
    assert {"ddpm-linear", "ddpm-cosine", "ldm-clip-kl", "ldm-bert-vq", "ldm-seg-kl", "ldm-class-kl"} <= set(listed)
    for name, description in listed.items():
        assert description.strip() and "\n" not in description, name
    assert "cosine schedule" in listed["ddpm-cosine"] and "pixel" in listed["ddpm-cosine"]
    assert "CLIP" in listed["ldm-clip-kl"] and "f8" in listed["ldm-clip-kl-f8"]


def test_shipped_pipelines_are_not_marked_random_and_the_others_are():
    assert {"ldm-clip-kl", "ldm-bert-vq", "ldm-seg-kl", "ddpm-cosine", "ddpm-linear"} <= set(SHIPPED)
    listed = zoo.available()
    for name in SHIPPED:
        assert "random" not in listed[name], name
    ours = [name for name in listed if name.startswith(("ddpm-", "ldm-"))]  # trained here, or random
    assert len(ours) >= 48
    for name in set(ours) - set(SHIPPED):
        assert "[random weights" in listed[name], name


def test_catalog_load_is_safe_from_several_threads_at_once():
    # A fresh interpreter, so the first load really races (the app builds pipelines from worker threads).
    code = (
        "import threading, zoo.catalog as c\n"
        "errors = []\n"
        "def run():\n"
        "    try: c.load()\n"
        "    except Exception as e: errors.append(repr(e))\n"
        "ts = [threading.Thread(target=run) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "import zoo; print(len(errors), len(zoo.available()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    errors, names = map(int, result.stdout.split())
    assert errors == 0 and names >= 50
