"""Smoke runs of every training stage through `python -m zoo.train`'s main(): tiny parts, 4 steps, 64 samples.

One dataset cache and one trained tiny autoencoder / CLIP serve every test in this file (module fixtures).
A run writes checkpoint/ (safetensors + state.json), final/ (Hub layout) and metrics.json, never a pickle,
and a second call with more --steps resumes where the checkpoint left off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import zoo
import zoo.train.stages as stages
from components.conditioners.clip import CLIPTextConditioner
from zoo.pipeline_io import component_class
from zoo.train.__main__ import main

STEPS = 4
ALLOWED_SUFFIXES = {".safetensors", ".json", ".jsonl", ".png", ".md"}
PIXEL_SAMPLING = json.dumps({"steps": 2})  # recipe override: the sample grids use 2 sampler steps


def common(cache: Path, steps: int = STEPS) -> list[str]:
    return (
        f"--tiny --steps {steps} --samples 64 --batch 4 --cache {cache} --threads 1 "
        "--sample-every 2 --checkpoint-every 2"
    ).split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def kl(runs) -> Path:
    main(["autoencoder", "--name", "kl-f4", "--out", str(runs / "kl-f4"), *common(runs / "data")])
    return runs / "kl-f4"


@pytest.fixture(scope="module")
def clip(runs) -> Path:
    main(["clip", "--out", str(runs / "clip"), *common(runs / "data")])
    return runs / "clip"


def assert_run_folder(out: Path, modules: set[str], steps: int = STEPS, vocab: tuple[str, ...] = ()) -> dict:
    """checkpoint/ with each module's weights, EMA and the optimiser in safetensors, state.json at `steps`; the
    modules in `vocab` (and a CLIP model) with the vocabulary the run trained or brought (a BERT's)."""
    checkpoint = out / "checkpoint"
    expected = {f"{m}.safetensors" for m in modules} | {f"{m}.ema.safetensors" for m in modules}
    tokenizers = {f"{m}.tokenizer.json" for m in modules if m == "clip" or m in vocab}
    assert expected | tokenizers | {"optimizer.safetensors", "state.json"} == {f.name for f in checkpoint.iterdir()}
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == steps
    for module in modules:
        weights, ema = (
            load_file(checkpoint / f"{module}.safetensors"),
            load_file(checkpoint / f"{module}.ema.safetensors"),
        )
        assert set(ema) <= set(weights) and all(
            torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()
        )
    assert (out / "final").is_dir() and (out / "metrics.json").is_file()
    assert {f.suffix for f in out.rglob("*") if f.is_file()} <= ALLOWED_SUFFIXES  # no .pt, .bin, .pkl, .ckpt
    assert (out / "samples-000002.png").is_file() or "clip" in modules
    return json.loads((out / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------- autoencoders
def test_kl_autoencoder_stage_writes_checkpoint_final_and_metrics(kl):
    metrics = assert_run_folder(kl, {"autoencoder"})
    assert metrics["history"][-1]["step"] == STEPS and np.isfinite(metrics["history"][-1]["loss"])
    ae = component_class("autoencoder", "kl-f4").from_pretrained(kl / "final")
    assert ae.scaling_factor == pytest.approx(metrics["scaling_factor"]) and ae.scaling_factor > 0
    assert 0 < metrics["psnr_heldout_db"] < 60


def test_decoder_stage_trains_the_decoder_and_leaves_the_latents_bit_for_bit(kl, runs):
    out = runs / "kl-f4-decoder"
    main(["decoder", "--autoencoder", str(kl / "final"), "--out", str(out), *common(runs / "data"), "--lr", "1e-2"])
    metrics = assert_run_folder(out, {"autoencoder"})
    cls = component_class("autoencoder", "kl-f4")
    before, after = cls.from_pretrained(kl / "final"), cls.from_pretrained(out / "final")
    assert after.config == before.config  # the scaling factor included: the latents' scale is E's
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if not k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)  # E and q(z|x): unchanged, bit for bit
    changed = [k for k in old if k.startswith("decoder.") and not torch.equal(old[k], new[k])]
    assert len(changed) > len([k for k in old if k.startswith("decoder.")]) // 2
    assert 0 < metrics["psnr_heldout_db_before"] < 60 and 0 < metrics["psnr_heldout_db"] < 60


def test_contrast_weighted_l1_weighs_a_faint_image_up_and_is_zero_only_at_the_image():
    faint = torch.full((1, 3, 8, 8), -0.9)
    faint[..., 3:5, 3:5] = -0.8  # a dark shape on black: little content
    bright = torch.full((1, 3, 8, 8), -1.0)
    bright[..., :, 4:] = 1.0  # half the image changes by the whole range
    x = torch.cat([faint, bright])
    assert stages.contrast_weighted_l1(x, x) == 0
    on_faint, on_bright = torch.zeros_like(x), torch.zeros_like(x)
    on_faint[0, 0, 0, 0] = on_bright[1, 0, 0, 0] = 0.5  # the same error, on one image or the other
    plain = [(e.abs()).mean() for e in (on_faint, on_bright)]  # what plain L1 gives: the same
    assert torch.equal(plain[0], plain[1])
    weighted = [stages.contrast_weighted_l1(x + e, x) for e in (on_faint, on_bright)]
    assert weighted[0] > 10 * weighted[1]  # the faint image's error counts far more
    blank = torch.zeros(2, 3, 8, 8)
    assert torch.isfinite(stages.contrast_weighted_l1(blank + 0.1, blank))  # no content: the weight is bounded


def test_the_decoder_stage_trains_with_the_contrast_weighted_loss(kl, runs):
    out = runs / "kl-f4-decoder-contrast"
    main(["decoder", "--autoencoder", str(kl / "final"), "--out", str(out), *common(runs / "data"), "--loss",
          "contrast-l1"])  # fmt: skip
    assert_run_folder(out, {"autoencoder"})
    with pytest.raises(SystemExit):
        main(["decoder", "--autoencoder", str(kl / "final"), "--out", str(out), "--loss", "lpips"])


def test_the_decoder_stage_grows_the_decoder_and_keeps_the_encoder(kl, runs):
    out = runs / "kl-f4-decoder-grown"
    args = ["decoder", "--autoencoder", str(kl / "final"), "--out", str(out), *common(runs / "data")]
    main([*args, "--grow-decoder", "1"])
    assert_run_folder(out, {"autoencoder"})
    cls = component_class("autoencoder", "kl-f4")
    before, after = cls.from_pretrained(kl / "final"), cls.from_pretrained(out / "final")
    assert after.config == before.config.replace(decoder_extra_blocks=1)
    old, new = before.state_dict(), after.state_dict()
    assert set(old) < set(new) and all(torch.equal(old[k], new[k]) for k in old if k.startswith("encoder."))
    grown = [k for k in new if k not in old]
    assert grown and all(k.startswith("decoder.up.") for k in grown)
    with pytest.raises(SystemExit, match="--grow-decoder -1"):
        main([*args[:3], "--out", str(runs / "kl-f4-decoder-bad"), *common(runs / "data"), "--grow-decoder", "-1"])
    assert not (runs / "kl-f4-decoder-bad").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("flags", "sampled", "split"), [([], True, "train"), (["--latents", "mode", "--split", "all"], False, "all")]
)
def test_the_decoder_stage_decodes_posterior_samples_or_the_mean_on_the_pairs_asked(
    kl, runs, monkeypatch, tmp_path, flags, sampled, split
):
    from components.autoencoders.kl import AutoencoderKL

    asked, splits = [], []
    encode, dataset = AutoencoderKL.encode, stages.cached_dataset
    monkeypatch.setattr(
        AutoencoderKL, "encode", lambda self, x, **kw: asked.append(kw.get("sample")) or encode(self, x, **kw)
    )
    monkeypatch.setattr(stages, "cached_dataset", lambda *a, **kw: splits.append(kw.get("split")) or dataset(*a, **kw))
    out = runs / f"decoder-{split}"
    cache = tmp_path / "data"  # its own: the module's cache must not gain an all-pairs set before the SR test looks
    main(["decoder", "--autoencoder", str(kl / "final"), "--out", str(out), *common(cache), *flags])
    assert asked.count(True) == (STEPS if sampled else 0)  # one encode a step; the held-out PSNR encodes the mean
    assert splits[0] == split and splits[1:] == ["all"]  # the training images', then the 512 held-out images'
    assert_run_folder(out, {"autoencoder"})


def test_decoder_stage_refuses_a_folder_without_an_autoencoder(runs, tmp_path):
    with pytest.raises(SystemExit, match="no config.json"):
        main(
            [
                "decoder",
                "--autoencoder",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "run"),
                *common(runs / "data"),
            ]
        )
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("split", ["train", "all"])
def test_vq_autoencoder_stage_on_the_pairs_asked(runs, monkeypatch, tmp_path, split):
    splits, dataset = [], stages.cached_dataset
    monkeypatch.setattr(stages, "cached_dataset", lambda *a, **kw: splits.append(kw.get("split")) or dataset(*a, **kw))
    out = runs / f"vq-f4-{split}"
    flags = ["--split", split] if split == "all" else []  # train: the default
    main(["autoencoder", "--name", "vq-f4", "--out", str(out), *common(tmp_path / "data"), *flags])
    assert splits == [split, "all"]  # the training images', then the 512 held-out images'
    metrics = assert_run_folder(out, {"autoencoder"})
    ae = component_class("autoencoder", "vq-f4").from_pretrained(out / "final")
    assert ae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert {"loss", "step"} <= set(metrics["history"][-1])


