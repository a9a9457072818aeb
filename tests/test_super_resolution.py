"""Super-resolution by concatenation (`ldm-sr-kl`, LDM Sec. 4.4) on tiny parts: the low-res image reaches the
U-Net next to z_t, the noise augmentation's q(x_s|x_0) and class label, the zero-initialised warm start from a
text model, the evaluation measure, and every bad input's error."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo import evaluate
from zoo.assembly import IncompatiblePartsError
from zoo.data.shapes import pregenerate
from zoo.pipelines.base import to_pil
from zoo.pipelines.super_resolution import bicubic_upsampled, low_res_of, noised_low_res
from zoo.train import stages

STEPS = 2
AUGMENTED = {"noise_augmentation": 20, "unet": {"num_classes": 21}}  # levels 0..20 of the tiny T = 50


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_sr(**changes) -> zoo.Pipeline:
    torch.manual_seed(0)
    pipe = zoo.build("ldm-sr-kl", tiny=True, device="cpu", **changes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the output layers start at zero: perturb, so the prediction depends on the input
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return pipe


def a_low_res(seed: int = 0) -> torch.Tensor:
    """A dataset image downsampled to 16x16 (1, 3, 16, 16) in [-1, 1], as the model's input."""
    return low_res_of(pregenerate(1, seed=seed, split="heldout")["images"], 16)


class Spy:
    """Records the keyword arguments of every U-Net call."""

    def __init__(self, unet):
        self.calls, self.forward = [], unet.forward
        unet.forward = self

    def __call__(self, x_t, t, *args, **kwargs):
        self.calls.append(kwargs)
        return self.forward(x_t, t, *args, **kwargs)


# ----------------------------------------------------------------------------------------- the concat path
def test_the_low_res_image_is_concatenated_to_z_t_at_latent_resolution_with_the_empty_prompt():
    pipe = tiny_sr()
    assert pipe.unet.conv_in.in_channels == 4 + 3 and pipe.recipe.concat_image == "low_res"
    assert "16x16 low-res image concatenated to z_t" in pipe.conditioning
    spy, low = Spy(pipe.unet), a_low_res()
    pipe.generate(image=low, steps=STEPS, seed=0, num_images=2)
    empty, mask = pipe.conditioner([pipe.conditioner.empty_input()] * 2)
    assert len(spy.calls) == STEPS  # one U-Net call per step: no guidance
    for kwargs in spy.calls:
        torch.testing.assert_close(kwargs["concat"], low.expand(2, -1, -1, -1), atol=0, rtol=0)  # level 0: as given
        torch.testing.assert_close(kwargs["context"], empty, atol=0, rtol=0)
        assert torch.equal(kwargs["context_mask"], mask) and "class_labels" not in kwargs


def test_the_low_res_image_changes_the_result_and_a_seed_repeats_it():
    pipe = tiny_sr()
    first = np.asarray(pipe.generate(image=a_low_res(0), steps=STEPS, seed=3)[0], dtype=np.int16)
    again = np.asarray(pipe.generate(image=a_low_res(0), steps=STEPS, seed=3)[0], dtype=np.int16)
    other = np.asarray(pipe.generate(image=a_low_res(1), steps=STEPS, seed=3)[0], dtype=np.int16)
    assert first.shape == (64, 64, 3) and np.array_equal(first, again)
    assert np.abs(other - first).mean() > 0.5


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_every_sampler_upsamples_to_the_models_size(sampler):
    images = tiny_sr().generate(image=a_low_res(), steps=STEPS, seed=0, sampler=sampler, num_images=2)
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_a_low_res_image_of_another_size_is_resized_with_a_message():
    pipe = tiny_sr()
    spy = Spy(pipe.unet)
    big = to_pil(low_res_of(pregenerate(1, seed=0, split="heldout")["images"], 32))[0]
    with pytest.warns(UserWarning, match="image is 32x32: resized to 16x16"):
        assert pipe.generate(image=big, steps=1, seed=0)[0].size == (64, 64)
    assert spy.calls[0]["concat"].shape == (1, 3, 16, 16)


# ------------------------------------------------------------------------------------ noise augmentation
def test_the_low_res_noise_is_q_x_s_given_x_0_and_level_0_keeps_the_image():
    """DDPM Eq. 4 at the level s (0-based index s - 1): mean sqrt(alpha_bar) y, variance 1 - alpha_bar."""
    pipe = tiny_sr(**AUGMENTED)
    y = torch.full((4000, 3, 2, 2), 0.5)
    levels = torch.tensor([0, 1, 10, 20]).repeat(1000)
    x = noised_low_res(pipe.schedule, y, levels, torch.Generator().manual_seed(0))
    assert torch.equal(x[levels == 0], y[levels == 0])
    for s in (1, 10, 20):
        alpha_bar = float(pipe.schedule.alphas_cumprod[s - 1])
        chosen = x[levels == s]
        assert abs(float(chosen.mean()) - 0.5 * alpha_bar**0.5) < 4 * ((1 - alpha_bar) / chosen.numel()) ** 0.5
        assert abs(float(chosen.var()) / (1 - alpha_bar) - 1) < 0.1


