"""U-Net tests: learning (overfit), the conditioning paths, the registry, Hub round trip, and diffusers as oracle."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding

import components.unets.unet  # noqa: F401  (registers the U-Nets)
from components.base import WeightsError
from components.unets.blocks import timestep_embedding
from components.unets.diffusers_compat import (
    config_from_diffusers,
    config_to_diffusers,
    state_dict_from_diffusers,
)
from components.unets.unet import TINY, UNet, UNetConfig
from zoo import bench
from zoo.pipeline_io import embedded_weights
from zoo.registry import UNETS

TINY_LDM = UNetConfig(**{**TINY, "in_channels": 4, "out_channels": 4, "context_dim": 12})


def randomized(model: UNet, std: float = 0.2) -> UNet:
    """Give the zero-initialised layers random weights, so every path of the untrained network shows in its output."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model.eval()


def tiny(**changes) -> UNet:
    return randomized(UNet(TINY_LDM.replace(**changes)))


def inputs(config: UNetConfig, batch: int = 2, size: int = 8, length: int = 5) -> dict:
    return {
        "x_t": torch.randn(batch, config.in_channels, size, size),
        "t": torch.randint(0, 1000, (batch,)),
        "context": torch.randn(batch, length, config.context_dim) if config.context_dim else None,
    }


# --- learning ------------------------------------------------------------------------------------------------


def test_tiny_unet_overfits_one_batch_from_its_zero_init():
    """From the documented zero init (output 0), Adam drives the eps-prediction loss down at least 10x."""
    model = UNet(TINY_LDM).train()
    x_t, t, context = inputs(TINY_LDM, batch=4).values()
    eps = torch.randn_like(x_t)
    assert model(x_t, t, context).abs().max() == 0  # conv_out starts at zero (improved-diffusion init)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x_t, t, context), eps)  # DDPM Eq. 14, L_simple
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, losses[::20]


# --- conditioning paths --------------------------------------------------------------------------------------


def test_cross_attention_reads_the_context_and_nothing_else():
    model = tiny()
    x_t, t, context = inputs(TINY_LDM).values()
    with torch.no_grad():
        out = model(x_t, t, context)
        assert torch.equal(out, model(x_t, t, context.clone()))
        other = context.clone()
        other[1] += torch.randn_like(other[1])
        changed = model(x_t, t, other)
    assert torch.equal(changed[0], out[0])  # sample 0's context is the same: its output is too
    assert (changed[1] - out[1]).abs().max() > 1e-3


def test_masked_context_tokens_are_never_attended_to():
    model = tiny()
    x_t, t, context = inputs(TINY_LDM, length=6).values()
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    padded = context.clone()
    padded[0, 3:] = torch.randn(3, TINY_LDM.context_dim) * 10  # change only the padding of sample 0
    with torch.no_grad():
        out = model(x_t, t, context, context_mask=mask)
        assert torch.allclose(model(x_t, t, padded, context_mask=mask), out, atol=1e-6)
        # masking tokens is the same as dropping them
        short = model(x_t[:1], t[:1], context[:1, :3])
        assert torch.allclose(out[:1], short, atol=1e-5)
        assert (model(x_t, t, padded) - out).abs().max() > 1e-3  # without the mask the padding does matter


def test_context_none_skips_cross_attention_like_an_all_false_mask():
    model = tiny()
    x_t, t, context = inputs(TINY_LDM).values()
    with torch.no_grad():
        none = model(x_t, t, None)
        all_masked = model(x_t, t, context, context_mask=torch.zeros(2, 5, dtype=torch.bool))
        with_context = model(x_t, t, context)
    assert torch.allclose(none, all_masked, atol=1e-6)
    assert (with_context - none).abs().max() > 1e-3


def test_concat_channels_are_used():
    model = tiny(concat_channels=3)
    x_t, t, context = inputs(TINY_LDM).values()
    maps = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model(x_t, t, context, concat=maps)
        other = model(x_t, t, context, concat=maps + 1)
    assert (out - other).abs().max() > 1e-3


