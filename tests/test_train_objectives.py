"""Training with the three objectives through `python -m zoo.train`'s main(): tiny parts, a few steps, resumed;
the loss study's plan entry; the 32x32 data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.train.__main__ import main
from zoo.train.plan import LOSS_STUDY, commands
from zoo.train.stages import downsample


def train(runs: Path, name: str, steps: int, *extra: str, overrides: dict | None = None) -> Path:
    """A tiny run; the recipe override makes its sample grid use 2 sampler steps."""
    out = runs / name
    main(
        ["diffusion", "--pipeline", name, "--out", str(out), "--tiny", "--steps", str(steps), "--samples", "64"]
        + ["--batch", "4", "--cache", str(runs / "data"), "--threads", "1", "--sample-every", "100"]
        + ["--checkpoint-every", "2", "--warmup", "2", "--overrides", json.dumps({"steps": 2, **(overrides or {})})]
        + list(extra)
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def test_the_vlb_run_checkpoints_and_resumes_its_importance_sampler(runs):
    out = train(runs, "ddpm-vlb-32", 4)
    state = load_file(out / "checkpoint" / "timestep_sampler.safetensors")
    assert int(state["loss_counts"].sum()) == 4 * 4  # one L_t recorded per sample and step
    train(runs, "ddpm-vlb-32", 6)  # resumed at step 4: the history grows, it does not restart
    state = load_file(out / "checkpoint" / "timestep_sampler.safetensors")
    assert int(state["loss_counts"].sum()) == 6 * 4 and (state["loss_history"] > 0).sum() == 6 * 4
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["vlb_term_bits"] > 0 and r["mse"] > 0 for r in log)
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.recipe.objective == "vlb" and pipe.unet.config.out_channels == 6
    assert pipe.generate(steps=2, seed=0)[0].size == (32, 32)


@pytest.mark.parametrize("name", ["ddpm-hybrid-32", "ddpm-simple-32"])
def test_hybrid_and_simple_runs_train_their_objective(runs, name):
    out = train(runs, name, 2, "--out", str(runs / f"{name}-b"))
    assert not (out / "checkpoint" / "timestep_sampler.safetensors").exists()  # uniform t: nothing to keep
    out = runs / f"{name}-b"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert ("vlb_term_bits" in log[-1]) == (name == "ddpm-hybrid-32")
    recipe = zoo.load_pipeline(out / "final", device="cpu").recipe
    assert recipe.objective == name.split("-")[1] and recipe.image_size == 32


def test_the_objective_flag_changes_the_recipe_and_is_checked_against_the_variance(runs):
    with pytest.raises(ValueError, match="objective 'vlb' .* needs variance 'learned'"):
        train(runs, "ddpm-cosine", 2, "--objective", "vlb")
    assert not (runs / "ddpm-cosine").exists()  # refused before anything was written
    learned = {"variance": "learned", "unet": {"out_channels": 6}}
    out = train(runs, "ddpm-simple-32", 1, "--objective", "hybrid", overrides=learned)
    assert zoo.load_pipeline(out / "final", device="cpu").recipe.objective == "hybrid"
    with pytest.raises(SystemExit):
        main(["diffusion", "--pipeline", "ddpm-cosine", "--out", str(runs / "x"), "--objective", "kl"])


def test_the_loss_study_is_one_plan_entry_of_three_runs_and_their_exports():
    names = [name for name, _, _ in commands(only=["loss-study"])]
    assert names == [*LOSS_STUDY, *(f"export {n}" for n in LOSS_STUDY)]
    for name, argv, _ in commands(only=["loss-study"]):
        if not name.startswith("export"):
            assert argv[argv.index("--pipeline") + 1] == name and "--threads" in argv
    steps = {
        tuple(argv[argv.index("--steps") :][:2]) for n, argv, _ in commands(only=["loss-study"]) if "--steps" in argv
    }
    batches = {argv[argv.index("--batch") + 1] for n, argv, _ in commands(only=["loss-study"]) if "--batch" in argv}
    assert len(steps) == 1 and len(batches) == 1  # the same budget for every objective


def test_downsampling_averages_blocks_and_stays_on_8_bit_levels():
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    small = downsample(images, 32)
    assert small.dtype == torch.uint8 and small.shape == (3, 3, 32, 32)
    block = images[:, :, :2, :2].float().mean(dim=(2, 3)).round()
    torch.testing.assert_close(small[:, :, 0, 0].float(), block)
    assert downsample(images, 64) is images
    with pytest.raises(ValueError, match="cannot downsample"):
        downsample(images.float(), 32)
