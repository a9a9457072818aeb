"""A bounded fuzz of the script API (issue 14): a few hundred seeded bad inputs over zoo.build, generate,
encode/decode, forward_noise, the conditioners and the recipe loaders. Each must raise a ValueError or TypeError
(or the library's own LookupError / WeightsError) whose message names the argument, and a normal request must
still be answered afterwards. Tiny pipelines, CPU, seconds in all."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch

import zoo
from components.base import WeightsError
from components.conditioners.base import TEXT_CONFIG_BOUNDS
from zoo import catalog, pipeline_io
from zoo.bench_defects import DEFECTS as RECIPE_DEFECTS
from zoo.recipes import Recipe

CLEAR = (ValueError, TypeError, LookupError, WeightsError)
N_PER_TARGET = 24  # seeded draws per (call, argument): ~400 calls in all

# Values no argument below accepts: wrong types, out of every range, unencodable text, huge sizes.
JUNK = [-1, -(10**12), 10**12, 1.5, float("nan"), float("inf"), "x", b"bytes", [1, 2], {"a": 1}, object(), True]
BIG_MAP = np.zeros((10_000, 10_000), dtype=np.uint8)  # 100 MB held by the caller: must be refused before copying


@pytest.fixture(scope="module")
def pipes():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            name: zoo.build(name, tiny=True, device="cpu") for name in ("ldm-clip-kl", "ldm-seg-kl", "ddpm-cosine")
        }


def image() -> np.ndarray:
    return np.zeros((64, 64, 3), dtype=np.uint8)


def targets(pipes):
    """(label, words one of which the message must hold, the pool of bad values, the call taking one value)."""
    clip, seg, pix = pipes["ldm-clip-kl"], pipes["ldm-seg-kl"], pipes["ddpm-cosine"]
    text_junk = [5, 1.5, [1, 2], b"x", "a \ud800 b", "\udfff", object()]
    return [
        (
            "build name",
            ("name", "pipeline"),
            [123, ["x"], 1.5, b"x", object(), "no-such-pipeline"],
            lambda v: zoo.build(v),
        ),
        ("steps", ("steps",), JUNK + [0, 10**6, np.int64(-2)], lambda v: clip.generate("a", steps=v, seed=0)),
        (
            "sampler",
            ("sampler",),
            [5, 1.5, ["ddim"], "nope", b"ddim"],
            lambda v: clip.generate("a", steps=1, sampler=v),
        ),
        ("seed", ("seed",), [v for v in JUNK if v != 10**12] + [2**63], lambda v: clip.generate("a", steps=1, seed=v)),
        ("num_images", ("num_images",), JUNK + [0, 17], lambda v: clip.generate("a", steps=1, num_images=v)),
        (
            "guidance",
            ("guidance_scale",),
            [v for v in JUNK if v != 1.5] + [-0.5, 1e9],
            lambda v: clip.generate("a", steps=1, guidance_scale=v),
        ),
        ("height", ("height",), JUNK + [0, 7, 65536, 100], lambda v: clip.generate("a", steps=1, height=v)),
        ("width", ("width",), JUNK + [0, 65536], lambda v: clip.generate("a", steps=1, width=v)),
        ("prompt", ("prompt",), text_junk, lambda v: clip.generate(v, steps=1)),
        ("negative", ("negative_prompt",), text_junk, lambda v: clip.generate("a", negative_prompt=v, steps=1)),
        (
            "semantic_map",
            ("map",),
            [
                BIG_MAP,
                np.zeros((2, 64, 64), np.int64),
                np.zeros((64, 64, 3), np.int64),
                np.zeros((64, 64), np.float32),
                np.full((64, 64), 9),
                np.zeros((0, 64)),
                "x",
                5,
            ],
            lambda v: seg.generate(semantic_map=v, steps=1),
        ),
        (
            "decode",
            ("latents",),
            [[1, 2], 5, "x", torch.zeros(4, 16, 16), torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 9999, 2)],
            lambda v: clip.decode(v),
        ),
        (
            "encode",
            ("image",),
            ["x", 5, [1], np.zeros((64, 64, 3), np.float64), torch.zeros(1, 4, 64, 64), torch.zeros(1, 3, 9999, 8)],
            lambda v: clip.encode(v),
        ),
        ("forward_noise t", ("t must",), JUNK + [51], lambda v: clip.forward_noise(image(), t=v)),
        ("space", ("space",), [3, "z", None, ["pixel"]], lambda v: pix.forward_noise(image(), t=1, space=v)),
        ("clip texts", ("text", "string"), [5, [5], ["\ud800"], [b"x"], [None]], lambda v: clip.conditioner(v)),
        ("seg maps", ("map",), [BIG_MAP, "x", [], np.zeros((8, 8), np.float64)], lambda v: seg.spatial(v)),
    ]


def test_every_bad_script_api_input_gets_a_clear_error_naming_the_argument(pipes):
    rng, calls = random.Random(0), 0
    for label, words, pool, call in targets(pipes):
        for value in [rng.choice(pool) for _ in range(N_PER_TARGET)] + pool:  # the seeded draws, then each once
            with pytest.raises(CLEAR) as caught:
                call(value)
            message = str(caught.value)
            assert any(w in message for w in words), (label, value, message)
            calls += 1
    assert calls >= 300
    # and the pipelines still answer a normal request, identically to a fresh call
    first = pipes["ldm-clip-kl"].generate("a red circle", steps=2, seed=0)[0]
    assert first.tobytes() == pipes["ldm-clip-kl"].generate("a red circle", steps=np.int64(2), seed=0)[0].tobytes()
    assert pipes["ldm-seg-kl"].generate(semantic_map=np.zeros((64, 64), np.int64), steps=1, seed=0)[0].size == (64, 64)


@pytest.mark.parametrize("defect", list(RECIPE_DEFECTS))
def test_every_weights_defect_is_a_weights_error_naming_the_file(defect, tmp_path):
    mutate, words = RECIPE_DEFECTS[defect]
    folder = tmp_path / "w"
    shutil.copytree(pipeline_io.embedded_weights("ldm-clip-kl"), folder)
    mutate(folder)
    with pytest.raises(WeightsError) as caught:
        zoo.build(weights=folder, device="cpu")
    assert words in str(caught.value) and str(folder) in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", ["ldm-clip-kl", "ldm-bert-vq"])
def test_a_text_config_without_a_shaping_field_is_refused_before_transformers_reads_it(name, tmp_path, monkeypatch):
    folder = tmp_path / "w"
    shutil.copytree(pipeline_io.embedded_weights(name), folder)
    config, original = folder / "conditioner" / "config.json", (folder / "conditioner" / "config.json").read_text()
    cls = pipeline_io.component_class("conditioner", zoo.recipe(name).conditioner.name)
    never = classmethod(lambda *args, **kwargs: pytest.fail("transformers was asked to build the text model"))
    monkeypatch.setattr(cls.model_class, "from_pretrained", never)
    fields = [*TEXT_CONFIG_BOUNDS, *cls.extra_fields, *cls.token_fields, "hidden_act", "layer_norm_eps", "model_type"]
    for field in fields:
        data = json.loads(original)
        del data[field]
        config.write_text(json.dumps(data))
        for load in (lambda: zoo.build(weights=folder, device="cpu"), lambda: cls.from_pretrained(config.parent)):
            with pytest.raises(WeightsError) as caught:
                load()
            assert f"{config} misses fields ['{field}'] of {cls.config_class.__name__}" in str(caught.value)
    assert len(fields) == (12 if name == "ldm-clip-kl" else 11)


@pytest.mark.parametrize("missing", ["no-such-folder", "./no/such", "/no/such/folder", "tests/no-such"])
def test_a_missing_local_weights_folder_never_goes_to_the_hub(missing):
    with pytest.raises(WeightsError, match="is not a folder"):
        zoo.build(weights=missing, device="cpu")


def test_recipe_from_dict_names_the_field():
    catalog.load()
    good = zoo.recipe("ldm-clip-kl").to_dict()
    rng = random.Random(1)
    for _ in range(40):
        bad = dict(good)
        field = rng.choice(["steps", "image_size", "steps_offset", "cfg_dropout", "guidance_scale", "kind", "unet"])
        bad[field] = rng.choice([-5, 10**9, "x", [1], None, float("nan")])
        if field == "unet" and bad[field] is None:
            bad[field] = 7
        with pytest.raises(CLEAR) as caught:
            Recipe.from_dict(bad)
        assert field in str(caught.value), (field, bad[field], str(caught.value))