def test_class_labels_change_the_output_and_none_is_unconditional():
    model = tiny(num_classes=5)
    x_t, t, context = inputs(TINY_LDM).values()
    with torch.no_grad():
        a = model(x_t, t, context, class_labels=torch.tensor([0, 1]))
        b = model(x_t, t, context, class_labels=torch.tensor([0, 4]))
        none = model(x_t, t, context)
        embedded = model.embed(t, torch.tensor([0, 1]), x_t.dtype) - model.embed(t, None, x_t.dtype)
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().max() > 1e-3
    assert (a - none).abs().max() > 1e-3
    assert torch.allclose(embedded, model.class_embedding.weight[:2])  # the label embedding is added to t's


def test_timesteps_broadcast_and_each_sample_is_independent_of_the_batch():
    model = tiny()
    x_t, _, context = inputs(TINY_LDM).values()
    with torch.no_grad():
        whole = model(x_t, 7, context)
        assert torch.equal(whole, model(x_t, torch.tensor(7), context))
        assert torch.allclose(whole, model(x_t, torch.tensor([7, 7]), context), atol=1e-6)
        alone = model(x_t[1:], 7, context[1:])
        other_t = model(x_t, torch.tensor([7, 500]), context)
    assert torch.allclose(whole[1:], alone, atol=1e-5)
    assert (other_t[1] - whole[1]).abs().max() > 1e-3


# --- registry and Hub layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNETS.names())
def test_every_registered_unet_runs_tiny(name):
    model = randomized(UNETS.build(name, tiny=True))
    config = model.config
    extra = {"concat": torch.randn(2, config.concat_channels, 8, 8)} if config.concat_channels else {}
    x_t, t, context = inputs(config).values()
    with torch.no_grad():
        out = model(x_t, t, context, **extra)
        assert out.shape == (2, config.out_channels, 8, 8)
        assert out.isfinite().all() and out.std() > 1e-3


@pytest.mark.parametrize("name, low, high", [("unet-ddpm", 2e6, 6e6), ("unet-ldm", 3e6, 6e6)])
def test_full_size_variants_stay_lean(name, low, high):
    assert low <= UNETS.build(name).num_parameters() <= high


def test_factories_take_overrides_and_drop_attention_levels_that_no_longer_exist():
    model = UNETS.build("unet-ldm", channel_mult=(1, 2), concat_channels=4, num_classes=3)
    assert model.config.attention_levels == (1,)
    assert model.conv_in.in_channels == 8 and model.class_embedding.num_embeddings == 3
    assert UNETS.build("unet-ddpm").config.context_dim is None


def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    model = tiny(num_classes=3, use_linear_projection=True)
    model.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path)
    x_t, t, context = inputs(TINY_LDM).values()
    labels = torch.tensor([2, 0])
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x_t, t, context, class_labels=labels), model(x_t, t, context, class_labels=labels))


# --- diffusers as the oracle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flip, shift", [(True, 0), (False, 1)])
def test_timestep_embedding_matches_diffusers(flip, shift):
    t = torch.tensor([0, 1, 17, 999])
    ours = timestep_embedding(t, 32, flip_sin_to_cos=flip, freq_shift=shift)
    assert torch.allclose(ours, get_timestep_embedding(t, 32, flip_sin_to_cos=flip, downscale_freq_shift=shift))
    cos_half, sin_half = torch.ones(16), torch.zeros(16)  # t = 0: cos 0 = 1, sin 0 = 0
    assert torch.equal(ours[0], torch.cat([cos_half, sin_half] if flip else [sin_half, cos_half]))
    assert math.isclose(ours[1, 0].item(), math.cos(1.0) if flip else math.sin(1.0), rel_tol=1e-6)


DIFFUSERS_TINY = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    cross_attention_dim=12,
    attention_head_dim=2,
    norm_num_groups=8,
    in_channels=4,
    out_channels=3,
)


