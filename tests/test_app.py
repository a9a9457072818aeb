"""The app without a server: each tab's builder, and the service's functions on tiny pipelines."""

from __future__ import annotations

import json
import sys
import types

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import app
import zoo
from zoo import service as zs
from zoo.data import shapes

STEPS = 2


def seeded_tiny(name: str):
    """Tiny parts, initialised from torch seed 0: the same weights every time they are built."""
    torch.manual_seed(0)
    return zs.build_pipeline(name, tiny=True)


@pytest.fixture(scope="module")
def service() -> zs.ZooService:
    return zs.ZooService(seeded_tiny, tiny=True)


@pytest.fixture(scope="module")
def example() -> str:
    return next(iter(zs.examples()))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------------ builders
def test_every_tab_builds_without_a_server_and_names_its_endpoints(service):
    demo = app.build_app(service)
    assert isinstance(demo, gr.Blocks)
    named = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert named == {"generate", "forward_noise", "switch", "switch_all", "zoo_table", "components"}
    assert all(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")


def test_a_tab_builder_takes_its_inference_function_injected():
    calls = []
    with gr.Blocks():
        parts = app.text_to_image_tab(
            lambda *args: calls.append(args),
            names_fn=lambda every: ["a", "b"],
            defaults_fn=lambda name: ("ddpm", 7, 2.0),
        )
    assert parts["button"].value == "Generate"
    with gr.Blocks() as demo:
        app.zoo_tab(lambda every: calls.append(every), lambda: None)
    assert {fn.api_name for fn in demo.fns.values()} >= {"zoo_table", "components"}


def test_launch_options_are_local_and_safe_by_default(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    options = app.launch_options()
    assert (options["server_name"], options["server_port"]) == ("127.0.0.1", 7860)
    assert options["share"] is False and options["allowed_paths"] == [] and options["max_file_size"]
    assert options["enable_monitoring"] is False
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert (app.launch_options()["server_name"], app.launch_options()["server_port"]) == ("0.0.0.0", 7999)


def test_preloading_builds_the_default_pipeline_once():
    built = []
    service = zs.ZooService(lambda name: built.append(name) or seeded_tiny(name), tiny=True)
    service.preload().join()
    assert built == [zs.DEFAULT_PIPELINE] and service.pipeline(zs.DEFAULT_PIPELINE) is service.pipeline("ldm-clip-kl")
    assert built == [zs.DEFAULT_PIPELINE]  # cached, not rebuilt


def test_tiny_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(zs.TINY_ENV, "1")
    assert zs.ZooService.from_env().tiny
    monkeypatch.setenv(zs.TINY_ENV, "0")
    assert not zs.ZooService.from_env().tiny


# -------------------------------------------------------------------------------------- text to image
def test_generate_is_seeded_reports_progress_and_its_code_reproduces_it(service):
    calls = []
    args = ("ldm-clip-kl", "a red circle on a blue background", "", "ddim", STEPS, 3.0, 7, False, 2)
    images, frames, info, code, seed = service.generate(*args, progress=lambda p, **kw: calls.append(p))
    again, *_ = service.generate(*args, progress=lambda p, **kw: None)
    other, *_ = service.generate(*args[:6], 8, False, 2, progress=lambda p, **kw: None)
    assert seed == 7 and len(images) == 2 and images[0].size == (64, 64)
    assert (pixels(images[0]) == pixels(again[0])).all() and (pixels(images[1]) == pixels(again[1])).all()
    assert (pixels(images[0]) != pixels(other[0])).any()
    assert calls == [(k, STEPS) for k in range(1, STEPS + 1)]
    assert [caption for _, caption in frames] == [f"step {k}/{STEPS}" for k in range(1, STEPS + 1)]
    assert "random weights: not trained yet" in info
    namespace: dict = {}
    torch.manual_seed(0)
    exec(code, namespace)  # the shown call, run as is
    assert (pixels(namespace["result"][0]) == pixels(images[0])).all()


def test_the_trajectory_ends_on_the_image_it_returns(service):
    """The predicted x_0 of the last step, decoded, is the sample itself (latent and pixel pipelines)."""
    for name in ("ldm-clip-kl", "ddpm-cosine"):
        pipe = service.pipeline(name)
        trajectory = zs.Trajectory(5, None, frames=3)
        image = pipe.generate("", steps=5, seed=3, callback=trajectory)[0]
        assert [step for step, _, _ in trajectory.frames] == [0, 2, 4]
        last_x0 = zs.decoder(pipe)(trajectory.frames[-1][2])[0]
        assert (pixels(last_x0) == pixels(image)).all()


def test_randomised_seed_is_returned_so_it_can_be_reused(service):
    images, _, _, _, seed = service.generate("ddpm-linear", "", "", "ddim", 1, 1.0, 0, True, 1)
    again, *_ = service.generate("ddpm-linear", "", "", "ddim", 1, 1.0, seed, False, 1)
    assert (pixels(images[0]) == pixels(again[0])).all()


def test_unknown_words_long_prompts_and_ignored_prompts_are_pointed_out(service):
    *_, info, _, _ = service.generate("ldm-clip-kl", "a zorglub circle", "", "ddim", 1, 3.0, 0, False, 1)
    assert "unknown words" in info and "zorglub" in info
    long = "a red circle " * 40
    *_, info, code, _ = service.generate("ldm-clip-kl", long, "", "ddim", 1, 3.0, 0, False, 1)
    assert f"cut to its first {zs.MAX_PROMPT_CHARS} characters" in info and "tokens: the rest is cut" in info
    *_, info, _, _ = service.generate("ddpm-cosine", "a red circle", "", "ddim", 1, 1.0, 0, False, 1)
    assert "unconditional: the prompt is ignored" in info


def test_a_map_conditioned_pipeline_gets_a_map_in_the_first_tab(service):
    images, _, info, _, _ = service.generate("ldm-seg-kl", "", "", "ddim", 1, 1.0, 0, False, 1)
    assert images[0].size == (64, 64) and "semantic map" in info


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "ldm-nope"}, "unknown pipeline 'ldm-nope'; choose one of"),
        ({"steps": 0}, "steps must be a whole number in [1, "),
        ({"steps": 10**9}, "steps must be a whole number in [1, "),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": "3"}, "steps must be a whole number"),
        ({"num_images": 5}, f"number of images must be a whole number in [1, {zs.MAX_UI_IMAGES}]"),
        ({"seed": -1}, "seed must be a whole number in [0,"),
        ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of: ddim, ddpm, dpmpp"),
        ({"guidance_scale": 31.0}, "guidance scale must be a number in [0, 30]"),
        ({"prompt": 12}, "prompt must be text, got int"),
    ],
)
def test_bad_generate_inputs_raise_clear_errors(service, change, message):
    kwargs = dict(name="ldm-clip-kl", prompt="", negative_prompt="", sampler="ddim", steps=1, guidance_scale=1.0)
    kwargs.update(seed=0, randomize_seed=False, num_images=1)
    kwargs.update(change)
    with pytest.raises(gr.Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        service.generate(**kwargs)


# -------------------------------------------------------------------------------------- forward noise
def test_forward_noise_matches_the_pipeline_and_ddpm_eq4(service, example):
    t = service.num_timesteps // 3
    x_t, strip, abar, log_snr, formula, code = service.forward_noise(example, None, t, "linear", "pixel", 4)
    image = Image.fromarray(zs.examples()[example]["image_uint8"])
    reference = zoo.build("ddpm-linear", tiny=True).forward_noise(image, t, seed=4)
    assert (pixels(x_t) == pixels(reference)).all()
    alpha_bar = service.schedule("linear").alphas_cumprod[t - 1].item()
    assert f"**{alpha_bar**0.5:.4f}** x_0 + **{(1 - alpha_bar) ** 0.5:.4f}** eps" in formula
    clean, *_ = service.forward_noise(example, None, 0, "cosine", "pixel", 4)
    assert (pixels(clean) == pixels(image)).all()  # t = 0 is x_0
    assert strip.size[1] > 2 * 64  # one row per schedule
    namespace = {"image": image}
    exec(code, namespace)
    assert (pixels(namespace["picture"]) == pixels(x_t)).all()


def test_forward_noise_plots_both_schedules_with_a_marker(service, example):
    T = service.num_timesteps
    assert T == service.pipeline("ddpm-cosine").num_timesteps  # the tab shows the pipelines' own T
    _, _, abar, log_snr, _, _ = service.forward_noise(example, None, T // 2, "cosine", "pixel", 0)
    for name in zs.SCHEDULE_CHOICES:
        curve = abar[abar.schedule == name]
        assert curve.t.is_monotonic_increasing and curve.value.is_monotonic_decreasing  # abar_t falls
        assert curve.value.iloc[0] > 0.99 and curve.value.iloc[-1] < 0.01
        snr = log_snr[log_snr.schedule == name]
        np.testing.assert_allclose(snr.value, np.log(curve.value / (1 - curve.value)), rtol=1e-9)
    assert set(abar[abar.schedule == "chosen t"].t) == {T // 2}


def test_forward_noise_in_latent_space_encodes_noises_and_decodes(service, example):
    clean, *_ = service.forward_noise(example, None, 0, "linear", "latent", 0)
    pipe = service.pipeline(zs.LATENT_PIPELINE)
    image = Image.fromarray(zs.examples()[example]["image_uint8"])
    assert (pixels(clean) == pixels(pipe.decode(pipe.encode(image))[0])).all()
    noisy, *_ = service.forward_noise(example, None, service.num_timesteps, "linear", "latent", 0)
    assert (pixels(noisy) != pixels(clean)).any()


def test_uploads_of_any_mode_and_size_are_converted(service):
    for mode in ("L", "RGBA", "P", "RGB"):
        upload = Image.new(mode, (123, 45))
        x_t, *_ = service.forward_noise(zs.UPLOAD, upload, 10, "linear", "pixel", 0)
        assert x_t.size == (64, 64) and x_t.mode == "RGB"
    x_t, *_ = service.forward_noise(zs.UPLOAD, np.zeros((20, 30, 3), np.uint8), 10, "linear", "pixel", 0)
    assert x_t.size == (64, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((zs.UPLOAD, None, 10, "linear", "pixel", 0), "pick a dataset example, or upload an image first"),
        ((zs.UPLOAD, Image.new("RGB", (5000, 5000)), 10, "linear", "pixel", 0), "images up to 4096x4096"),
        ((zs.UPLOAD, "/etc/passwd", 10, "linear", "pixel", 0), "expected an image"),
        (("9: nothing", None, 10, "linear", "pixel", 0), "unknown image source"),
        ((None, None, 10**9, "linear", "pixel", 0), r"t must be a whole number in \[0, "),
        ((None, None, 10, "quadratic", "pixel", 0), "unknown schedule 'quadratic'; choose one of: linear, cosine"),
        ((None, None, 10, "linear", "frequency", 0), "unknown space 'frequency'; choose one of: pixel, latent"),
    ],
)
def test_bad_forward_noise_inputs_raise_clear_errors(service, example, args, message):
    args = (args[0] or example, *args[1:])
    with pytest.raises(gr.Error, match=message):
        service.forward_noise(*args)


# ------------------------------------------------------------------------------------------ the switch
def test_drawn_maps_are_snapped_to_the_palette():
    """Anti-aliased strokes (blends of two palette colours) snap to the nearer one; transparent is background."""
    canvas = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((64, 64, 192, 192), fill=(*shapes.SEG_PALETTE[1], 255))
    blurred = np.asarray(canvas.resize((97, 97), Image.Resampling.BILINEAR))  # soft, blended edges
    labels = zs.snap_map({"composite": blurred, "layers": [], "background": None}, 64)
    assert labels.shape == (64, 64) and set(np.unique(labels)) == {0, 1}
    assert labels[32, 32] == 1 and labels[0, 0] == 0
    with pytest.raises(gr.Error, match="draw a semantic map"):
        zs.snap_map({"composite": None}, 64)


def test_switch_keeps_the_seed_and_says_which_path_the_condition_took(service, example):
    clip, _, path, clip_code = service.switch("text (CLIP)", "a red circle", example, None, 1, STEPS)
    again, _, _, _ = service.switch("text (CLIP)", "a red circle", example, None, 1, STEPS)
    _, _, none_path, none_code = service.switch("none", "a red circle", example, None, 1, STEPS)
    assert (pixels(clip) == pixels(again)).all()
    assert "cross-attention" in path and "unconditional" in none_path
    # The same pipeline and seed (so the same x_T); only the condition changes: the empty prompt, unguided.
    assert "generate('a red circle', steps=2, seed=1" in clip_code and "guidance_scale=3.0" in clip_code
    assert "generate('', steps=2, seed=1" in none_code and "guidance_scale=1.0" in none_code
    seg, used_map, seg_path, code = service.switch("semantic map", "", example, None, 1, STEPS)
    expected = zs.map_image(zs.examples()[example]["semantic_map"])
    assert (pixels(used_map) == pixels(expected)).all() and "concatenated to z_t" in seg_path
    assert 'shapes.sample_item(0, seed=0, split="train")["semantic_map"]' in code


def test_switch_all_puts_every_path_side_by_side(service, example):
    shown, summary = service.switch_all("a red circle", example, None, 2, 1)
    assert [caption.split(":")[0] for _, caption in shown] == list(zs.SWITCH)
    assert all(image.size == (64, 64) for image, _ in shown) and "Same seed 2" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("telepathy", "", None, None, 0, 1), "unknown conditioning 'telepathy'"),
        (("semantic map", "", zs.DRAWN, None, 0, 1), "draw a semantic map on the sketchpad first"),
        (("semantic map", "", "7: no such map", None, 0, 1), "unknown map source"),
        (("text (BERT)", "", None, None, 0, 0), "steps must be a whole number"),
    ],
)
def test_bad_switch_inputs_raise_clear_errors(service, example, args, message):
    args = (args[0], args[1], args[2] or example, *args[3:])
    with pytest.raises(gr.Error, match=message):
        service.switch(*args)