def test_the_noise_level_goes_to_the_unet_as_a_class_label():
    pipe = tiny_sr(**AUGMENTED)
    assert pipe.unet.class_embedding.num_embeddings == 21
    spy, low = Spy(pipe.unet), a_low_res()
    pipe.generate(image=low, steps=1, seed=0, noise_level=20, num_images=2)
    pipe.generate(image=low, steps=1, seed=0)  # the default level: 0, the clean image
    noisy, clean = spy.calls
    assert noisy["class_labels"].tolist() == [20, 20] and clean["class_labels"].tolist() == [0]
    torch.testing.assert_close(clean["concat"], low, atol=0, rtol=0)
    assert (noisy["concat"][0] - low[0]).abs().mean() > 0.05
    assert (noisy["concat"][0] - noisy["concat"][1]).abs().mean() > 0.05  # each image noised on its own


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_augmentation": 20}, "noise_augmentation=20 needs a U-Net with num_classes=21"),
        ({"unet": {"num_classes": 5}}, "noise_augmentation=0 needs a U-Net with num_classes=None"),
        ({"noise_augmentation": 60, "unet": {"num_classes": 61}}, "whose T is 50: it must be at most T"),
    ],
)
def test_a_noise_augmentation_that_does_not_fit_the_unet_or_the_schedule_is_refused(changes, message):
    with pytest.raises(IncompatiblePartsError, match=message):
        zoo.build("ldm-sr-kl", tiny=True, device="cpu", **changes)


def test_noise_augmentation_is_refused_on_a_recipe_without_a_low_res_image():
    with pytest.raises(ValueError, match='noise_augmentation is for super-resolution \\(concat_image "low_res"\\)'):
        zoo.recipe("ldm-clip-kl").replace(noise_augmentation=10)


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, r"ldm-sr-kl upsamples a low-resolution image: pass image= \(a 16x16 RGB image\)"),
        ({"image": [1, 2, 3]}, TypeError, "image must be a PIL image, a path, a uint8 array or an image tensor"),
        ({"image": np.zeros((16, 16, 3), np.float64)}, ValueError, "an image array must be uint8 or uint16"),
        ({"image": torch.full((3, 16, 16), 2.0)}, ValueError, r"finite values in \[-1, 1\]"),
        ({"prompt": "a red circle"}, ValueError, "takes no prompt: tau = identity"),
        ({"negative_prompt": "blue"}, ValueError, "takes no negative_prompt"),
        ({"mask_image": np.zeros((16, 16), np.uint8)}, ValueError, "takes no mask_image"),
        ({"strength": 0.5}, ValueError, "takes no strength"),
        ({"guidance_scale": 3.0}, ValueError, "takes no guidance_scale"),
        ({"height": 128}, ValueError, "takes no height"),
        ({"noise_level": 3}, ValueError, "trained without noise augmentation"),
        ({"noise_level": -1}, ValueError, "noise_level"),
    ],
)
def test_bad_super_resolution_inputs_get_a_clear_error(kwargs, error, message):
    pipe = tiny_sr()
    spy = Spy(pipe.unet)
    kwargs = {"image": a_low_res(), **kwargs} if "image" not in kwargs and kwargs else kwargs
    with pytest.raises(error, match=message):
        pipe.generate(steps=1, seed=0, **kwargs)
    assert spy.calls == []  # refused before any sampling


def test_a_noise_level_above_the_trained_range_is_refused():
    with pytest.raises(
        ValueError, match=r"noise_level must be an integer in \[0, 20\] \(ldm-sr-kl's recipe noise_augmentation"
    ):
        tiny_sr(**AUGMENTED).generate(image=a_low_res(), steps=1, noise_level=21)