@pytest.mark.parametrize(
    "options",
    [
        dict(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2),
        dict(
            down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2,
            use_linear_projection=True,
            transformer_layers_per_block=2,
            attention_head_dim=(2, 4),  # equal head widths (8): SD 2 style
        ),
        dict(
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            num_class_embeds=4,
            flip_sin_to_cos=False,
            freq_shift=1,
        ),
    ],
    ids=["cross-attn-conv-proj", "linear-proj-sd2-heads", "plain-down-blocks-classes"],
)
def test_diffusers_checkpoint_loads_strictly_and_gives_the_same_outputs(options):
    theirs = UNet2DConditionModel(**{**DIFFUSERS_TINY, **options}).eval()
    ours = UNet(config_from_diffusers(dict(theirs.config))).eval()
    ours.load_state_dict(state_dict_from_diffusers(theirs.state_dict()), strict=True)
    x_t, t, context = inputs(ours.config, size=8).values()
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    labels = torch.tensor([3, 1]) if ours.config.num_classes else None
    with torch.no_grad():
        expected = theirs(x_t, t, context, class_labels=labels, encoder_attention_mask=mask).sample
        got = ours(x_t, t, context, context_mask=mask, class_labels=labels)
    assert expected.abs().max() > 1e-2  # diffusers' init is not zero: the comparison is not vacuous
    assert torch.allclose(got, expected, atol=1e-4)


SD_V1_5 = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8
)
SD_V2 = dict(SD_V1_5, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)


@pytest.mark.parametrize("options, size", [(SD_V1_5, 859_520_964), (SD_V2, 865_910_724)], ids=["sd-v1-5", "sd-v2"])
def test_real_stable_diffusion_layouts_map_key_for_key(options, size):
    """At full SD size, on the meta device (no memory, no weights): every key renames onto ours, same shapes."""
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**options)
        ours = UNet(config_from_diffusers(dict(theirs.config)))
    renamed, own = state_dict_from_diffusers(theirs.state_dict()), ours.state_dict()
    assert set(renamed) == set(own)
    assert all(renamed[key].shape == own[key].shape for key in own)
    assert ours.num_parameters() == size  # the SD v1.5 U-Net has 859.5M parameters
    if options is SD_V1_5:
        assert ours.config == UNetConfig(**bench.UNET_BENCHES.build("sd-v1-5").unet)


@pytest.mark.parametrize(
    "changes",
    [{"attention_levels": (0, 1)}, {"attention_levels": (0, 1), "num_heads": 2, "num_head_channels": None}],
)
def test_config_to_diffusers_round_trips(changes):
    config = TINY_LDM.replace(num_classes=3, **changes)
    assert config_from_diffusers(config_to_diffusers(config)) == config


def test_config_round_trip_keeps_the_heads_when_their_description_is_ambiguous():
    """Attention only at 32 channels: 4 heads of 8 channels reads back as num_heads=4, the same network."""
    back = config_from_diffusers(config_to_diffusers(TINY_LDM))
    assert back == TINY_LDM.replace(num_heads=4, num_head_channels=None)
    assert back.heads(32) == TINY_LDM.heads(32) == 4


def test_bench_smoke_runs_both_networks_and_they_agree():
    result = bench.main(["unet", "--config", "tiny", "--repeats", "1", "--warmup", "0"])
    assert result.max_abs_diff < 1e-4 and result.ours_s > 0 and result.diffusers_s > 0
    assert result.ratio == pytest.approx(result.ours_s / result.diffusers_s)
    assert {"default", "sd-v1-5", "tiny"} <= set(bench.UNET_BENCHES.names())


# --- bad inputs ----------------------------------------------------------------------------------------------

