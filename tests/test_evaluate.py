"""The evaluator (zoo/evaluate.py) as a measuring instrument: strict shape reading, the clean share, same-seed
agreement between samplers, the conditioner's kind, and one end-to-end run over all three samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo import evaluate
from zoo.data.analyser import analyse, clean_fraction
from zoo.data.shapes import PALETTE, Attributes, parse_caption, pregenerate, render


def canvas(box: tuple[int, int, int, int], colour: str = "red", background: str = "blue") -> np.ndarray:
    """A uint8 (64, 64, 3) image: one axis-aligned rectangle (y0, y1, x0, x1) of `colour` on `background`."""
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = PALETTE[background]
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1] = PALETTE[colour]
    return image


def test_a_dataset_shape_is_read_right_with_a_tight_template_fit():
    for shape in ("circle", "square", "triangle"):
        image = render(Attributes(shape, "red", "blue", "small", "top left"))[0]
        judged = evaluate.judge(image, {"shape": shape, "colour": "red", "position": "top left"})
        assert all(judged["right"].values()), (shape, judged)
        assert judged["iou"] >= 0.93 and judged["clean"] >= 0.97


def test_a_wobbly_square_that_the_lenient_reading_accepts_is_not_counted():
    image = canvas((20, 34, 20, 39))  # 19 x 14: the analyser's best template is the square, IoU 0.79 < 0.85
    assert analyse(image).shape == "square"
    judged = evaluate.judge(image, {"shape": "square", "colour": "red"})
    assert judged["right"] == {"shape": False, "colour": True}
    assert 0.75 < judged["iou"] < evaluate.SHAPE_IOU


def test_clean_share_separates_palette_images_from_textures():
    data = pregenerate(32, seed=3, split="all", uint8=True)["images"]
    shares = [clean_fraction(image.permute(1, 2, 0).numpy()) for image in data]
    assert min(shares) >= 0.96
    texture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert clean_fraction(texture) < 0.2
    blurred = Image.fromarray(canvas((10, 50, 10, 50))).resize((8, 8)).resize((64, 64), Image.BILINEAR)
    assert clean_fraction(blurred) < clean_fraction(canvas((10, 50, 10, 50))) - 0.1


def test_agreement_counts_same_layouts_only():
    a = [canvas((10, 26, 10, 26)), canvas((36, 52, 36, 52)), canvas((10, 26, 10, 26), colour="green")]
    same = [x.copy() for x in a]
    moved = [canvas((36, 52, 36, 52)), canvas((37, 53, 36, 52)), canvas((10, 26, 10, 26), colour="yellow")]
    assert evaluate.agreement(a, same) == 1.0
    assert evaluate.agreement(a, moved) == pytest.approx(1 / 3)  # a one-pixel shift still agrees; colour does not


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ldm-clip-kl", "text"), ("ldm-bert-vq", "text"), ("ldm-class-kl", "class"), ("ldm-seg-kl", "seg")],
)
def test_condition_kind_comes_from_the_conditioner_kind(name, kind):
    pipe = zoo.build(name, tiny=True, pretrained=False, device="cpu")
    assert evaluate.condition_kind(pipe) == kind
    todo = evaluate.jobs(pipe, "seen", 3)
    assert evaluate.splits(pipe) == (("seen",) if kind == "class" else ("seen", "heldout"))
    if kind == "class":  # integer labels, as the class conditioner takes them
        assert all(isinstance(kwargs["prompt"], int) and set(wanted) == {"shape", "colour"} for kwargs, wanted in todo)
    assert evaluate.condition_kind(zoo.build("ddpm-cosine", tiny=True, pretrained=False, device="cpu")) is None


def test_every_sampler_is_measured_and_ddim_and_dpmpp_are_compared(monkeypatch):
    torch.set_num_threads(1)
    for slow in ("reconstruction", "clip_zero_shot"):  # measured on their own, not here
        monkeypatch.setattr(evaluate, slow, lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "seconds_per_image", lambda pipe, **settings: 0.5)
    result = evaluate.evaluate("ldm-clip-kl", prompts=2, steps=2, all_samplers=True)
    assert [e["sampler"] for e in result["by_sampler"]] == ["dpmpp", "ddpm", "ddim"]  # the recipe's default first
    assert result["sampler"] == "dpmpp" and result["adherence_seen"] == result["by_sampler"][0]["adherence_seen"]
    for entry in result["by_sampler"]:
        for split in ("seen", "heldout"):
            table = entry[f"adherence_{split}"]
            assert table["count"] == 2 and 0 <= table["template_iou"] <= 1 and 0 <= table["clean"] <= 1
    assert set(result["ddim_dpmpp_agreement"]) == {"seen", "heldout"}
    text = evaluate.table(result)
    assert "dpmpp 2: seen pairs (n=2)" in text and "template_iou" in text and "same-seed agreement" in text


def test_an_unconditional_model_is_read_as_drawings():
    """The dataset's own images are all drawings, noise and a plain field none; one colour everywhere is read as
    a background with no shape (not a drawing) though every pixel is on the palette."""
    images = pregenerate(8, seed=3)["images"]
    dataset = evaluate.drawings_of(list(images))
    assert dataset["drawn"] == 1.0 and dataset["count"] == 8 and dataset["template_iou"] >= 0.96
    assert dataset["clean"] >= 0.97
    noise = evaluate.drawings_of(list(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1))
    assert noise["drawn"] == 0.0 and noise["clean"] < 0.2
    plain = evaluate.drawings_of([np.full((64, 64, 3), PALETTE["blue"], dtype=np.uint8)])
    assert plain["drawn"] == 0.0 and plain["clean"] == 1.0


def test_an_unconditional_pipeline_is_measured_with_every_sampler(monkeypatch):
    torch.set_num_threads(1)
    for slow in ("reconstruction", "bits_per_dim"):
        monkeypatch.setattr(evaluate, slow, lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "seconds_per_image", lambda pipe, **settings: 0.5)
    result = evaluate.evaluate("ddpm-cosine", prompts=2, steps=2, all_samplers=True)
    assert [e["sampler"] for e in result["by_sampler"]] == ["ddpm", "ddim", "dpmpp"]
    assert all(e["drawings"]["count"] == 2 for e in result["by_sampler"])
    assert result["drawings"] == result["by_sampler"][0]["drawings"] and result["adherence_seen"] is None
    assert set(result["ddim_dpmpp_agreement"]) == {"unconditional"}
    assert "ddim 2: unconditional samples (n=2)" in evaluate.table(result)


class PerfectInpainter:
    """Draws the captioned shape exactly inside the mask and keeps the rest: what the inpainting measure should
    score 100% with the input kept (or, with `paint=False`, returns the input: no shape drawn)."""

    def __init__(self, paint: bool = True):
        from types import SimpleNamespace

        self.conditioner, self.paint = SimpleNamespace(kind="text"), paint
        self.pictures = {}
        for caption, wanted in evaluate.eval_prompts("seen", n=4, seed=0):
            full = Attributes(wanted.shape, wanted.colour, wanted.background, wanted.size or "large",
                              wanted.position or "center")  # fmt: skip
            self.pictures[caption] = render(full)[0]

    def generate(self, caption, *, image, mask_image, seed, **settings):
        kept = ((image.permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.uint8)
        inside = mask_image.numpy().astype(bool)[..., None]
        return [Image.fromarray(np.where(inside & self.paint, self.pictures[caption], kept))]


def test_the_inpainting_measure_reads_the_shape_inside_the_mask_and_psnr_outside():
    perfect = evaluate.inpainting(PerfectInpainter(), "seen", 4)
    assert perfect["shape"] == perfect["colour"] == perfect["background"] == 1.0 and perfect["count"] == 4
    assert perfect["psnr_outside_db"] > 60  # the input kept exactly outside the mask
    lazy = evaluate.inpainting(PerfectInpainter(paint=False), "seen", 4)
    assert lazy["shape"] == 0.0 and lazy["psnr_outside_db"] > 60
    assert evaluate.inpainting(zoo.build("ddpm-linear", tiny=True, device="cpu"), "seen", 2) is None  # no text


def test_the_inpainting_measure_runs_on_a_trained_by_concatenation_pipeline():
    pipe = zoo.build("ldm-inpaint-kl", tiny=True, device="cpu")
    result = evaluate.inpainting(pipe, "seen", 2, steps=2)
    assert result["count"] == 2 and 0 <= result["shape"] <= 1 and np.isfinite(result["psnr_outside_db"])


def test_inpainting_compares_the_blended_step_with_repaint_and_the_trained_model_alone():
    torch.set_num_threads(1)
    settings = {"sampler": "ddim", "steps": 2, "guidance_scale": 1.0}
    free = evaluate.inpainting_methods(zoo.build("ldm-clip-kl", tiny=True, device="cpu"), 2, settings, 1, 2)
    assert free["inpainting"]["method"] == "blended step, ddim"
    assert free["inpainting_repaint"]["method"] == "RePaint j=1 r=2, ddpm" and free["inpainting_repaint"]["count"] == 2
    trained = evaluate.inpainting_methods(zoo.build("ldm-inpaint-kl", tiny=True, device="cpu"), 2, settings)
    assert trained["inpainting"]["method"] == "trained, by concatenation" and "inpainting_repaint" not in trained
    entry = {"sampler": "ddim", "steps": 2, "seconds_per_image": 0.1}
    text = evaluate.table({"pipeline": "p", "weights": "random", "threads": 1, "by_sampler": [entry], **free})
    assert "| inpainting (blended step, ddim), seen pairs (n=2) |" in text
    assert "| inpainting (RePaint j=1 r=2, ddpm), seen pairs (n=2) |" in text and "PSNR outside the mask" in text


def test_an_inpainting_model_is_measured_on_inpainting_not_on_plain_prompts(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(evaluate, "reconstruction", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "clip_zero_shot", lambda *args, **kwargs: None)
    result = evaluate.evaluate("ldm-inpaint-kl", prompts=1, steps=2)  # no --inpainting: it is its task
    assert "adherence_seen" not in result["by_sampler"][0] and result["adherence_seen"] is None
    assert result["inpainting"]["method"].startswith("trained") and "inpainting_repaint" not in result
    assert "inpainting" in evaluate.table(result) and "seconds per image" not in evaluate.table(result)


class FakeImg2Img:
    """A text pipeline whose img2img is exact: strength 0 returns the input (a perfect round trip), any other
    strength the prompt's own rendering; with `ignores_image`, every strength draws the prompt (a pipeline that
    drops the image), which the "kept" measure must catch."""

    def __init__(self, ignores_image: bool = False):
        from types import SimpleNamespace

        self.conditioner = SimpleNamespace(kind="text")
        self.recipe = SimpleNamespace(name="fake", kind="fake", concat_image=None)
        self.ignores_image, self.calls = ignores_image, []

    def generate(self, prompt, *, seed, image=None, strength=1.0, **settings):
        self.calls.append(strength if image is not None else None)
        if image is not None and strength == 0 and not self.ignores_image:
            return [Image.fromarray(image)]
        if not prompt:  # the empty prompt: the unconditional model, here a fixed image none of the inputs is
            return [Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))]
        wanted = parse_caption(prompt)
        full = Attributes(wanted.shape, wanted.colour, wanted.background, wanted.size or "large",
                          wanted.position or "center")  # fmt: skip
        return [Image.fromarray(render(full)[0])]


def test_img2img_prompts_name_another_shape_colour_and_background_than_their_inputs():
    jobs = evaluate.img2img_jobs(24)
    assert len({caption for _, _, caption, _ in jobs}) > 12  # prompts vary
    for image, source, caption, named in jobs:
        assert all(named[f] != source[f] for f in ("shape", "colour", "background")), (source, caption)
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3) and set(source) == set(evaluate.ATTRIBUTES)


def test_img2img_reports_the_round_trip_kept_and_a_pipeline_that_ignores_the_image_not():
    honest = evaluate.image_to_image(FakeImg2Img(), 6, (0.0, 0.3, 1.0))
    at = {row["strength"]: row for row in honest["by_strength"]}
    assert honest["inputs"]["all"] == 1.0 and at[0.0]["kept"] == honest["inputs"]  # the input itself, read as such
    assert at[0.0]["followed"]["all"] == 0.0 and at[0.0]["followed"]["shape"] == 0.0  # the prompt names another
    assert at[0.3]["kept"]["all"] == 0.0 and at[1.0]["followed"]["all"] == 1.0 == honest["plain"]["all"]
    assert at[1.0]["same_as_plain"] == 1.0 and at[0.0]["same_as_plain"] == 0.0
    lazy = evaluate.image_to_image(FakeImg2Img(ignores_image=True), 6, (0.0,))
    assert lazy["by_strength"][0]["kept"]["all"] == 0.0 and lazy["by_strength"][0]["same_as_plain"] == 1.0
    entry = {"sampler": "ddpm", "steps": 2}
    text = evaluate.table(
        {"pipeline": "fake", "weights": "random", "threads": 1, "by_sampler": [entry], "img2img": honest}
    )
    assert "| img2img strength 0.3 (n=6 held-out inputs, prompts naming other images) | kept: shape 0%" in text
    assert "identical to plain generation 100%" in text and "img2img: plain generation" in text


def test_img2img_with_the_empty_prompt_measures_what_the_image_alone_keeps():
    edited = evaluate.image_to_image(FakeImg2Img(), 6, (0.0, 0.3, 1.0), prompt="empty")
    at = {row["strength"]: row for row in edited["by_strength"]}
    assert edited["prompt"] == "empty" and "plain" not in edited and all("followed" not in r for r in at.values())
    assert at[0.0]["kept"] == edited["inputs"] and at[0.3]["kept"]["all"] == 0.0 and at[1.0]["same_as_plain"] == 1.0
    text = "\n".join(f"{k} {v}" for k, v in evaluate.image_to_image_rows(edited))
    assert "img2img strength 0.3 (n=6 held-out inputs, the empty prompt) kept: shape 0%" in text
    assert "followed" not in text and "plain generation, the same prompts" not in text
    with pytest.raises(ValueError, match=r"img2img prompt must be one of \('other', 'empty', 'own'\), got 'mine'"):
        evaluate.image_to_image(FakeImg2Img(), 6, (0.0,), prompt="mine")


def test_img2img_with_its_own_caption_asks_the_size_and_position_the_prompt_leaves_open():
    edited = evaluate.image_to_image(FakeImg2Img(), 8, (0.0, 0.3), prompt="own")
    at = {row["strength"]: row for row in edited["by_strength"]}
    sources = [source for _, source, _, _ in evaluate.img2img_jobs(8)]
    assert evaluate.own_caption(sources[0]) == f"a {sources[0]['colour']} {sources[0]['shape']} on a " + (
        f"{sources[0]['background']} background"
    )
    assert at[0.0]["kept"] == edited["inputs"] and at[0.0]["followed"]["all"] == 1.0  # the input agrees with it
    # the fake draws the caption large and in the centre: what the prompt names is kept, the rest only where the
    # input was large and centred already
    large_centre = sum(s["size"] == "large" and s["position"] == "center" for s in sources) / 8
    assert at[0.3]["kept"]["shape"] == at[0.3]["kept"]["colour"] == at[0.3]["followed"]["all"] == 1.0
    assert at[0.3]["kept"]["all"] == large_centre < 1 and edited["plain"]["all"] == 1.0
    text = "\n".join(f"{k} {v}" for k, v in evaluate.image_to_image_rows(edited))
    assert "img2img strength 0.3 (n=8 held-out inputs, their own captions) kept:" in text


def test_img2img_at_strength_one_is_the_plain_generation_of_a_real_pipeline():
    torch.set_num_threads(1)
    pipe = zoo.build("ldm-clip-kl", tiny=True, device="cpu")
    result = evaluate.image_to_image(pipe, 2, (0.0, 1.0), sampler="ddim", steps=2, guidance_scale=1.0)
    at = {row["strength"]: row for row in result["by_strength"]}
    assert at[1.0]["same_as_plain"] == 1.0 and at[1.0]["followed"] == result["plain"]  # the image ignored
    assert at[0.0]["same_as_plain"] == 0.0 and at[0.0]["kept"]["count"] == 2  # the round trip D(E(x)) instead


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img2img": True, "strengths": (0.0, 1.5)}, r"strength must be .*\[0, 1\].*got 1.5"),
        ({"img2img": True, "strengths": ()}, "non-empty sequence"),
        ({"strengths": (0.2,)}, "pass img2img=True"),
        ({"img2img_prompt": "empty"}, "pass img2img=True"),
        ({"img2img": True, "img2img_prompt": "mine"}, "img2img_prompt must be one of"),
    ],
)
def test_bad_img2img_arguments_are_refused_before_anything_is_built(monkeypatch, kwargs, message):
    monkeypatch.setattr(zoo, "build", lambda *args, **kw: pytest.fail("built a pipeline for refused arguments"))
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate("ldm-clip-kl", **kwargs)


@pytest.mark.parametrize(
    ("name", "kind"), [("ldm-class-kl", "conditioned on class"), ("ldm-inpaint-kl", "inpainting")]
)
def test_img2img_on_a_pipeline_it_cannot_measure_is_an_error_before_drawing_and_saves_nothing(
    monkeypatch, tmp_path, name, kind
):
    build = zoo.build
    monkeypatch.setattr(zoo, "build", lambda name, weights=None: build(name, tiny=True, device="cpu"))
    monkeypatch.setattr(evaluate, "draw", lambda *args, **kw: pytest.fail("drew images for a refused evaluation"))
    monkeypatch.setattr(evaluate, "embedded_weights", lambda name: tmp_path)
    with pytest.raises(ValueError, match=f"img2img is measured on text pipelines.*{name} is .*{kind}"):
        evaluate.main([name, "--img2img", "--save", "--threads", "1"])
    assert list(tmp_path.iterdir()) == []  # no evaluation.json written


class _RoundTrip:
    """An autoencoder stand-in: identity, or one that keeps only every `factor`-th pixel (small shapes blur)."""

    def __init__(self, factor: int):
        self.factor = factor

    def encode(self, x):
        return torch.nn.functional.avg_pool2d(x, self.factor) if self.factor > 1 else x

    def decode(self, z):
        return torch.nn.functional.interpolate(z, scale_factor=self.factor, mode="bilinear") if self.factor > 1 else z


@pytest.mark.parametrize("factor", [1, 8])
def test_the_autoencoder_row_reads_its_round_trips_strictly(factor):
    from types import SimpleNamespace

    pipe = SimpleNamespace(autoencoder=_RoundTrip(factor), device="cpu", recipe=SimpleNamespace(image_size=64))
    result = evaluate.reconstruction(pipe, n=32)
    if factor == 1:  # the dataset's own drawings read right, and a perfect round trip keeps them
        assert result["read_all"] == 1.0 and result["read_shape"] == 1.0 and result["psnr_db"] > 90
    else:  # an 8x8 bottleneck loses the small shapes' corners: the strict reading says so
        assert result["read_shape"] < 0.9 and result["read_all"] <= result["read_shape"]
    assert "round trip read right: shape" in evaluate.autoencoder_cell("read_shape", result["read_shape"])


def test_map_iou_is_one_for_the_maps_own_rendering_and_low_for_another_place():
    wanted = Attributes("triangle", "red", "blue", "small", "top left")
    image, semantic_map = render(wanted)
    assert evaluate.map_iou(image, semantic_map) == 1.0
    elsewhere = render(Attributes("triangle", "red", "blue", "small", "bottom right"))[0]
    assert evaluate.map_iou(elsewhere, semantic_map) == 0.0
    larger = render(Attributes("triangle", "red", "blue", "large", "top left"))[0]
    assert 0.0 < evaluate.map_iou(larger, semantic_map) < evaluate.MAP_IOU
    todo = [({"semantic_map": torch.from_numpy(semantic_map)}, {"shape": "triangle"})] * 2
    table = evaluate.adherence_of([image, elsewhere], todo)
    assert table["map_match"] == 0.5 and table["map_iou"] == 0.5
    assert "map_match 50%" in evaluate.percent(table) and "map_iou 0.500" in evaluate.percent(table)
    assert "map_iou" not in evaluate.adherence_of([image], [({"prompt": "x"}, {"shape": "triangle"})])


def test_the_clip_model_exports_int8_and_reads_back_as_the_float_one_to_within_its_rounding(tmp_path):
    """zoo/weights/clip-shapes is a transformers CLIPModel folder that `export --dtype int8` stores in the zoo's
    int8 storage (its large matrices, per-channel scales) and zoo.evaluate.load_clip dequantises; a float folder
    loads as transformers saved it."""
    from transformers import CLIPConfig, CLIPModel

    from components import storage
    from zoo.train.export import export

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": 600, "max_position_embeddings": 16},  # 600 x 32: quantised
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path / "float")
    export(tmp_path / "float", tmp_path / "int8", dtype="int8")
    weights = tmp_path / "int8" / "model.safetensors"
    assert storage.is_int8(weights) and not storage.is_int8(tmp_path / "float" / "model.safetensors")
    assert weights.stat().st_size < 0.6 * (tmp_path / "float" / "model.safetensors").stat().st_size
    ids, pixels = torch.randint(0, 600, (3, 16)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels).logits_per_image
        same = evaluate.load_clip(tmp_path / "float")(input_ids=ids, pixel_values=pixels).logits_per_image
        near = evaluate.load_clip(tmp_path / "int8")(input_ids=ids, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(same, want)
    torch.testing.assert_close(near, want, atol=0.05 * want.abs().max().item(), rtol=0)
    assert not torch.equal(near, want)  # it did read the rounded weights