def test_clip_stage_writes_the_text_tower_as_a_conditioner(clip):
    metrics = assert_run_folder(clip, {"clip"})
    assert 0 <= metrics["zero_shot_colour"] <= 1 and 0 <= metrics["zero_shot_shape"] <= 1
    conditioner = CLIPTextConditioner.from_pretrained(clip / "final")
    tokens, mask = conditioner(["a red circle on a blue background"])
    assert tokens.shape[0] == 1 and tokens.shape[-1] == 128 and mask.dtype == torch.bool
    full = load_file(clip / "final-clip" / "model.safetensors")  # the text tower is the contrastive model's
    tower = conditioner.text_model.state_dict()
    key = next(k for k in tower if k.endswith("embeddings.token_embedding.weight"))
    torch.testing.assert_close(tower[key], full[f"text_model.{key.removeprefix('text_model.')}"])


# ----------------------------------------------------------------------------------------------- diffusion
def train_diffusion(runs: Path, name: str, *extra: str, steps: int = STEPS) -> Path:
    out = runs / name
    argv = ["diffusion", "--pipeline", name, "--out", str(out), "--overrides", PIXEL_SAMPLING, *extra]
    main([*argv, *common(runs / "data", steps)])
    return out


def test_latent_text_pipeline_trains_resumes_and_exports(runs, kl, clip, monkeypatch, tmp_path):
    extra = ("--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final"))
    out = train_diffusion(runs, "ldm-clip-kl", *extra)
    assert_run_folder(out, {"unet"})  # the frozen CLIP tower and autoencoder are not trained
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.recipe.name == "ldm-clip-kl" and pipe.recipe.steps == 2
    frozen = CLIPTextConditioner.from_pretrained(clip / "final").text_model.state_dict()
    for key, value in pipe.conditioner.text_model.state_dict().items():
        torch.testing.assert_close(value, frozen[key])
    assert pipe.autoencoder.scaling_factor == pytest.approx(
        json.loads((kl / "metrics.json").read_text())["scaling_factor"]
    )

    seen_steps: list[int] = []
    original = stages.batch_indices
    monkeypatch.setattr(stages, "batch_indices", lambda step, *a: seen_steps.append(step) or original(step, *a))
    train_diffusion(runs, "ldm-clip-kl", *extra, steps=STEPS + 2)
    assert seen_steps == [STEPS, STEPS + 1]  # resumed at step 4, not from 0
    assert_run_folder(out, {"unet"}, steps=STEPS + 2)
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == [STEPS, STEPS + 2]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [STEPS, STEPS + 2]  # the first run's record survives the resume

    exported = tmp_path / "exported"
    main(["export", "--run", str(out / "final"), "--to", str(exported)])
    for file in exported.rglob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    loaded = zoo.load_pipeline(exported, device="cpu")
    trained = zoo.load_pipeline(out / "final", device="cpu")
    for key, value in loaded.unet.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, trained.unet.state_dict()[key], atol=1e-3, rtol=1e-3)
    image = loaded.generate("a red circle on a blue background", seed=0)[0]
    assert image.size == (64, 64)