BAD_CALLS = {
    "wrong channels": (dict(x_t=torch.randn(2, 3, 8, 8)), ValueError, r"x_t must have shape \(B, 4, H, W\)"),
    "integer x_t": (dict(x_t=torch.zeros(2, 4, 8, 8, dtype=torch.long)), TypeError, "floating-point"),
    "odd size": (dict(x_t=torch.randn(2, 4, 6, 7)), ValueError, "divisible by 2"),
    "t shape": (dict(t=torch.tensor([1, 2, 3])), ValueError, r"t must have shape \(\) or \(2,\)"),
    "t type": (dict(t="10"), TypeError, "t must be an int"),
    "t bool": (dict(t=True), TypeError, "t must be an int"),
    "context width": (dict(context=torch.randn(2, 5, 7)), ValueError, r"context must have shape \(2, L, 12\)"),
    "context rank": (dict(context=torch.randn(2, 12)), ValueError, "context must have shape"),
    "float mask": (dict(context_mask=torch.ones(2, 5)), TypeError, "context_mask must be a bool"),
    "mask shape": (dict(context_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, r"shape \(2, 5\)"),
    "mask, no context": (dict(context=None, context_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError, "without"),
    "concat unexpected": (dict(concat=torch.randn(2, 1, 8, 8)), ValueError, "concat_channels=0"),
    "labels unexpected": (dict(class_labels=torch.tensor([0, 1])), ValueError, "num_classes=None"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_inputs_raise_clear_errors(name):
    changes, error, message = BAD_CALLS[name]
    model = UNet(TINY_LDM)
    call = {**inputs(TINY_LDM), **changes}
    with pytest.raises(error, match=message):
        model(call.pop("x_t"), call.pop("t"), call.pop("context"), **call)


def test_bad_concat_and_labels_for_models_that_take_them():
    model = UNet(TINY_LDM.replace(concat_channels=2, num_classes=3))
    x_t, t, context = inputs(TINY_LDM).values()
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"concat_channels=2: pass concat of shape \(B, 2, H, W\)"):
        model(x_t, t, context, class_labels=labels)
    with pytest.raises(ValueError, match=r"concat must have shape \(2, 2, 8, 8\)"):
        model(x_t, t, context, concat=torch.randn(2, 3, 8, 8))
    concat = torch.randn(2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\)"):
        model(x_t, t, context, concat=concat, class_labels=torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="int64/int32"):
        model(x_t, t, context, concat=concat, class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\)"):
        model(x_t, t, context, concat=concat, class_labels=torch.tensor([0]))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"norm_groups": 32}, "divisible by norm_groups=32"),
        (
            {"attention_levels": (2,)},
            r"attention_levels entry must be an integer in \[0, 1\] \(a level index\), got 2",
        ),
        ({"num_heads": 2}, "exactly one of num_heads or num_head_channels"),
        ({"num_head_channels": 12}, "divisible by num_head_channels=12"),
        ({"model_channels": 0}, r"UNetConfig.model_channels must be an integer in \[1, 8192\] .*, got 0"),
        ({"model_channels": 10**9}, r"UNetConfig.model_channels must be .* \(8192: SD's widest"),
        ({"num_res_blocks": 10**6}, r"UNetConfig.num_res_blocks must be .*\[1, 16\] \(DDPM and SD use 2\)"),
        ({"channel_mult": (1,) * 9}, r"UNetConfig.channel_mult may have at most 8 entries"),
        ({"channel_mult": (1, 100)}, r"UNetConfig.channel_mult\[1\] must be an integer in \[1, 64\]"),
        ({"transformer_depth": 100}, r"UNetConfig.transformer_depth must be an integer in \[1, 32\]"),
        ({"model_channels": 4096, "channel_mult": (1, 4), "attention_levels": (1,)}, r"level 1.s channels"),
        (
            {"model_channels": 4096, "channel_mult": (1, 1), "num_res_blocks": 16, "attention_levels": (1,)},
            r"UNetConfig: the parameters estimated from .* must be an integer <= 5000000000",
        ),
        ({"channel_mult": ()}, "channel_mult must be a non-empty tuple"),
        ({"context_dim": -1}, r"UNetConfig.context_dim must be an integer in \[1, 8192\] .*, got -1"),
        ({"context_dim": 10**6}, r"UNetConfig.context_dim must be an integer in \[1, 8192\] \(SDXL's context"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"model_channels": 15, "norm_groups": 5, "num_head_channels": 5}, "model_channels must be even"),
    ],
)
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        TINY_LDM.replace(**changes)


def test_unknown_factory_option_and_wrong_config_type():
    with pytest.raises(TypeError, match=r"unknown U-Net option\(s\) \['chanels'\]; allowed:"):
        UNETS.build("unet-ldm", tiny=True, chanels=8)
    with pytest.raises(TypeError, match="UNet takes a UNetConfig"):
        UNet({"in_channels": 4})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"act_fn": "gelu"}, "act_fn='gelu' has no equivalent"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"down_block_types": ("AttnDownBlock2D", "DownBlock2D")}, "down block type 'AttnDownBlock2D'"),
        ({"up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")}, "must mirror down_block_types"),
        ({"layers_per_block": (1, 2)}, "layers_per_block=.*one value for every level"),
        ({"attention_head_dim": (2, 3)}, "equal counts or equal head widths"),
        ({"norm_num_groups": None}, "norm_num_groups=None"),
        ({"some_new_option": 1}, r"unknown diffusers UNet2DConditionModel option\(s\) \['some_new_option'\]"),
    ],
)
def test_unsupported_diffusers_configs_raise_clear_errors(options, message):
    config = {
        **DIFFUSERS_TINY,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        **options,
    }
    with pytest.raises(ValueError, match=message):
        config_from_diffusers(config)


