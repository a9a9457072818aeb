"""The app without a server: each tab's builder, and its handlers on tiny pipelines (zoo/app/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from app_support import pixels, quiet, seeded_tiny
from PIL import Image, ImageDraw

import zoo
from zoo.app import (
    build_app,
    cache,
    conditioning,
    display,
    forward_noise,
    guard,
    launch_options,
    text_to_image,
    zoo_tab,
)
from zoo.data import shapes

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2
NEW_VIEWS = {"compare_samplers", "swap", "inspect_autoencoders", "one_step", "image_to_image", "loss"}


@pytest.fixture(scope="module")
def text(pipes) -> text_to_image.TextToImage:
    return text_to_image.TextToImage(pipes)


@pytest.fixture(scope="module")
def noise(pipes) -> forward_noise.ForwardNoise:
    return forward_noise.ForwardNoise(pipes)


@pytest.fixture(scope="module")
def switch(pipes) -> conditioning.Conditioning:
    return conditioning.Conditioning(pipes)


# ------------------------------------------------------------------------------------------ builders
def test_every_tab_builds_without_a_server_and_names_its_endpoints(pipes):
    demo = build_app(pipes)
    assert isinstance(demo, gr.Blocks)
    named = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert named == {"generate", "forward_noise", "switch", "switch_all", "zoo_table", "components"} | NEW_VIEWS


def test_a_tab_builder_takes_its_handlers_injected(pipes):
    with gr.Blocks() as demo:
        parts = text_to_image.tab(text_to_image.TextToImage(pipes), num_timesteps=10)
    assert parts["button"].value == "Generate"
    assert {fn.api_name for fn in demo.fns.values()} >= {"generate"}


def test_the_library_never_imports_gradio_and_the_app_imports_from_anywhere(tmp_path):
    code = (
        "import sys, zoo; zoo.build('ddpm-linear', tiny=True); assert 'gradio' not in sys.modules, 'gradio'\n"
        "from zoo.app import build_app; print(build_app.__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's zoo, run from another folder
    found = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert found.stdout.strip() == "zoo.app"


def test_launch_options_are_local_and_safe_by_default(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "ZOO_APP_SHARE"):
        monkeypatch.delenv(name, raising=False)
    options = launch_options()
    assert (options["server_name"], options["server_port"]) == ("127.0.0.1", None)  # gradio: 7860, or the next free
    assert options["share"] is False and options["allowed_paths"] == [] and options["max_file_size"]
    assert options["enable_monitoring"] is False and options["show_error"] is True
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("ZOO_APP_SHARE", "1")  # Colab: a share link, chosen by whoever runs it
    options = launch_options()
    assert (options["server_name"], options["server_port"], options["share"]) == ("0.0.0.0", 7999, True)


# -------------------------------------------------------------------------------------- the cache
def test_preloading_builds_the_default_pipeline_once():
    built = []
    pipes = cache.PipelineCache(tiny=True, loader=lambda name: built.append(name) or seeded_tiny(name))
    pipes.preload().join()
    assert built == [cache.DEFAULT_PIPELINE] and pipes.get(cache.DEFAULT_PIPELINE) is pipes.get("ldm-clip-kl")
    assert built == [cache.DEFAULT_PIPELINE]  # cached, not rebuilt


def test_only_offered_pipelines_are_served_unless_the_owner_opts_in(monkeypatch):
    monkeypatch.delenv(cache.PIPELINES_ENV, raising=False)
    pipes = cache.PipelineCache.from_env(tiny=True)
    registered = {name for name in cache.IMAGE_MODELS if name in zoo.available()}
    assert pipes.names() == list(cache.OFFERED)
    assert {*cache.SHIPPED, *cache.SWAP_PARTNERS, *cache.LOSS_STUDY, *registered} == set(cache.OFFERED)
    with pytest.raises(gr.Error, match="unknown pipeline 'ldm-clip-kl-f8'; choose one of: ldm-clip-kl"):
        pipes.get("ldm-clip-kl-f8")
    monkeypatch.setenv(cache.PIPELINES_ENV, "ldm-clip-kl-f8")
    assert "ldm-clip-kl-f8" in cache.PipelineCache.from_env(tiny=True).names()
    monkeypatch.setenv(cache.PIPELINES_ENV, "all")
    assert set(cache.PipelineCache.from_env(tiny=True).names()) == set(zoo.available())


def test_the_cache_is_bounded_by_memory_least_recently_used_first(monkeypatch):
    trims = []
    monkeypatch.setattr(cache, "trim_heap", lambda: trims.append(1))  # evicted memory goes back to the system
    pipes = cache.PipelineCache(tiny=True, loader=seeded_tiny, max_bytes=1)  # room for the newest only
    first = pipes.get("ddpm-linear")
    assert trims == []
    pipes.get("ddpm-cosine")
    assert pipes.cached() == ["ddpm-cosine"] and trims == [1] and pipes.get("ddpm-linear") is not first
    size = cache.pipeline_bytes(first)
    pipes = cache.PipelineCache(tiny=True, loader=seeded_tiny, max_bytes=2 * size)
    pipes.get("ddpm-linear"), pipes.get("ddpm-cosine"), pipes.get("ddpm-linear"), pipes.get("ldm-clip-kl")
    assert pipes.cached()[-1] == "ldm-clip-kl" and "ddpm-cosine" not in pipes.cached()


def test_a_hub_checkpoint_is_never_downloaded_on_request_unless_allowed(monkeypatch):
    loaded = []
    pipes = cache.PipelineCache(("ldm-clip-kl", "sd-v1-5"), loader=loaded.append)
    with pytest.raises(gr.Error, match="does not download on request; .*ZOO_APP_ALLOW_DOWNLOADS=1"):
        pipes.get("sd-v1-5")
    assert loaded == []
    allowed = cache.PipelineCache(("sd-v1-5",), loader=lambda name: loaded.append(name) or seeded_tiny("ddpm-linear"))
    allowed.allow_downloads = True
    allowed.get("sd-v1-5")
    assert loaded == ["sd-v1-5"]


def test_tiny_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(cache.TINY_ENV, "1")
    assert cache.PipelineCache.from_env().tiny
    monkeypatch.setenv(cache.TINY_ENV, "0")
    assert not cache.PipelineCache.from_env().tiny


# -------------------------------------------------------------------------------------- errors
def test_library_errors_and_our_own_bugs_become_messages():
    @guard.handler
    def raises(err):
        raise err

    with pytest.raises(gr.Error, match="steps must be an integer"):
        raises(ValueError("steps must be an integer in [1, 8]"))
    with pytest.raises(gr.Error, match="the server failed .ZeroDivisionError: boom."):
        raises(ZeroDivisionError("boom"))


def test_prompts_are_cut_at_a_word_boundary_with_one_notice():
    long = "a large red circle " * 30
    cut, notes = guard.clean_prompt(long)
    assert len(cut) <= guard.MAX_PROMPT_CHARS and long.startswith(cut) and long[len(cut)] == " "
    assert len(notes) == 1 and "word boundary" in notes[0]
    assert guard.clean_prompt("x" * 400)[0] == "x" * guard.MAX_PROMPT_CHARS  # one word: cut where it must be
    assert guard.clean_prompt("a \ud800 circle")[0] == "a ? circle"  # a lone surrogate cannot reach a tokenizer
    with pytest.raises(gr.Error, match="prompt must be text, got int"):
        guard.clean_prompt(12)


def test_huge_images_are_refused_from_their_header_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (10000, 10000)).save(path)  # a few KB on disk, 100 M pixels decoded
    with pytest.raises(gr.Error, match="10000x10000; images up to 4096x4096"):
        guard.open_image(str(path))
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(gr.Error, match="expected an image file"):
        guard.open_image(str(tmp_path / "not.png"))


def test_every_image_input_of_the_app_refuses_a_pixel_bomb_from_its_header(pipes, tmp_path, monkeypatch):
    """gradio's own preprocessing converts every upload and drawing at full size (even one the handler ignores):
    the app checks each file's header first, whether it comes as a path, a data URL or an editor's blob."""
    import base64
    import io

    from gradio.components.image_editor import EditorData, EditorDataBlobs
    from gradio.data_classes import FileData, ImageData
    from PIL import ImageFile

    bomb, buffer = tmp_path / "bomb.png", io.BytesIO()
    Image.new("L", (10000, 10000)).save(buffer, format="PNG")  # ~100 KB on disk, 100 M pixels
    bomb.write_bytes(buffer.getvalue())
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    demo = build_app(pipes)
    inputs = [b for b in demo.blocks.values() if isinstance(b, gr.Image | gr.ImageEditor)]  # outputs too: harmless
    editors = [b for b in inputs if isinstance(b, gr.ImageEditor)]
    assert len(inputs) >= 3 and editors  # two uploads and the sketchpad, at least
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("a pixel was decoded"))
    for block in inputs:
        if isinstance(block, gr.ImageEditor):
            block.blob_storage["blob"] = EditorDataBlobs(background=None, layers=[], composite=buffer.getvalue())
            payloads = [EditorData(composite=FileData(path=str(bomb))), EditorData(id="blob")]
        else:
            payloads = [ImageData(path=str(bomb), orig_name="bomb.png"), ImageData(url=url)]
        for payload in payloads:
            with pytest.raises(gr.Error, match="10000x10000; images up to 4096x4096"):
                block.preprocess(payload)
    assert editors[0].preprocess(None) is None  # nothing drawn is still nothing


# -------------------------------------------------------------------------------------- text to image
def test_generate_is_seeded_reports_progress_and_its_code_reproduces_it(text):
    calls = []
    args = ("ldm-clip-kl", "a red circle on a blue background", "", "ddim", STEPS, 3.0, 7, False, 2)
    images, frames, info, code, seed = text.generate(*args, progress=lambda p, **kw: calls.append(p))
    again, *_ = text.generate(*args, progress=quiet)
    other, *_ = text.generate(*args[:6], 8, False, 2, progress=quiet)
    assert seed == 7 and len(images) == 2 and images[0].size == (64, 64)  # native size: downloads are real pixels
    assert (pixels(images[0]) == pixels(again[0])).all() and (pixels(images[1]) == pixels(again[1])).all()
    assert (pixels(images[0]) != pixels(other[0])).any()
    assert calls == [(k, STEPS) for k in range(1, STEPS + 1)]
    assert [caption for _, caption in frames] == [f"step {k}/{STEPS}" for k in range(1, STEPS + 1)]
    assert display.RANDOM_WEIGHTS_NOTE in info
    namespace: dict = {}
    torch.manual_seed(0)
    exec(code, namespace)  # the shown call, run as is
    assert (pixels(namespace["result"][0]) == pixels(images[0])).all()


def test_the_trajectory_keeps_every_step_and_ends_on_the_image(pipes):
    for name in ("ldm-clip-kl", "ddpm-cosine"):
        pipe = pipes.get(name)
        trajectory = text_to_image.Trajectory(5)
        image = pipe.generate("", steps=5, seed=3, callback=trajectory)[0]
        assert [step for step, _, _ in trajectory.frames] == [0, 1, 2, 3, 4]
        last_x0 = display.to_images(pipe)(trajectory.frames[-1][2])[0]
        assert (pixels(last_x0) == pixels(image)).all()
    assert len(text_to_image.Trajectory(1000).keep) == text_to_image.MAX_FRAMES


def test_randomised_seed_is_returned_so_it_can_be_reused(text):
    images, _, _, _, seed = text.generate("ddpm-linear", "", "", "ddim", 1, 1.0, 0, True, 1, progress=quiet)
    again, *_ = text.generate("ddpm-linear", "", "", "ddim", 1, 1.0, seed, False, 1, progress=quiet)
    assert (pixels(images[0]) == pixels(again[0])).all()


def test_unknown_words_long_prompts_and_ignored_prompts_are_pointed_out(text):
    *_, info, _, _ = text.generate("ldm-clip-kl", "a zorglub circle", "", "ddim", 1, 3.0, 0, False, 1, progress=quiet)
    assert "unknown words" in info and "zorglub" in info
    long = "a large red circle " * 40
    *_, info, _, _ = text.generate("ldm-clip-kl", long, "", "ddim", 1, 3.0, 0, False, 1, progress=quiet)
    assert "cut at a word boundary" in info and "tokens: the rest is cut" in info and "'lar'" not in info
    *_, info, _, _ = text.generate("ddpm-cosine", "a red circle", "", "ddim", 1, 1.0, 0, False, 1, progress=quiet)
    assert "unconditional: the prompt is ignored" in info


def test_only_pipelines_that_take_a_prompt_are_offered_and_untrained_ones_are_marked(text):
    names = text.names()
    text_models = {"ldm-clip-kl", "ldm-clip-vq", "ldm-bert-kl", "ldm-bert-vq"}  # image models: their own tab
    assert set(names) == text_models | {"ddpm-cosine", "ddpm-linear", *cache.LOSS_STUDY}  # and unconditional ones
    assert all(label.endswith("(random weights)") for label, _ in text.choices())  # tiny: nothing is trained
    with pytest.raises(gr.Error, match="unknown pipeline 'ldm-seg-kl'"):
        text.generate("ldm-seg-kl", "", "", "ddim", 1, 1.0, 0, False, 1, progress=quiet)
    sampler, steps, guidance, prompt, _ = text.defaults("ddpm-cosine")
    assert (sampler, steps) == ("ddpm", 50) and guidance.interactive is False and prompt.interactive is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "ldm-nope"}, "unknown pipeline 'ldm-nope'; choose one of"),
        ({"steps": 0}, "steps must be an integer in [1, "),
        ({"steps": 10**9}, "steps must be an integer in [1, "),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"num_images": 17}, "num_images must be an integer in [1, 16]"),
        ({"seed": -1}, "seed must be an integer in [0,"),
        ({"sampler": "euler"}, "unknown sampler 'euler'"),
        ({"guidance_scale": 31.0}, "guidance_scale must be a number in [0, 30]"),
        ({"prompt": 12}, "prompt must be text, got int"),
    ],
)
def test_bad_generate_inputs_raise_the_librarys_clear_errors(text, change, message):
    kwargs = dict(name="ldm-clip-kl", prompt="", negative_prompt="", sampler="ddim", steps=1, guidance_scale=3.0)
    kwargs.update(seed=0, randomize_seed=False, num_images=1, progress=quiet)
    kwargs.update(change)
    with pytest.raises(gr.Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        text.generate(**kwargs)


# -------------------------------------------------------------------------------------- forward noise
def test_forward_noise_is_the_pipelines_closed_form(noise, pipes, example):
    t = noise.num_timesteps // 3
    x_t, strip, abar, log_snr, formula, code = noise.forward_noise(example, None, t, "linear", "pixel", 4)
    image = Image.fromarray(display.examples()[example]["image_uint8"])
    reference = pipes.get("ddpm-linear").forward_noise(image, t, seed=4)
    assert (pixels(x_t) == pixels(reference)).all()
    alpha_bar = pipes.get("ddpm-linear").schedule.alphas_cumprod[t - 1].item()
    assert f"**{alpha_bar**0.5:.4f}** x_0 + **{(1 - alpha_bar) ** 0.5:.4f}** eps" in formula
    clean, *_ = noise.forward_noise(example, None, 0, "cosine", "pixel", 4)
    assert (pixels(clean) == pixels(image)).all()  # t = 0 is x_0
    assert strip.size[1] > 2 * 64  # one row per schedule
    namespace = {"image": image}
    torch.manual_seed(0)
    exec(code, namespace)
    assert (pixels(namespace["picture"]) == pixels(x_t)).all()


def test_forward_noise_plots_both_schedules_with_a_marker(noise, pipes, example):
    T = noise.num_timesteps
    assert T == pipes.get("ddpm-cosine").num_timesteps  # the tab shows the pipelines' own T
    _, _, abar, log_snr, _, _ = noise.forward_noise(example, None, T // 2, "cosine", "pixel", 0)
    for name in forward_noise.SCHEDULE_CHOICES:
        curve = abar[abar.schedule == name]
        assert curve.t.iloc[0] == 1 and curve.t.iloc[-1] == T  # the paper's t = 1..T
        assert curve.t.is_monotonic_increasing and curve.value.is_monotonic_decreasing  # abar_t falls
        assert curve.value.iloc[0] > 0.99 and curve.value.iloc[-1] < 0.01
        snr = log_snr[log_snr.schedule == name]
        np.testing.assert_allclose(snr.value, np.log(curve.value / (1 - curve.value)), rtol=1e-9)
    assert set(abar[abar.schedule == "chosen t"].t) == {T // 2}
    first, _ = noise.initial_plots(T // 4)  # drawn when the page loads
    assert set(first[first.schedule == "chosen t"].t) == {T // 4}


def test_forward_noise_in_latent_space_encodes_noises_and_decodes(noise, pipes, example):
    clean, *_ = noise.forward_noise(example, None, 0, "linear", "latent", 0)
    pipe = pipes.get(forward_noise.LATENT_PIPELINE)
    image = Image.fromarray(display.examples()[example]["image_uint8"])
    assert (pixels(clean) == pixels(pipe.decode(pipe.encode(image))[0])).all()
    noisy, *_ = noise.forward_noise(example, None, noise.num_timesteps, "cosine", "latent", 0)
    assert (pixels(noisy) != pixels(clean)).any()


def test_uploads_of_any_mode_and_size_are_converted(noise, tmp_path):
    for mode in ("L", "RGBA", "P", "RGB"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (123, 45)).save(path)
        x_t, *_ = noise.forward_noise(forward_noise.UPLOAD, str(path), 10, "linear", "pixel", 0)
        assert x_t.size == (64, 64) and x_t.mode == "RGB"
    x_t, *_ = noise.forward_noise(forward_noise.UPLOAD, np.zeros((20, 30, 3), np.uint8), 10, "linear", "pixel", 0)
    assert x_t.size == (64, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("upload", None, 10, "linear", "pixel", 0), "pick a dataset example, or upload an image first"),
        (("upload", np.zeros((5000, 5000, 3), np.uint8), 10, "linear", "pixel", 0), "images up to 4096x4096"),
        (("upload", "/etc/passwd", 10, "linear", "pixel", 0), "expected an image file"),
        (("9: nothing", None, 10, "linear", "pixel", 0), "unknown image source"),
        ((None, None, 10**9, "linear", "pixel", 0), r"t must be an integer in \[0, "),
        ((None, None, 10, "quadratic", "pixel", 0), "unknown schedule 'quadratic'; choose one of: linear, cosine"),
        ((None, None, 10, "linear", "frequency", 0), "unknown space 'frequency'; choose one of: pixel, latent"),
        ((None, None, 10, "linear", "pixel", -3), r"seed must be an integer in \[0, "),
    ],
)
def test_bad_forward_noise_inputs_raise_clear_errors(noise, example, args, message):
    with pytest.raises(gr.Error, match=message):
        noise.forward_noise(args[0] or example, *args[1:])


# ------------------------------------------------------------------------------------------ the switch
def test_drawn_maps_are_snapped_to_the_palette():
    """Anti-aliased strokes (blends of two palette colours) snap to the nearer one; transparent is background."""
    canvas = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((64, 64, 192, 192), fill=(*shapes.SEG_PALETTE[1], 255))
    blurred = np.asarray(canvas.resize((97, 97), Image.Resampling.BILINEAR))  # soft, blended edges
    labels = conditioning.snap_map({"composite": blurred, "layers": [], "background": None}, 64)
    assert labels.shape == (64, 64) and set(np.unique(labels)) == {0, 1}
    assert labels[32, 32] == 1 and labels[0, 0] == 0
    with pytest.raises(gr.Error, match="draw a semantic map"):
        conditioning.snap_map({"composite": None}, 64)


def test_a_huge_drawing_is_refused_before_it_is_decoded(tmp_path):
    path = tmp_path / "drawing.png"
    Image.new("RGBA", (10000, 10000)).save(path)
    with pytest.raises(gr.Error, match="10000x10000"):
        conditioning.snap_map({"composite": str(path)}, 64)


def test_switch_keeps_the_seed_and_says_which_path_the_condition_took(switch, example):
    clip, _, path, clip_code = switch.switch("text (CLIP)", "a red circle", example, None, 1, STEPS, progress=quiet)
    again, _, _, _ = switch.switch("text (CLIP)", "a red circle", example, None, 1, STEPS, progress=quiet)
    _, _, none_path, none_code = switch.switch("none", "a red circle", example, None, 1, STEPS, progress=quiet)
    assert (pixels(clip) == pixels(again)).all()
    assert "cross-attention" in path and "unconditional" in none_path
    # The same pipeline and seed (so the same x_T); only the condition changes: the empty prompt, unguided.
    assert "generate('a red circle', steps=2, seed=1" in clip_code and "guidance_scale=3.0" in clip_code
    assert "generate('', steps=2, seed=1" in none_code and "guidance_scale=1.0" in none_code
    seg, used_map, seg_path, code = switch.switch("semantic map", "", example, None, 1, STEPS, progress=quiet)
    expected = conditioning.map_image(display.examples()[example]["semantic_map"])
    assert (pixels(used_map) == pixels(expected)).all() and "concatenated to z_t" in seg_path
    assert 'shapes.sample_item(0, seed=0, split="train")["semantic_map"]' in code


def test_switch_all_puts_every_path_side_by_side(switch, example):
    shown, summary = switch.switch_all("a red circle", example, None, 2, 1)
    assert [caption for _, caption in shown] == list(conditioning.SWITCH)
    assert all(image.size == (64, 64) for image, _ in shown) and "Same seed 2" in summary


def test_unused_inputs_are_greyed_out_per_path():
    prompt, map_source = conditioning.Conditioning.inputs_for("semantic map")
    assert prompt.interactive is False and map_source.interactive is True
    prompt, map_source = conditioning.Conditioning.inputs_for("text (BERT)")
    assert prompt.interactive is True and map_source.interactive is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("telepathy", "", None, None, 0, 1), "unknown conditioning 'telepathy'"),
        (("semantic map", "", conditioning.DRAWN, None, 0, 1), "draw a semantic map on the sketchpad first"),
        (("semantic map", "", "7: no such map", None, 0, 1), "unknown map source"),
        (("text (BERT)", "", None, None, 0, 0), "steps must be an integer"),
    ],
)
def test_bad_switch_inputs_raise_clear_errors(switch, example, args, message):
    with pytest.raises(gr.Error, match=message):
        switch.switch(args[0], args[1], args[2] or example, *args[3:], progress=quiet)


# ------------------------------------------------------------------------------------------- the zoo
def test_zoo_table_counts_what_the_pipelines_hold_without_building_them(pipes):
    table = zoo_tab.ZooTable(pipes).pipelines()
    assert list(table.pipeline) == list(pipes.names())
    for _, row in table.iterrows():
        pipe = pipes.get(row["pipeline"])
        total = sum(p.numel() for module in pipe.modules().values() for p in module.parameters())
        assert row["parameters"] == f"{total:,}"
        shape = getattr(pipe, "latent_shape", None)
        assert row["latent shape"] == ("x".join(map(str, shape)) if shape else "-")
    assert {"schedule", "sampler", "unet", "autoencoder", "conditioner"} <= set(
        zoo_tab.ZooTable(pipes).components().kind
    )


def test_sd_parameters_are_counted_on_the_meta_device():
    count, channels, factor = zoo_tab.part_facts("unet", zoo.recipe("sd-v1-5").unet, tiny=False)
    assert 850e6 < count < 870e6 and (channels, factor) == (0, 1)  # SD v1's U-Net: 860M parameters


def test_evaluation_figures_are_read_into_columns(tmp_path):
    assert set(zoo_tab.evaluation(None).values()) == {"not evaluated"}
    data = {"adherence_seen": {"all": 0.96}, "reconstruction": None, "bits_per_dim": 1.03, "seconds_per_image": 0.5}
    (tmp_path / "evaluation.json").write_text(json.dumps(data))
    figures = zoo_tab.evaluation(tmp_path)
    assert figures["all correct, seen pairs"] == "96%" and figures["autoencoder PSNR (dB)"] == "-"
    assert figures["unconditional samples read as drawings"] == "-"  # a text model has no such figure
    (tmp_path / "evaluation.json").write_text(json.dumps({"drawings": {"drawn": 0.875, "clean": 0.9}}))
    assert zoo_tab.evaluation(tmp_path)["unconditional samples read as drawings"] == "88%"
    assert figures["bits/dim"] == "1.03" and figures["s / image"] == "0.5"
    (tmp_path / "evaluation.json").write_text("{not json")
    assert set(zoo_tab.evaluation(tmp_path).values()) == {"unreadable evaluation.json"}


# ------------------------------------------------------------------------------------------ ZeroGPU
def test_gpu_work_is_wrapped_only_when_the_spaces_package_offers_it(monkeypatch):
    def work():
        return "done"

    wrapped = []
    fake = types.SimpleNamespace(GPU=lambda fn: wrapped.append(fn) or fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert guard.on_gpu(work) is work and wrapped == [work]
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace())  # our own spaces/ folder: no GPU
    assert guard.on_gpu(work) is work
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed
    assert guard.on_gpu(work) is work