def test_seg_pipeline_trains_with_maps_concatenated(runs, kl):
    out = train_diffusion(runs, "ldm-seg-kl", "--autoencoder", str(kl / "final"))
    assert_run_folder(out, {"unet"})
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.unet.conv_in.in_channels == pipe.autoencoder.latent_channels + pipe.spatial.channels


def test_class_pipeline_trains_on_integer_labels(runs, kl):
    """ldm-class-kl trains on the dataset's class labels (the conditioner's kind is "class", not text)."""
    out = train_diffusion(runs, "ldm-class-kl", "--autoencoder", str(kl / "final"))
    assert_run_folder(out, {"unet", "conditioner"})
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.conditioner.kind == "class"
    assert pipe.generate(5, seed=0)[0].size == (64, 64)


def test_class_tokens_start_from_the_text_towers_captions(runs, kl, clip):
    """--class-tokens-from: label k's tokens start as the CLIP tower's tokens of 'a {colour} {shape} on a {bg}
    background' averaged over the backgrounds; the null class as the empty prompt's, the rest of its row masked."""
    from zoo.data.shapes import PALETTE, SHAPES

    extra = ("--autoencoder", str(kl / "final"), "--class-tokens-from", str(clip / "final"))
    out = runs / "class-from-text"  # not ldm-class-kl's folder: a one-token run resumes there
    main(["diffusion", "--pipeline", "ldm-class-kl", "--out", str(out), "--overrides", PIXEL_SAMPLING, *extra,
          *common(runs / "data", 1)])  # fmt: skip
    text = CLIPTextConditioner.from_pretrained(clip / "final").eval()
    from zoo.train.__main__ import parser

    pipe = stages.build_for_training(
        parser().parse_args(["diffusion", "--pipeline", "ldm-class-kl", "--out", str(out), "--tiny", *extra])
    )
    label = SHAPES.index("triangle") * len(PALETTE) + list(PALETTE).index("green")
    captions = [f"a green triangle on a {bg} background" for bg in PALETTE if bg != "green"]
    with torch.no_grad():
        expected, mask = text(captions)
        tokens, got_mask = pipe.conditioner([label, pipe.conditioner.null_class])
        empty, empty_mask = text([""])
    n, n_empty = int(mask[0].sum()), int(empty_mask.sum())
    assert pipe.conditioner.config.tokens == n and pipe.conditioner.config.null_tokens == n_empty
    torch.testing.assert_close(tokens[0], expected[:, :n].mean(0))
    torch.testing.assert_close(tokens[1, :n_empty], empty[0, :n_empty])
    assert got_mask[0].all() and got_mask[1].tolist() == [True] * n_empty + [False] * (n - n_empty)
    trained = zoo.load_pipeline(out / "final", device="cpu")  # the run saved the wider table, and it loads
    assert trained.conditioner.config.tokens == n and trained.generate(label, seed=0)[0].size == (64, 64)


def test_class_tokens_from_needs_a_class_pipeline(runs, kl, clip):
    extra = ("--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final"))
    with pytest.raises(SystemExit, match="takes no class labels"):
        train_diffusion(runs, "ldm-clip-kl", *extra, "--class-tokens-from", str(clip / "final"))