def test_a_huge_low_res_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(path)
    pipe = tiny_sr()

    def decode(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", decode)
    with pytest.raises(ValueError, match="5000x4000: over 16777216 pixels, refused before decoding"):
        pipe.generate(image=path, steps=1)


def test_noise_level_on_a_model_without_a_low_res_input_is_refused():
    with pytest.raises(ValueError, match="noise_level is for super-resolution models"):
        zoo.build("ldm-clip-kl", tiny=True, device="cpu").generate("a red circle", steps=1, noise_level=0)


# ----------------------------------------------------------------------------------------- the warm start
def randomised_text_model(**changes) -> zoo.Pipeline:
    text = zoo.build("ldm-clip-kl", tiny=True, device="cpu", **changes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in text.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return text


@pytest.mark.parametrize("augmented", [False, True])
def test_init_from_a_text_model_computes_what_it_computed_while_the_low_res_input_is_zero(tmp_path, augmented):
    """--init of a trained text model for ldm-sr-kl: the 3 new conv_in inputs (and the noise level's class
    embedding) start at zero, so the widened U-Net computes exactly the text model's output for the empty prompt
    (its unconditional branch) when the low-res input is zero, and the trained weights are all kept."""
    import json

    text = randomised_text_model()
    text.save_pretrained(tmp_path / "text")
    overrides = json.dumps(AUGMENTED) if augmented else ""
    args = SimpleNamespace(init=str(tmp_path / "text"), pipeline="ldm-sr-kl", overrides=overrides, objective=None)
    pipe = stages.build_for_training(args)
    assert pipe.recipe.name == "ldm-sr-kl" and pipe.recipe.concat_image == "low_res"
    assert (pipe.recipe.guidance_scale, pipe.recipe.cfg_dropout) == (1.0, 0.0)
    weight = pipe.unet.conv_in.weight
    assert weight.shape[1] == 7 and weight[:, 4:].abs().sum() == 0 and weight.requires_grad
    source = text.unet.state_dict()
    widened = pipe.unet.state_dict()
    for key, value in source.items():
        if key != "conv_in.weight":
            assert torch.equal(widened[key], value), key
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 40])
    context, mask = text.conditioner([text.conditioner.empty_input()] * 2)
    extra = {"class_labels": torch.tensor([0, 17])} if augmented else {}
    with torch.no_grad():
        expected = text.unet(x, t, context, context_mask=mask)
        got = pipe.unet(x, t, context, context_mask=mask, concat=torch.zeros(2, 3, 16, 16), **extra)
    assert expected.abs().mean() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_unet_from_a_text_model_widens_it_for_super_resolution(tmp_path):
    from zoo.train.__main__ import parser

    text = randomised_text_model()
    text.save_pretrained(tmp_path / "text")
    argv = ["diffusion", "--pipeline", "ldm-sr-kl", "--out", str(tmp_path / "o"), "--tiny"]
    argv += ["--autoencoder", str(tmp_path / "text" / "autoencoder")]
    argv += ["--conditioner", str(tmp_path / "text" / "conditioner"), "--unet-from", str(tmp_path / "text" / "unet")]
    pipe = stages.build_for_training(parser().parse_args(argv))
    torch.testing.assert_close(pipe.unet.conv_in.weight[:, :4], text.unet.conv_in.weight, atol=0, rtol=0)
    assert pipe.unet.conv_in.weight[:, 4:].abs().sum() == 0
    seg = zoo.build("ldm-seg-kl", tiny=True, device="cpu").unet  # wider conv_in than ldm-sr-kl's: not a widening
    seg.save_pretrained(tmp_path / "seg-unet")
    argv[argv.index("--unet-from") + 1] = str(tmp_path / "seg-unet")
    with pytest.raises(SystemExit, match="not the architecture"):
        stages.build_for_training(parser().parse_args(argv))


def test_a_training_batch_holds_the_downsampled_images_and_noise_levels():
    from zoo.train.conditioning import TrainingCondition

    pipe = tiny_sr(**AUGMENTED)
    pipe.conditioner.requires_grad_(False)  # frozen, as training has it: its tokens are cached
    data = pregenerate(8, seed=0, uint8=True)
    condition = TrainingCondition(pipe, data, torch.device("cpu"), dropout=0.5)
    assert len(condition.cache[2]) == 1  # the empty prompt's tokens only, never a caption
    idx = torch.tensor([0, 3, 5, 7])
    batch = condition.batch(idx, torch.Generator().manual_seed(0))
    empty, _ = pipe.conditioner([pipe.conditioner.empty_input()])
    torch.testing.assert_close(batch["context"], empty.expand(4, -1, -1), atol=0, rtol=0)
    levels = batch["class_labels"]
    assert batch["concat"].shape == (4, 3, 16, 16) and ((levels >= 0) & (levels <= 20)).all()
    low = low_res_of(data["images"][idx].float() / 127.5 - 1, 16)
    clean = levels == 0
    torch.testing.assert_close(batch["concat"][clean], low[clean], atol=0, rtol=0)
    many = condition.batch(torch.arange(8).repeat(50), torch.Generator().manual_seed(1))["class_labels"]
    assert set(many.tolist()) == set(range(21))  # uniform over 0..20: every level drawn in 400 draws


