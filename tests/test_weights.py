"""The shipped weights in zoo/weights: offline loading, reproducible images, clear errors for broken folders,
safetensors and JSON only, under 60 MB, and one real check that the default model draws what it is asked."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

import components.base
import zoo
from components.base import WeightsError
from zoo import shared_parts
from zoo.data.analyser import analyse
from zoo.data.shapes import Attributes, eval_prompts, render
from zoo.pipeline_io import WEIGHTS_ROOT

SHIPPED = ("ldm-clip-kl", "ldm-bert-vq", "ldm-seg-kl", "ddpm-cosine", "ddpm-linear")
PROMPT = "a small yellow triangle in the top left on a black background"


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or Hub download raises, so a test passes only if nothing reaches for the network."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(components.base, "snapshot_download", refuse)


def inputs_for(pipe: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if pipe.recipe.conditioner is not None:
        kwargs["prompt"] = PROMPT
    if pipe.recipe.spatial is not None:
        kwargs["semantic_map"] = torch.from_numpy(render(Attributes("circle", "red", "blue", "large", "center"))[1])
    return kwargs


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_pipeline_loads_offline_and_draws_a_seeded_reproducible_image(name, no_network):
    pipe = zoo.build(name, device="cpu")
    assert pipe.pretrained and "trained weights" in repr(pipe)
    kwargs = {"steps": 4, "seed": 0, **inputs_for(pipe)}
    first = np.asarray(pipe.generate(**kwargs)[0], dtype=np.int16)
    np.testing.assert_array_equal(first, np.asarray(pipe.generate(**kwargs)[0], dtype=np.int16))
    assert first.std() > 10  # a picture, not a flat or blank field
    # another seed, another image: with a prompt that leaves size and position free, since a deterministic
    # default sampler (DPM-Solver++) draws nearly one image for every seed of a caption that fixes all five
    free = {
        **kwargs,
        "seed": 1,
        **({"prompt": "a yellow triangle on a black background"} if "prompt" in kwargs else {}),
    }
    other = np.asarray(pipe.generate(**free)[0], dtype=np.int16)
    assert np.abs(other - np.asarray(pipe.generate(**{**free, "seed": 0})[0], dtype=np.int16)).mean() > 1


def test_no_network_fixture_really_blocks_the_hub(no_network, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if online: the Hub is probed
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(components.base, "_probed", {})
    with pytest.raises(WeightsError, match="someone/some-pipeline.*network disabled"):  # the probe, refused
        zoo.load_pipeline("someone/some-pipeline")


@pytest.mark.parametrize("name", ["ddpm-linear", "ddpm-cosine"])
def test_shipped_pixel_schedules_equal_diffusers(name):
    """ddpm-linear: DDPM Sec. 4 (beta 1e-4 .. 0.02, T = 1000); ddpm-cosine: Nichol & Dhariwal Eq. 17 (capped)."""
    from diffusers import DDPMScheduler

    beta_schedule = {"ddpm-linear": "linear", "ddpm-cosine": "squaredcos_cap_v2"}[name]
    oracle = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    schedule = zoo.build(name, device="cpu").scheduler
    torch.testing.assert_close(schedule.betas, oracle.betas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(schedule.alphas_cumprod, oracle.alphas_cumprod.double(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- broken folders
def broken_copy(tmp_path: Path, name: str, file: str, how: str) -> Path:
    folder = tmp_path / name
    shared_parts.copy_pipeline(WEIGHTS_ROOT / name, folder)
    target = folder / file
    if how == "missing":
        target.unlink()
    elif how == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif how == "not-json":
        target.write_text('{"model_channels": 48,')
    else:  # garbage bytes, not even UTF-8
        target.write_bytes(b"\x00\xff not a safetensors file \xff\x00" * 4)
    return target


@pytest.mark.parametrize(
    ("name", "file", "how"),
    [
        ("ddpm-cosine", "unet/model.safetensors", "truncated"),
        ("ddpm-cosine", "unet/model.safetensors", "garbage"),
        ("ddpm-cosine", "unet/model.safetensors", "missing"),
        ("ddpm-cosine", "unet/config.json", "missing"),
        ("ddpm-cosine", "unet/config.json", "not-json"),
        ("ddpm-cosine", "unet/config.json", "garbage"),
        ("ddpm-cosine", "recipe.json", "missing"),
        ("ldm-clip-kl", "autoencoder/model.safetensors", "truncated"),
        ("ldm-seg-kl", "spatial/config.json", "missing"),
        ("ldm-clip-kl", "conditioner/model.safetensors", "missing"),
        ("ldm-clip-kl", "conditioner/config.json", "missing"),
        ("ldm-clip-kl", "conditioner/model.safetensors", "truncated"),
    ],
)
def test_a_broken_weights_folder_gives_a_clear_error_naming_the_file(tmp_path, name, file, how, no_network):
    target = broken_copy(tmp_path, name, file, how)
    with pytest.raises(WeightsError) as info:
        zoo.build(weights=target.parent if file == "recipe.json" else tmp_path / name, device="cpu")
    assert str(target) in str(info.value)


def test_a_folder_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(WeightsError, match="missing-folder"):
        zoo.build(weights=tmp_path / "missing-folder", device="cpu")


def test_weights_for_another_architecture_are_refused(tmp_path):
    """Strict loading: a config for twice the channels refuses the shipped weights, naming the weights file."""
    folder = tmp_path / "ddpm-cosine"
    shutil.copytree(WEIGHTS_ROOT / "ddpm-cosine", folder)
    config = folder / "unet" / "config.json"
    data = json.loads(config.read_text())
    data["model_channels"] *= 2
    config.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="model.safetensors"):
        zoo.build(weights=folder, device="cpu")


# ------------------------------------------------------------------------------------------- the package
def test_no_pickle_anywhere_in_the_weights():
    files = [f for f in WEIGHTS_ROOT.rglob("*") if f.is_file()]
    assert files and {f.suffix for f in files} <= {".json", ".safetensors"}, sorted({f.suffix for f in files})
    for file in files:
        data = file.read_bytes()
        if file.suffix == ".safetensors":  # u64 header length, then the JSON header: never a pickle or a zip
            length = int.from_bytes(data[:8], "little")
            assert data[8:9] == b"{" and 8 + length <= len(data), file
            with safe_open(file, framework="pt") as f:  # a readable safetensors header (spatial/ holds no tensors)
                assert all(isinstance(key, str) for key in f.keys()), file
        else:
            assert data[:1] != b"\x80" and data[:2] != b"PK", file  # a pickle's protocol byte, torch.save's zip
            json.loads(data)


def test_weights_are_under_60_mb_and_every_shipped_pipeline_has_its_folder():
    size = sum(f.stat().st_size for f in WEIGHTS_ROOT.rglob("*") if f.is_file())
    assert size < 60e6, f"{size / 1e6:.1f} MB"
    for name in SHIPPED:
        assert (WEIGHTS_ROOT / name / "recipe.json").is_file(), name


def test_default_model_draws_the_background_it_is_asked_for():
    """ldm-clip-kl at its default settings (steps, sampler, guidance), on the evaluation's first four seen prompts
    with evaluate.py's seeds: the analyser must read the prompt's background colour in at least three images."""
    pipe = zoo.build("ldm-clip-kl", device="cpu")
    right = []
    for k, (caption, wanted) in enumerate(eval_prompts("seen", n=4, seed=0)):
        image = pipe.generate(caption, seed=k)[0]
        right.append(analyse(image).background == wanted.background)
    assert sum(right) >= 3, right