def test_a_bert_warm_start_trains_the_bert_on_or_keeps_it_fixed_with_freeze_conditioner(runs, kl):
    """--freeze-conditioner keeps a trained BERT as given (the grid's two BERT models then share one, and the
    plan's copy of it starts every run the same); without it the BERT trains with the U-Net, as LDM's does."""
    ae = ("--autoencoder", str(kl / "final"))
    first = train_diffusion(runs, "ldm-bert-kl", *ae)
    assert_run_folder(first, {"unet", "conditioner"}, vocab=("conditioner",))
    given = first / "final" / "conditioner"
    before = {k: v.clone() for k, v in load_file(given / "model.safetensors").items()}
    frozen = train_diffusion(
        runs,
        "ldm-bert-kl-frozen",
        *ae,
        "--conditioner",
        str(given),
        "--freeze-conditioner",
        "--pipeline",
        "ldm-bert-kl",
    )
    assert_run_folder(frozen, {"unet"})  # nothing of the BERT's is trained, so nothing of it is checkpointed
    kept = load_file(frozen / "final" / "conditioner" / "model.safetensors")
    assert kept.keys() == before.keys() and all(torch.equal(kept[k], before[k]) for k in before)
    assert (frozen / "final" / "conditioner" / "tokenizer.json").read_text() == (given / "tokenizer.json").read_text()
    trained = train_diffusion(
        runs, "ldm-bert-kl-trained", *ae, "--conditioner", str(given), "--pipeline", "ldm-bert-kl"
    )
    assert_run_folder(trained, {"unet", "conditioner"}, vocab=("conditioner",))
    moved = load_file(trained / "final" / "conditioner" / "model.safetensors")
    assert any(not torch.equal(moved[k], before[k]) for k in before)
    assert {k: torch.equal(v, before[k]) for k, v in load_file(given / "model.safetensors").items()} == {
        k: True for k in before
    }  # the folder it started from is untouched


@pytest.mark.parametrize(
    ("pipeline", "extra", "message"),
    [
        ("ldm-clip-kl", ("--conditioner", "CLIP"), "ldm-clip-kl has no BERT conditioner"),
        ("ldm-bert-kl", (), "give it with --conditioner"),
    ],
)
def test_freeze_conditioner_without_a_trained_bert_is_refused_before_anything_is_written(
    runs, kl, clip, pipeline, extra, message
):
    out = runs / f"refused-{pipeline}"
    extra = tuple(str(clip / "final") if e == "CLIP" else e for e in extra)
    argv = ["diffusion", "--pipeline", pipeline, "--out", str(out), "--autoencoder", str(kl / "final"), *extra]
    with pytest.raises(SystemExit, match=message):
        main([*argv, "--freeze-conditioner", *common(runs / "data")])
    assert not out.exists()


def test_pixel_pipeline_trains(runs):
    out = train_diffusion(runs, "ddpm-cosine")
    assert_run_folder(out, {"unet"})
    first = zoo.load_pipeline(out / "final", device="cpu").generate(seed=0)[0]
    again = zoo.load_pipeline(out / "final", device="cpu").generate(seed=0)[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))


@pytest.mark.parametrize(
    ("damaged", "how"),
    [
        ("unet.safetensors", "truncate"),
        ("unet.ema.safetensors", "truncate"),
        ("optimizer.safetensors", "truncate"),
        ("unet.safetensors", "garbage"),
        ("state.json", "truncate"),
        ("state.json", "empty-object"),
    ],
)
def test_resuming_from_a_damaged_checkpoint_stops_naming_the_file_and_changes_nothing(runs, damaged, how):
    import shutil

    source = runs / "ddpm-cosine"
    if not (source / "checkpoint" / "state.json").is_file():
        train_diffusion(runs, "ddpm-cosine")
    out = runs / f"damaged-{damaged}-{how}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    file = out / "checkpoint" / damaged
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty-object": b"{}"}[how])
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    argv = ["diffusion", "--pipeline", "ddpm-cosine", "--out", str(out), "--overrides", PIXEL_SAMPLING]
    with pytest.raises(SystemExit, match=rf"cannot resume: .*{file}.* (is damaged|has no step)") as stopped:
        main([*argv, *common(runs / "data", steps=STEPS + 2)])
    assert "--out" in str(stopped.value)  # says what to do
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before  # nothing trained or written


def test_a_latent_pipeline_without_its_autoencoder_is_refused(runs):
    with pytest.raises(SystemExit, match="pass --autoencoder"):
        train_diffusion(runs, "ldm-bert-vq")