# ------------------------------------------------------------------------------------------- the zoo
def test_zoo_table_counts_what_the_pipelines_hold(service):
    table = service.zoo_table()
    assert list(table.pipeline) == list(service.shipped)
    for _, row in table.iterrows():
        pipe = service.pipeline(row["pipeline"])
        total = sum(p.numel() for module in pipe.modules().values() for p in module.parameters())
        assert row["parameters"] == f"{total:,}"
        shape = getattr(pipe, "latent_shape", None)
        assert row["latent shape"] == ("x".join(map(str, shape)) if shape else "-")
        assert row["evaluation"] == "not evaluated" or "=" in row["evaluation"]
    assert {"schedule", "sampler", "unet", "autoencoder", "conditioner"} <= set(service.components_table().kind)


def test_evaluation_figures_are_read_from_the_weights_folder(tmp_path):
    assert zs.evaluation_summary(None) == "not evaluated"
    assert zs.evaluation_summary(tmp_path) == "not evaluated"
    (tmp_path / "metrics.json").write_text(json.dumps({"fid": 12.5, "clip": {"score": 0.31}, "note": "x"}))
    assert zs.evaluation_summary(tmp_path) == "fid=12.5, clip.score=0.31"
    (tmp_path / "evaluation.json").write_text("{not json")
    assert zs.evaluation_summary(tmp_path) == "unreadable evaluation.json"


# ------------------------------------------------------------------------------------------ ZeroGPU
def test_gpu_work_is_wrapped_only_when_the_spaces_package_offers_it(monkeypatch):
    def work():
        return "done"

    wrapped = []
    fake = types.SimpleNamespace(GPU=lambda fn: wrapped.append(fn) or fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert zs.on_gpu(work) is work and wrapped == [work]
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace())  # our own spaces/ folder: no GPU
    assert zs.on_gpu(work) is work
    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed
    assert zs.on_gpu(work) is work


def test_random_weights_are_said_in_words(service):
    assert zs.RANDOM_WEIGHTS_NOTE in service.markdown(service.pipeline("ddpm-linear"), [])
