"""Stable Diffusion checkpoints through the zoo's own components, with diffusers as the oracle.

Tiny random diffusers pipelines in the SD architecture (v1: eps, 2 heads everywhere, conv projections; v2: v-
prediction, linear projections, heads per block) are saved with diffusers' save_pretrained, loaded with
zoo.build(weights=folder), and compared on identical inputs: U-Net, VAE, text encoder, and whole seeded DDIM and
DPM-Solver++ generations against StableDiffusionPipeline with the same CPU generator. Then the way back: our
save_pretrained writes diffusers' layout, which diffusers loads to the same images.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import zoo
from components.base import WeightsError
from zoo import diffusers_layout as dl

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT, NEGATIVE = "a red cat", "a cat"
FLAVOURS = {
    "v1": {"heads": 2, "linear": False, "act": "quick_gelu", "prediction": "epsilon"},
    "v2": {"heads": (2, 4), "linear": True, "act": "gelu", "prediction": "v_prediction"},
}


# ------------------------------------------------------------------------------------------- fixtures
def byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-level BPE alphabet (bytes_to_unicode): every byte has a printable stand-in."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return [chr(b) for b in bs] + [chr(256 + n) for n in range(len(extra))]


def tiny_tokenizer():
    """A CLIPTokenizer built offline: the byte alphabet (alone and word-final) and four merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(byte_chars())})
    merges = [("r", "e"), ("re", "d</w>"), ("c", "a"), ("ca", "t</w>")]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)


def tiny_sd(flavour: str, pipeline_class=None, in_channels: int = 4):
    """A random StableDiffusionPipeline at test size: 16x16 images, 8x8x4 latents, a 2-layer CLIP of width 32
    (another pipeline class with `pipeline_class`, e.g. the inpainting one with a 9-channel U-Net)."""
    spec = FLAVOURS[flavour]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=spec["heads"],
        use_linear_projection=spec["linear"],
        norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    tokenizer = tiny_tokenizer()
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        hidden_act=spec["act"],
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=spec["prediction"],
        timestep_spacing="leading",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,  # as Stable Diffusion's own scheduler config: DDIM's last step ends at alpha_bar_0
    )
    return (pipeline_class or diffusers.StableDiffusionPipeline)(
        vae=vae,
        text_encoder=transformers.CLIPTextModel(text_config).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="module", params=list(FLAVOURS))