def test_latents_are_cached_per_autoencoder_and_reused(tmp_path, monkeypatch):
    torch.manual_seed(0)
    pipe = zoo.build("ldm-none-kl", tiny=True, pretrained=False, device="cpu")
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    first = stages.encode_all(pipe, images, torch.device("cpu"), tmp_path)
    assert [f.name.startswith("latents-") for f in tmp_path.iterdir()] == [True]
    monkeypatch.setattr(pipe.autoencoder, "encode", lambda x: pytest.fail("the cache was not used"))
    torch.testing.assert_close(stages.encode_all(pipe, images, torch.device("cpu"), tmp_path), first, rtol=0, atol=0)
    with torch.no_grad():  # a fine-tuned decoder: the same latents, the same cache entry
        for p in [*pipe.autoencoder.decoder.parameters(), *pipe.autoencoder.post_quant_conv.parameters()]:
            p.add_(0.1)
    torch.testing.assert_close(stages.encode_all(pipe, images, torch.device("cpu"), tmp_path), first, rtol=0, atol=0)
    monkeypatch.undo()
    with torch.no_grad():
        next(pipe.autoencoder.encoder.parameters()).add_(0.1)  # another encoder: another cache entry
    second = stages.encode_all(pipe, images, torch.device("cpu"), tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and not torch.allclose(second, first)
    config = pipe.autoencoder.config
    monkeypatch.setattr(pipe.autoencoder, "config", config.replace(scaling_factor=2 * config.scaling_factor))
    torch.testing.assert_close(stages.encode_all(pipe, images, torch.device("cpu"), tmp_path), 2 * second)
    assert len(list(tmp_path.iterdir())) == 3  # z = s E(x): another scale is another cache entry


def test_an_interrupted_export_leaves_the_previous_weights_whole(tmp_path, monkeypatch):
    import zoo.train.export as export_module

    run, to = tmp_path / "run", tmp_path / "weights"
    for folder, value in ((run, 1.0), (to, 2.0)):
        (folder / "unet").mkdir(parents=True)
        (folder / "recipe.json").write_text("{}")
        export_module.storage.save(
            {"w": torch.full((3,), value)}, folder / "unet" / "model.safetensors", dtype="float32"
        )

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module.storage, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["export", "--run", str(run), "--to", str(to)])
    assert load_file(to / "unet" / "model.safetensors")["w"].tolist() == [2.0, 2.0, 2.0]
    monkeypatch.undo()
    main(["export", "--run", str(run), "--to", str(to)])  # the leftover staging folder is cleared first
    exported = load_file(to / "unet" / "model.safetensors")["w"]
    assert exported.dtype == torch.float16 and exported.tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "weights"]


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_the_plan_trains_every_shipped_model_after_the_parts_it_needs(preset):
    from zoo.train import plan

    entries = plan.commands("runs", preset=preset)
    names = [name for name, _, _ in entries]
    for position, (name, argv, needs) in enumerate(entries):
        assert all(names.index(n) < position for n in needs), (name, needs)
        for flag in ("--autoencoder", "--conditioner", "--unet-from", "--init", "--class-tokens-from"):
            if flag in argv:  # the folder it reads is written by a stage it waits for
                stage = argv[argv.index(flag) + 1].split("/")[1]
                assert stage in needs, (name, flag, stage)
    trained = set(plan.LATENT) | (set(plan.PIXEL) if preset == "gpu" else set())
    assert trained <= set(names) and {f"export {n}" for n in trained} <= set(names)
    if preset == "cpu":  # the parts come from the embedded weights, which ship with the package
        for name, src in plan.EMBEDDED_PARTS.items():
            folder = Path(zoo.__file__).parent / "weights" / src  # a part (config.json) or a pipeline (recipe.json)
            assert (folder / "config.json").is_file() or (folder / "recipe.json").is_file(), src
            assert names.index(name) < names.index("ldm-clip-kl")


def test_continuation_boxes_each_start_from_the_last_and_the_export_takes_the_final_one():
    from zoo.train import plan
    from zoo.train.__main__ import parser

    entries = {name: (argv, needs) for name, argv, needs in plan.commands("runs", preset="cpu")}
    for name, boxes in plan.CPU_MORE.items():
        previous = name
        for k, flags in enumerate(boxes, start=1):
            argv, needs = entries[f"{name}+{k}"]
            args = parser().parse_args(argv)
            assert args.init == f"runs/{previous}/final" and args.out == f"runs/{name}+{k}" and needs == (previous,)
            if "--max-minutes" in flags:  # a time box
                assert args.max_minutes == float(flags[flags.index("--max-minutes") + 1])
            else:  # a step budget with its guard
                assert args.steps == int(flags[flags.index("--steps") + 1]) and args.pause_after_minutes > 0
            assert args.pipeline == name
            assert args.split == ("all" if name in plan.ALL_PAIRS else "train")
            previous = f"{name}+{k}"
        export, needs = entries[f"export {name}"]
        assert export[export.index("--run") + 1] == f"runs/{previous}/final" and needs[0] == previous
        assert needs[1:] == ()
    # ldm-bert-vq starts from ldm-clip-vq's U-Net, already on VQ latents
    assert "ldm-clip-vq" in entries["ldm-bert-vq"][1] and "ldm-clip-vq+1" not in entries["ldm-bert-vq"][1]
    assert not any("+" in name for name, _, _ in plan.commands("runs", preset="gpu"))  # a cpu-preset history
    only = [name for name, _, _ in plan.commands("runs", only=["ldm-sr-kl"], preset="cpu")]
    assert only == ["ldm-sr-kl", "ldm-sr-kl+1", "export ldm-sr-kl"]  # step budgets from the root, no decoder stage