# ----------------------------------------------------------------------------------------- the evaluation
class Upsampler:
    """A stand-in super-resolution pipeline: bicubic interpolation, or (oracle) the held-out ground truth."""

    def __init__(self, oracle: bool):
        self.recipe = SimpleNamespace(concat_image="low_res", image_size=64, name="stand-in")
        self.latent_shape, self.oracle = (4, 16, 16), oracle
        self.truth = pregenerate(4, seed=evaluate.SR_SEED, split="heldout")["images"]

    def generate(self, *, image, seed, **settings):
        return to_pil(self.truth[seed : seed + 1] if self.oracle else bicubic_upsampled(image, 64))

    def encode(self, x):  # a perfect autoencoder
        return x

    def decode(self, z):
        return to_pil(z)


def test_the_super_resolution_measure_scores_bicubic_as_bicubic_and_the_truth_as_perfect():
    bicubic = evaluate.super_resolution(Upsampler(oracle=False), 4)
    assert bicubic["psnr_db"] == bicubic["psnr_bicubic_db"] and 15 < bicubic["psnr_db"] < 40
    assert bicubic["model"] == bicubic["bicubic"] and bicubic["model"]["count"] == 4
    perfect = evaluate.super_resolution(Upsampler(oracle=True), 4)
    assert perfect["psnr_db"] > 100 and perfect["model"]["all"] == 1.0 and perfect["psnr_autoencoder_db"] > 100
    assert perfect["autoencoder"]["all"] == 1.0
    assert evaluate.super_resolution(zoo.build("ldm-clip-kl", tiny=True, device="cpu"), 2) is None


def test_the_super_resolution_measure_runs_on_the_pipeline_and_its_table_shows_it():
    pipe = tiny_sr()
    assert evaluate.condition_kind(pipe) == "low_res"
    settings = evaluate.sampler_settings(pipe, "ddim", 2, None)
    assert settings == {"sampler": "ddim", "steps": 2}  # no guidance
    sr = evaluate.super_resolution(pipe, 2, **settings)
    assert sr["model"]["count"] == 2 and np.isfinite(sr["psnr_db"]) and 0 <= sr["model"]["shape"] <= 1
    assert np.isfinite(sr["psnr_autoencoder_db"])
    seconds = evaluate.seconds_per_image(pipe, repeats=1, **settings)
    timing = {"reference": "ldm-clip-kl", "reference_seconds": 2 * seconds, "ratio": 0.5}
    entry = {**settings, "super_resolution": sr, "time_vs_plain": timing, "seconds_per_image": seconds}
    text = evaluate.table({"pipeline": "ldm-sr-kl", "weights": "random", "threads": 1, "by_sampler": [entry]})
    assert "super-resolution PSNR, held-out images (n=2)" in text and "0.50x ldm-clip-kl's" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the measure feeds the model its own size: nothing resized
        evaluate.super_resolution(pipe, 1, **settings)


def test_the_recipe_and_the_pipeline_agree_on_the_low_res_channels():
    from zoo import catalog
    from zoo.pipelines import super_resolution

    assert catalog.LOW_RES_CHANNELS == super_resolution.LOW_RES_CHANNELS == 3  # the catalog sits below pipelines


def test_the_benchmarks_feed_a_super_resolution_model_its_low_res_image():
    from zoo import bench

    pipe = tiny_sr()
    kwargs = bench.generate_kwargs(pipe)
    assert set(kwargs) == {"image"} and kwargs["image"].shape == (1, 3, 16, 16)
    assert pipe.generate(**kwargs, steps=1)[0].size == (64, 64)


def test_python_m_zoo_evaluate_reports_super_resolution_against_bicubic_and_the_time(tmp_path, capsys):
    tiny_sr().save_pretrained(tmp_path / "sr")
    evaluate.main(["ldm-sr-kl", "--weights", str(tmp_path / "sr"), "--prompts", "2", "--steps", "2", "--threads", "1"])
    out = capsys.readouterr().out
    for row in (
        "ddpm 2: super-resolution PSNR, held-out images (n=2) | model ",
        "ddpm 2: bicubic read by the analyser | shape ",
        "the autoencoder's round trip D(E(x))",
        "ddpm 2: time per image vs plain generation at the same steps | ",
    ):
        assert row in out, out
    assert "seen pairs" not in out and "CLIP zero-shot" not in out  # no prompts: nothing text-to-image measured