def saved(request, tmp_path_factory):
    """(diffusers pipeline, its save_pretrained folder, our pipeline loaded from that folder)."""
    theirs = tiny_sd(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    theirs.set_progress_bar_config(disable=True)
    return theirs, folder, zoo.build(weights=folder, device="cpu")


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v1-errors")
    tiny_sd("v1").save_pretrained(folder)
    return folder


def broken_copy(v1, tmp_path):
    return shutil.copytree(v1, tmp_path / "sd")


# ------------------------------------------------------------------------------------------- components
def test_the_folder_loads_as_our_components_with_the_checkpoints_settings(saved):
    theirs, folder, ours = saved
    assert type(ours.unet).__module__ == "components.unets.unet" and ours.pretrained
    assert type(ours.autoencoder).__module__ == "components.autoencoders.kl"
    prediction = {"epsilon": "eps", "v_prediction": "v"}[theirs.scheduler.config.prediction_type]
    assert ours.recipe.prediction_type == prediction
    assert (ours.recipe.timestep_spacing, ours.recipe.steps_offset, ours.recipe.image_size) == ("leading", 1, 16)
    assert ours.autoencoder.scaling_factor == theirs.vae.config.scaling_factor
    assert torch.allclose(ours.schedule.alphas_cumprod.float(), theirs.scheduler.alphas_cumprod, atol=1e-6)
    assert ours.recipe.layout == "diffusers" and ours.recipe.hub_id is None


def test_unet_equals_diffusers(saved):
    theirs, _, ours = saved
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    t = torch.tensor([7, 901])
    with torch.no_grad():
        expected = theirs.unet(x, t, encoder_hidden_states=context).sample
        got = ours.unet(x, t, context)
    assert expected.abs().mean() > 0.05  # random weights: a real output, not zeros
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_vae_encode_and_decode_equal_diffusers(saved):
    theirs, _, ours = saved
    g = torch.Generator().manual_seed(2)
    x, z = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        expected_z, expected_x = theirs.vae.encode(x).latent_dist.mode(), theirs.vae.decode(z).sample
        torch.testing.assert_close(ours.autoencoder.encode(x), expected_z, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.autoencoder.decode(z), expected_x, atol=1e-4, rtol=0)


def test_text_encoder_tokens_equal_diffusers_prompt_embeddings(saved):
    """SD's text encoder runs without a padding mask, and the U-Net attends to every position."""
    theirs, _, ours = saved
    with torch.no_grad():
        embeds, _ = theirs.encode_prompt([PROMPT, ""], "cpu", 1, False)
        tokens, mask = ours.conditioner([PROMPT, ""])
    assert torch.equal(tokens, embeds) and bool(mask.all())


# ------------------------------------------------------------------------------------------- generation
def diffusers_images(theirs, sampler: str, seed: int, pipeline_class=None, **kwargs):
    if sampler == "dpmpp":  # the checkpoint's own config: "leading", steps_offset 1 (DPM-Solver's S + 1 grid)
        scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    else:
        scheduler = diffusers.DDIMScheduler.from_config(theirs.scheduler.config)
    pipe = (pipeline_class or diffusers.StableDiffusionPipeline)(**{**theirs.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for output_type in ("latent", "np"):
        generator = torch.Generator("cpu").manual_seed(seed)
        out[output_type] = pipe(PROMPT, generator=generator, output_type=output_type, **kwargs).images
    return out["latent"], out["np"]


def our_images(ours, sampler: str, seed: int, **kwargs):
    last = {}
    images = ours.generate(PROMPT, sampler=sampler, seed=seed, callback=lambda i, x, x0: last.update(x=x), **kwargs)
    return last["x"], np.stack([np.asarray(image) for image in images])


@pytest.mark.parametrize(
    ("sampler", "size"), [("ddim", (16, 16)), ("dpmpp", (16, 16)), ("ddim", (8, 24)), ("dpmpp", (24, 8))]
)
def test_same_seed_same_picture_as_stable_diffusion_pipeline(saved, sampler, size):
    theirs, _, ours = saved
    assert (ours.recipe.timestep_spacing, ours.recipe.steps_offset) == ("leading", 1)  # read from the checkpoint
    height, width = size
    common = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "height": height, "width": width}
    latents, pixels = our_images(ours, sampler, 11, steps=5, num_images=2, **common)
    expected_latents, expected_pixels = diffusers_images(
        theirs, sampler, 11, num_inference_steps=5, num_images_per_prompt=2, **common
    )
    assert latents.shape == (2, 4, height // 2, width // 2)
    torch.testing.assert_close(latents, expected_latents, atol=1e-4, rtol=0)
    assert pixels.shape == (2, height, width, 3)
    assert np.abs(pixels.astype(float) - expected_pixels * 255).max() <= 1.0  # uint8 rounding only


def a_picture_and_its_mask(height: int = 16, width: int = 16):
    """A 16x16 image (a red block on blue, some noise) and a mask whose right half is white (repaint)."""
    g = np.random.default_rng(0)
    array = np.clip(g.normal(60, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    array[4:10, 3:12] = (220, 30, 20)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 255
    return Image.fromarray(array), Image.fromarray(mask)


@pytest.mark.filterwarnings("ignore:You have passed 2 text prompts:FutureWarning")  # diffusers' own, on 1 image
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_img2img_draws_the_picture_of_stable_diffusion_img2img_pipeline(saved, sampler):
    """diffusers' strength semantics: the last int(steps * strength) steps, from the image's posterior sample
    noised to the first of them with the same generator (posterior sample first, then the noise)."""
    theirs, _, ours = saved
    image, _ = a_picture_and_its_mask()
    common = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "image": image, "strength": 0.6}
    latents, pixels = our_images(ours, sampler, 11, steps=5, num_images=2, **common)
    expected_latents, expected_pixels = diffusers_images(
        theirs, sampler, 11, diffusers.StableDiffusionImg2ImgPipeline, num_inference_steps=5,
        num_images_per_prompt=2, **common,
    )  # fmt: skip
    torch.testing.assert_close(latents, expected_latents, atol=1e-4, rtol=0)
    assert np.abs(pixels.astype(float) - expected_pixels * 255).max() <= 1.0


@pytest.mark.parametrize(("sampler", "strength"), [("ddim", 1.0), ("dpmpp", 1.0), ("ddim", 0.6)])
def test_blended_inpainting_draws_the_picture_of_stable_diffusion_inpaint_pipeline(saved, sampler, strength):
    """A 4-channel U-Net in diffusers' StableDiffusionInpaintPipeline: the blended latent step."""
    theirs, _, ours = saved
    image, mask = a_picture_and_its_mask()
    common = {"guidance_scale": 4.0, "image": image, "mask_image": mask, "strength": strength}
    latents, _ = our_images(ours, sampler, 5, steps=4, **common)
    expected, _ = diffusers_images(theirs, sampler, 5, diffusers.StableDiffusionInpaintPipeline,
                                   num_inference_steps=4, **common)  # fmt: skip
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def inpainting(tmp_path_factory):
    """A tiny StableDiffusionInpaintPipeline (9-channel U-Net) saved by diffusers, and ours loaded from it."""
    theirs = tiny_sd("v1", diffusers.StableDiffusionInpaintPipeline, in_channels=9)
    theirs.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("inpaint")
    theirs.save_pretrained(folder)
    return theirs, folder, zoo.build(weights=folder, device="cpu")


def test_an_inpainting_checkpoint_loads_with_its_nine_channel_unet(inpainting):
    _, _, ours = inpainting
    assert ours.recipe.concat_image == "inpaint" and ours.unet.conv_in.in_channels == 9
    assert (ours.unet.config.in_channels, ours.unet.config.concat_channels) == (4, 5)  # z_t; mask + masked latent
    with pytest.raises(ValueError, match="inpainting model: pass image= and mask_image="):
        ours.generate(PROMPT, steps=2)


@pytest.mark.parametrize(("sampler", "strength"), [("ddim", 1.0), ("dpmpp", 1.0), ("ddim", 0.6)])
def test_an_inpainting_checkpoint_draws_the_picture_of_stable_diffusion_inpaint_pipeline(
    inpainting, sampler, strength
):
    theirs, _, ours = inpainting
    image, mask = a_picture_and_its_mask()
    common = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0, "image": image, "mask_image": mask}
    latents, pixels = our_images(ours, sampler, 7, steps=4, num_images=2, strength=strength, **common)
    expected_latents, expected_pixels = diffusers_images(
        theirs, sampler, 7, diffusers.StableDiffusionInpaintPipeline, num_inference_steps=4,
        num_images_per_prompt=2, strength=strength, **common,
    )  # fmt: skip
    torch.testing.assert_close(latents, expected_latents, atol=1e-4, rtol=0)
    assert np.abs(pixels.astype(float) - expected_pixels * 255).max() <= 1.0


def test_an_inpainting_pipeline_saves_back_in_diffusers_inpainting_layout(inpainting, tmp_path):
    theirs, _, ours = inpainting
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    back = diffusers.StableDiffusionInpaintPipeline.from_pretrained(tmp_path, safety_checker=None)
    assert back.unet.config.in_channels == 9
    assert all(torch.equal(v, back.unet.state_dict()[k]) for k, v in theirs.unet.state_dict().items())


def test_a_different_seed_draws_a_different_picture(saved):
    _, _, ours = saved
    first, second = (our_images(ours, "ddim", seed, steps=2)[0] for seed in (0, 1))
    assert (first - second).abs().mean() > 0.1


# ------------------------------------------------------------------------------------------- round trips
def test_our_save_pretrained_reloads_into_diffusers_and_into_the_zoo(saved, tmp_path):
    theirs, _, ours = saved
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    back = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        original, reloaded = getattr(theirs, name).state_dict(), getattr(back, name).state_dict()
        assert original.keys() == reloaded.keys()
        assert all(torch.equal(original[k], reloaded[k]) for k in original)
    assert back.scheduler.config.prediction_type == theirs.scheduler.config.prediction_type
    ours_again = zoo.build(weights=tmp_path, device="cpu")
    assert ours_again.recipe == ours.recipe
    torch.testing.assert_close(our_images(ours_again, "ddim", 3, steps=3)[0], our_images(ours, "ddim", 3, steps=3)[0])


def test_only_sd_style_pipelines_save_in_diffusers_layout(tmp_path):
    zoo_trained = zoo.build("ldm-clip-kl", tiny=True, device="cpu")
    with pytest.raises(ValueError, match="unmasked CLIP"):
        dl.write_diffusers(zoo_trained, tmp_path)


# ------------------------------------------------------------------------------------------- devices
def test_model_cpu_offload_hooks_give_the_same_picture(v1):
    plain = zoo.build(weights=v1, device="cpu")
    expected = our_images(plain, "ddim", 5, steps=3)[0]
    offloaded = zoo.build(weights=v1, device="cpu").enable_model_cpu_offload("cpu")
    assert set(offloaded.offload_hooks) == set(offloaded.modules())  # every module has its hook
    torch.testing.assert_close(our_images(offloaded, "ddim", 5, steps=3)[0], expected)
    with pytest.raises(ValueError, match="offload"):
        offloaded.to("cpu")


def test_bfloat16_on_the_cpu_stays_close_to_float32_and_float16_is_refused(v1):
    full = our_images(zoo.build(weights=v1, device="cpu"), "ddim", 5, steps=3)[0]
    half = zoo.build(weights=v1, device="cpu", dtype="bfloat16")
    assert half.unet.conv_in.weight.dtype == torch.bfloat16
    latents = our_images(half, "ddim", 5, steps=3)[0]
    relative = (latents.float() - full).abs().mean() / full.abs().mean()
    assert latents.dtype == torch.bfloat16 and relative < 0.03  # bfloat16 keeps 8 bits of mantissa
    for dtype, message in (("float16", "not supported on cpu"), ("int8", "allowed there")):
        with pytest.raises(ValueError, match=message):
            zoo.build(weights=v1, device="cpu", dtype=dtype)


# ------------------------------------------------------------------------------------------- registry
def test_registered_checkpoints_name_their_hub_source_and_download_size(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    listed = zoo.available()
    for name, hub_id, size in (("sd-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "4.3 GB"),
                               ("sd-2-1-base", "stabilityai/stable-diffusion-2-1-base", "5.2 GB")):  # fmt: skip
        recipe = zoo.recipe(name)
        assert recipe.hub_id == hub_id and recipe.layout == "diffusers"
        assert f"needs a download of about {size}" in listed[name] and hub_id in listed[name]
        assert zoo.Recipe.from_json(recipe.to_json()).to_dict() == recipe.to_dict()
    assert zoo.recipe("sd-2-1-base").unet.kwargs["use_linear_projection"]
    assert "download" not in listed["ldm-clip-kl"]


def test_building_a_hub_checkpoint_offline_with_an_empty_cache_says_so(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    message = r"'stable-diffusion-v1-5/stable-diffusion-v1-5' is no folder here .* is set.*unset HF_HUB_OFFLINE"
    with pytest.raises(WeightsError, match=message):
        zoo.build("sd-v1-5")


def test_tiny_variant_of_a_hub_checkpoint_keeps_its_interface_and_draws_other_sizes():
    pipe = zoo.build("sd-v1-5", tiny=True, device="cpu")
    assert pipe.conditioner.dim == pipe.unet.config.context_dim == 768
    assert sum(p.numel() for p in pipe.unet.parameters()) < 2_000_000
    assert pipe.generate(PROMPT, steps=2, height=32, width=48)[0].size == (48, 32)


# ------------------------------------------------------------------------------------------- bad inputs
def test_sizes_that_the_networks_cannot_halve_are_refused(saved):
    _, _, ours = saved
    for kwargs in ({"height": 10}, {"width": 0}, {"height": 16.0}):
        with pytest.raises(ValueError, match="multiple of 4"):
            ours.generate(PROMPT, steps=1, **kwargs)


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no unet weights", r"missing .*unet/diffusion_pytorch_model\.safetensors"),
        ("pickle only", r"only pickle weights \(diffusion_pytorch_model\.bin\)"),
        ("stray key", r"no counterpart in our UNet: mystery\.weight"),
        ("missing key", r"Missing key"),
        ("other pipeline", r"'StableDiffusionXLPipeline'; supported: StableDiffusionPipeline, "),
        ("no scheduler", r"has no scheduler"),
        ("cosine betas", r"beta_schedule='squaredcos_cap_v2'"),
        ("unet option", r"unet/config\.json: .*time_cond_proj_dim"),
        ("vae option", r"vae/config\.json: .*act_fn"),
        ("no tokenizer", r"cannot load the CLIP text encoder"),
    ],
)
def test_a_broken_folder_gets_an_error_that_names_the_problem(v1, tmp_path, breakage, message):
    root = broken_copy(v1, tmp_path)
    unet_weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    if breakage == "no unet weights":
        unet_weights.unlink()
    elif breakage == "pickle only":
        unet_weights.rename(unet_weights.with_suffix(".bin"))
    elif breakage in ("stray key", "missing key"):
        sd = load_file(unet_weights)
        sd.pop("conv_in.bias") if breakage == "missing key" else sd.update({"mystery.weight": torch.zeros(1)})
        save_file(sd, unet_weights)
    elif breakage == "other pipeline":
        edit_json(root / "model_index.json", _class_name="StableDiffusionXLPipeline")
    elif breakage == "no scheduler":
        edit_json(root / "model_index.json", scheduler=[None, None])
    elif breakage == "cosine betas":
        edit_json(root / "scheduler" / "scheduler_config.json", beta_schedule="squaredcos_cap_v2")
    elif breakage == "unet option":
        edit_json(root / "unet" / "config.json", time_cond_proj_dim=8)
    elif breakage == "vae option":
        edit_json(root / "vae" / "config.json", act_fn="gelu")
    else:
        shutil.rmtree(root / "tokenizer")
    with pytest.raises(WeightsError, match=message):
        dl.read_diffusers(root)