def test_a_plan_cut_by_only_copies_the_parts_it_needs_and_stops_on_an_unfinished_stage(tmp_path):
    from zoo.train import plan

    r = str(tmp_path)
    everything = plan.commands(r, preset="cpu")
    pending = {name: (argv, deps) for name, argv, deps in plan.commands(r, only=["ldm-bert-vq"], preset="cpu")}
    before = dict(pending)
    with pytest.raises(SystemExit, match=r"needs stage ldm-clip-vq first.*add .* to --only"):
        plan.outside_needs(pending, everything)
    assert not any(tmp_path.iterdir())  # nothing was started or written
    (tmp_path / "ldm-clip-vq" / "final").mkdir(parents=True)  # as if an earlier run of the plan had finished it
    (tmp_path / "ldm-clip-vq" / "metrics.json").write_text("{}")
    pending = dict(before)
    finished = plan.outside_needs(pending, everything)
    assert finished == {"ldm-clip-vq"}
    assert set(pending) - set(before) == {"vq-f4", "bert"}  # the embedded parts' copies join: seconds each


def test_a_unet_warm_start_copies_the_weights_and_refuses_another_architecture(runs, kl, tmp_path):
    source = zoo.build("ldm-class-kl", tiny=True, pretrained=False, device="cpu").unet
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    source.save_pretrained(tmp_path / "unet")
    from zoo.train.__main__ import parser

    argv = ["diffusion", "--pipeline", "ldm-class-kl", "--autoencoder", str(kl / "final")]
    argv += ["--out", str(tmp_path / "o")]
    warm = stages.build_for_training(parser().parse_args([*argv, "--tiny", "--unet-from", str(tmp_path / "unet")]))
    for key, value in source.state_dict().items():
        assert torch.equal(warm.unet.state_dict()[key], value)
    other = zoo.build("ldm-seg-kl", tiny=True, pretrained=False, device="cpu").unet  # concat channels: other conv_in
    other.save_pretrained(tmp_path / "seg-unet")
    with pytest.raises(SystemExit, match="not the architecture"):
        stages.build_for_training(parser().parse_args([*argv, "--tiny", "--unet-from", str(tmp_path / "seg-unet")]))


# ----------------------------------------------------------------------------------------------- inpainting
def test_inpainting_pipeline_trains_on_random_masks_and_inpaints(runs, kl, clip):
    extra = ("--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final"))
    out = train_diffusion(runs, "ldm-inpaint-kl", *extra)
    assert_run_folder(out, {"unet"})
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.recipe.concat_image == "inpaint" and pipe.unet.conv_in.in_channels == 4 + 1 + 4
    image, mask = np.zeros((64, 64, 3), dtype=np.uint8), np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    assert pipe.generate("a red circle", image=image, mask_image=mask, steps=2)[0].size == (64, 64)


def test_init_from_a_text_model_zero_initialises_the_inpainting_inputs(tmp_path):
    """--init of a trained text model for ldm-inpaint-kl: the 5 new conv_in inputs start at zero, so the widened
    U-Net predicts exactly what the text model did, whatever the mask and masked latent."""
    from types import SimpleNamespace

    text = zoo.build("ldm-clip-kl", tiny=True, device="cpu")
    with torch.no_grad():
        for p in text.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    text.save_pretrained(tmp_path / "text")
    args = SimpleNamespace(init=str(tmp_path / "text"), pipeline="ldm-inpaint-kl", overrides="", objective=None)
    pipe = stages.build_for_training(args)
    assert pipe.recipe.name == "ldm-inpaint-kl" and pipe.recipe.concat_image == "inpaint"
    weight = pipe.unet.conv_in.weight
    torch.testing.assert_close(weight[:, :4], text.unet.conv_in.weight, atol=0, rtol=0)
    assert weight[:, 4:].abs().sum() == 0 and weight.requires_grad
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 40])
    context, mask = text.conditioner(["a red circle", "a blue square"])
    with torch.no_grad():
        expected = text.unet(x, t, context, context_mask=mask)
        got = pipe.unet(x, t, context, context_mask=mask, concat=torch.randn(2, 5, 16, 16))
    assert expected.abs().mean() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ super-resolution
def test_super_resolution_trains_on_cached_latents_with_noise_augmentation_and_upsamples(runs, kl, clip):
    extra = ("--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final"))
    augmented = json.dumps({"steps": 2, "noise_augmentation": 20, "unet": {"num_classes": 21}})
    out = train_diffusion(runs, "ldm-sr-kl", *extra, "--overrides", augmented)  # the last --overrides counts
    metrics = assert_run_folder(out, {"unet"})
    assert np.isfinite(metrics["history"][-1]["loss"])
    pipe = zoo.load_pipeline(out / "final", device="cpu")
    assert pipe.recipe.concat_image == "low_res" and pipe.unet.conv_in.in_channels == 4 + 3
    assert pipe.recipe.noise_augmentation == 20 and pipe.unet.class_embedding.num_embeddings == 21
    low_res = torch.rand(3, 16, 16) * 2 - 1
    assert pipe.generate(image=low_res, noise_level=10)[0].size == (64, 64)