def test_unmapped_state_dict_keys_are_named():
    keys = {"conv_in.weight": torch.zeros(1), "add_embedding.linear_1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 diffusers key\(s\) have no counterpart in our UNet: add_embedding"):
        state_dict_from_diffusers(keys)
    with pytest.raises(ValueError, match="context_dim=None has no twin"):
        config_to_diffusers(TINY_LDM.replace(context_dim=None))


def test_generate_bench_times_the_unet_and_decoder_and_counts_flops():
    torch.set_num_threads(1)
    first, second = bench.main(
        ["generate", "--versus", "ddpm-cosine", "--steps", "2", "--repeats", "1", "--threads", "1"]
    )
    assert first.pipeline == "ldm-clip-kl" and second.pipeline == "ddpm-cosine"
    assert second.settings["steps"] == 2 and "guidance_scale" not in second.settings
    for result in (first, second):
        assert 0 < result.unet_share <= 1 and 0 <= result.decoder_share < 1 and result.unet_gflops_per_s > 0
    assert first.decoder_share > 0 and second.decoder_share == 0
    # FLOPs per sample: the pixel U-Net at 64x64 costs ~10x the latent one at 16x16 (which runs batch 2 for CFG)
    assert second.unet_gflop > 5 * first.unet_gflop / 2


def test_generate_bench_interleaves_the_two_pipelines_and_reads_a_saved_folder(monkeypatch):
    torch.set_num_threads(1)
    order = []
    real_once = bench._GenerateTimer.once
    monkeypatch.setattr(
        bench._GenerateTimer, "once", lambda self, seed: order.append(self.name) or real_once(self, seed)
    )
    folder = str(embedded_weights("ldm-clip-kl"))
    args = ["generate", "--weights", folder, "--versus", "ddpm-cosine", "--steps", "1", "--repeats", "2"]
    first, second = bench.main([*args, "--threads", "1", "--guidance", "1"])
    assert first.pipeline == f"ldm-clip-kl ({folder})" and second.pipeline == "ddpm-cosine"
    assert order == [first.pipeline, "ddpm-cosine", first.pipeline, "ddpm-cosine"]  # alternating, not in blocks
    with pytest.raises(WeightsError, match="/no/such/folder is not a folder"):
        bench.main(["generate", "--weights", "/no/such/folder", "--steps", "1", "--repeats", "1"])


def test_generate_bench_times_a_batch_of_images_per_image():
    torch.set_num_threads(1)
    args = ["generate", "--steps", "1", "--repeats", "1", "--threads", "1", "--guidance", "1"]
    (one,), (two,) = bench.main(args), bench.main([*args, "--images", "2"])
    assert one.images == 1 and two.images == 2
    assert two.unet_gflop == pytest.approx(2 * one.unet_gflop, rel=1e-6)  # the U-Net's batch is the images
    assert "2 images per call" in bench.generate_report([two])
    assert "images per call" not in bench.generate_report([one])
    with pytest.raises(SystemExit, match="--images must be at least 1"):
        bench.main(["generate", "--images", "0"])


def test_generate_bench_samples_through_the_twin_asked_and_refuses_two(monkeypatch, capsys):
    from zoo.pipelines.base import Pipeline

    torch.set_num_threads(1)
    enabled = []
    monkeypatch.setattr(Pipeline, "enable_compiled_unet", lambda self: enabled.append(self.recipe.name) or self)
    (result,) = bench.main(["generate", "--steps", "1", "--repeats", "1", "--threads", "1", "--compiled"])
    assert enabled == ["ldm-clip-kl"] and result.settings["unet"] == "compiled"  # named in the report's line
    assert "unet compiled" in bench.generate_report([result])
    with pytest.raises(SystemExit):
        bench.main(["generate", "--traced", "--compiled"])
    assert "not allowed with argument" in capsys.readouterr().err