def test_super_resolution_trains_on_all_pairs_with_split_all_and_a_text_model_is_refused(runs, kl, clip):
    from zoo.data.shapes import HELD_OUT_PAIRS, PALETTE, SHAPES

    extra = ("--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final"))
    cached = runs / "data" / "shapes-all-64-seed0.safetensors"  # common(): --samples 64, --data-seed 0
    refused = ["diffusion", "--pipeline", "ldm-clip-kl", "--out", str(runs / "refused"), *extra, "--split", "all"]
    with pytest.raises(SystemExit, match="only a super-resolution model"):  # its held-out pairs must stay unseen
        main([*refused, *common(runs / "data")])
    assert not (runs / "refused").exists() and not cached.exists()
    out = runs / "sr-all-pairs"
    main(["diffusion", "--pipeline", "ldm-sr-kl", "--out", str(out), *extra, "--split", "all", *common(runs / "data")])
    assert np.isfinite(assert_run_folder(out, {"unet"})["history"][-1]["loss"])
    labels = load_file(cached)["class_labels"].tolist()  # shape index * len(PALETTE) + colour index
    pairs = {(list(PALETTE)[k % len(PALETTE)], SHAPES[k // len(PALETTE)]) for k in labels}
    assert len(pairs & set(HELD_OUT_PAIRS)) >= 3  # 64 draws from 24 pairs: the 6 held out are there


def test_training_masks_are_binary_boxes_and_strokes_some_full_and_seeded():
    from zoo.data.masks import random_masks

    masks = random_masks(200, 64, torch.Generator().manual_seed(0))
    again = random_masks(200, 64, torch.Generator().manual_seed(0))
    assert masks.shape == (200, 1, 64, 64) and torch.equal(masks, again)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    covered = masks.mean(dim=(1, 2, 3))
    full = int((covered == 1).sum())
    assert 8 <= full <= 35  # 10% fully masked (binomial, n = 200)
    partial = covered[covered < 1]
    assert partial.min() > 0 and 0.05 < float(partial.mean()) < 0.6  # every other mask covers part of the image


def test_the_ablation_rows_change_one_choice_each_train_from_scratch_and_are_measured(runs, kl, clip, monkeypatch):
    import zoo.ablation as ablation
    from zoo.train import plan
    from zoo.train.__main__ import parser

    entries = {name: (argv, needs) for name, argv, needs in plan.commands("runs", only=["ablation"])}
    rows = {f"ablation {row}" for row in plan.ABLATION}
    assert rows <= set(entries) and not any(name.startswith("export") for name in entries)
    assert "ablation base" not in {name for name, _, _ in plan.commands("runs")}  # only when asked for
    parsed = {row: parser().parse_args(entries[f"ablation {row}"][0]) for row in plan.ABLATION}
    assert {row for row, a in parsed.items() if a.batch != 32} == {"batch-64"} and parsed["batch-64"].batch == 64
    assert {row for row, a in parsed.items() if a.lr != 3e-4} == {"lr-1e-3"}
    assert {row for row, a in parsed.items() if a.ema_decay != 0.999} == {"no-ema"}
    assert all(a.init is None and a.unet_from is None for a in parsed.values())  # from random weights
    assert all(entries[name][1] == ("kl-f4", "clip") for name in rows)
    one = [name for name, _, _ in plan.commands("runs", only=["ablation cosine"])]
    assert one == ["kl-f4", "clip", "ablation cosine"]  # one row, after the parts it needs

    # two rows trained tiny (the test's short settings go last and win), then the table measures them
    parts = ["--autoencoder", str(kl / "final"), "--conditioner", str(clip / "final")]
    for row in ("base", "cosine"):
        argv = entries[f"ablation {row}"][0]
        argv = [*argv[: argv.index("--autoencoder")], *parts, *argv[argv.index("--out") :]]
        argv[argv.index("--out") + 1] = str(runs / "ablation" / row)
        main([*argv, *common(runs / "data", steps=2)])
    assert zoo.load_pipeline(runs / "ablation" / "cosine" / "final", device="cpu").schedule.name == "cosine"
    assert zoo.load_pipeline(runs / "ablation" / "base" / "final", device="cpu").schedule.name == "linear"
    text = ablation.table(runs, prompts=1)
    lines = text.splitlines()
    assert lines[2].startswith("| `base` |") and lines[3].startswith("| `cosine` |") and "| 2 (" in lines[2]
    assert "Not finished" in text and "min-snr-5" in text.split("Not finished")[1]
    kept = json.loads((runs / "ablation" / "base" / "ablation.json").read_text())
    assert kept["prompts"] == 1 and kept["steps"] == 2 and set(kept["agreement"]) == {"seen", "heldout"}
    monkeypatch.setattr(ablation, "measure", lambda *a: pytest.fail("measured twice"))
    assert ablation.table(runs, prompts=1) == text  # the kept measures are read back, not re-measured
    assert ablation.table(runs, prompts=1, rows=["cosine"]).splitlines()[2:] == [lines[3]]
    with pytest.raises(ValueError, match=r"unknown ablation rows \['cosin'\]; the rows: base, base-seed-1, eps"):
        ablation.table(runs, prompts=1, rows=["cosin"])


# ------------------------------------------------------------------------------ step budgets and their guard
def test_a_paused_run_leaves_a_checkpoint_and_no_final_and_continues_to_what_an_unbroken_run_trains(
    kl, runs, monkeypatch
):
    """--pause-after-minutes: past the guard a run saves a checkpoint and exits PAUSED (75) without final/ or
    metrics.json; the same command resumes it, and since the lr follows the steps alone (not the minutes),
    paused-then-resumed trains the same weights as one unbroken run."""
    from zoo.train.loop import PAUSED, Trainer

    args = ["decoder", "--autoencoder", str(kl / "final"), *common(runs / "data"), "--lr", "1e-2"]
    main([*args, "--out", str(runs / "unbroken")])
    monkeypatch.setattr(Trainer, "elapsed", lambda self, started: 10.0 * self.step)  # a clock of 10 s a step
    paused = runs / "paused"
    with pytest.raises(SystemExit) as stop:
        main([*args, "--out", str(paused), "--pause-after-minutes", str(25 / 60)])  # 25 s: past it at step 3
    assert stop.value.code == PAUSED
    state = json.loads((paused / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and "paused" in state["history"][-1]
    assert not (paused / "final").exists() and not (paused / "metrics.json").exists()
    from zoo.train.plan import done

    assert not done(["decoder", "--out", str(paused)])  # the plan runs it again
    monkeypatch.undo()  # the real clock: the resumed run's 1 step stays far under its 25 s
    main([*args, "--out", str(paused), "--pause-after-minutes", str(25 / 60)])
    assert done(["decoder", "--out", str(paused)])
    one = load_file(runs / "unbroken" / "final" / "model.safetensors")
    two = load_file(paused / "final" / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_the_plan_stops_on_a_paused_stage_and_starts_nothing_after_it(tmp_path, monkeypatch):
    from zoo.train import plan

    fake = [
        ("first", ["diffusion", "--out", str(tmp_path / "first")], ()),
        ("second", ["diffusion", "--out", str(tmp_path / "second")], ("first",)),
    ]
    monkeypatch.setattr(plan, "commands", lambda *a, **k: list(fake))
    monkeypatch.setattr("zoo.train.data.cached_dataset", lambda *a, **k: None)
    started = []

    class Paused:  # a stage process that exits as the guard makes it
        returncode = plan.PAUSED

        def __init__(self, argv, **kwargs):
            started.append(argv[argv.index("--out") + 1])

        def poll(self):
            return self.returncode

    monkeypatch.setattr(plan.subprocess, "Popen", Paused)
    monkeypatch.setattr(plan.time, "sleep", lambda s: None)
    with pytest.raises(SystemExit, match=r"stage first paused .* run the same plan command again"):
        plan.run_plan(str(tmp_path), None, 2, [])
    assert started == [str(tmp_path / "first")]  # "second" needs it: never started


def test_the_cpu_presets_from_scratch_stages_are_step_budgets_with_a_guard_not_time_boxes():
    from zoo.train import plan
    from zoo.train.__main__ import parser

    entries = {name: argv for name, argv, _ in plan.commands("runs", preset="cpu")}
    for name, steps in plan.CPU_LDM_STEPS.items():
        args = parser().parse_args(entries[name])
        assert args.init is None and args.unet_from is None  # from scratch
        assert args.steps == steps and args.max_minutes == 0 and args.pause_after_minutes > 0
    for name, steps in plan.CPU_WARM_STEPS.items():  # the warm-started ones too
        args = parser().parse_args(entries[name])
        assert (args.init or args.unet_from) and args.steps == steps
        assert args.max_minutes == 0 and args.pause_after_minutes > 0, name
    loss_study = parser().parse_args(entries["ddpm-simple-32"])
    assert loss_study.max_minutes == 0 and loss_study.pause_after_minutes > 0


def test_the_grids_bert_models_share_the_plans_bert_kept_fixed():
    """ldm-bert-kl and ldm-bert-vq keep the plan's copy of the embedded BERT as it is (--freeze-conditioner), so
    the two differ only in the autoencoder (and the U-Net trained on it), and the next run starts from the same."""
    from zoo.train import plan
    from zoo.train.__main__ import parser

    entries = {name: (argv, needs) for name, argv, needs in plan.commands("runs", preset="cpu")}
    for name in ("ldm-bert-kl", "ldm-bert-vq"):
        args = parser().parse_args(entries[name][0])
        assert args.conditioner == "runs/bert/final" and args.freeze_conditioner and "bert" in entries[name][1]
    assert parser().parse_args(entries["ldm-bert-vq"][0]).unet_from == "runs/ldm-clip-vq/final/unet"
    assert plan.EMBEDDED_PARTS["bert"].endswith("/conditioner")


def test_every_model_exports_the_embedded_autoencoder_and_only_sr_trains_its_unet_on_every_pair():
    """The autoencoders read no caption, so since session 13 their decoders have seen all 24 colour-shape pairs
    and every model of one latent space shares one (no export swaps a part in); the held-out pairs are held out
    from what reads the condition, the U-Net, which trains on the 18 seen pairs unless its condition names none
    (the SR model). The gpu preset trains its autoencoders on all pairs alike."""
    from zoo.train import plan
    from zoo.train.__main__ import parser

    for preset in ("cpu", "gpu"):
        entries = {name: argv for name, argv, _ in plan.commands("runs", preset=preset)}
        assert not any("--part" in argv for name, argv in entries.items() if name.startswith("export "))
        for name in [n for n in entries if n.split("+")[0] in plan.LATENT]:  # each stage and continuation box
            args = parser().parse_args(entries[name])
            assert args.split == ("all" if args.pipeline == "ldm-sr-kl" else "train"), (preset, name)
    gpu = {name: argv for name, argv, _ in plan.commands("runs", preset="gpu")}
    for ae in ("kl-f4", "vq-f4"):
        assert parser().parse_args(gpu[ae]).split == "all"
