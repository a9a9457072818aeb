"""Autoencoders: the Gaussian posterior's identities, the quantiser's straight-through estimator and codebook use,
the registry's variants, Hub round trips, training signal, diffusers' AutoencoderKL as an oracle, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from components.autoencoders import kl as kl_module
from components.autoencoders import vq as vq_module
from components.autoencoders.blocks import DiagonalGaussian, VectorQuantizer, estimate_scaling_factor
from components.autoencoders.diffusers_compat import config_from_diffusers, rename_key, state_dict_from_diffusers
from components.autoencoders.kl import AutoencoderKL, AutoencoderKLConfig
from components.autoencoders.vq import VQAutoencoder, VQAutoencoderConfig
from zoo.registry import AUTOENCODERS

TINY = {"base_channels": 8, "channel_mult": (1, 2), "norm_groups": 4}  # f = 2


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """A fixed batch of plain shapes in [-1, 1]: a coloured square on a dark background, one per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, size, size), -0.8)
    for i in range(n):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        x[i, :, top : top + size // 2, left : left + size // 2] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


def kl_tiny(**overrides) -> AutoencoderKL:
    return AutoencoderKL(AutoencoderKLConfig(**{**TINY, **overrides}))


def vq_tiny(**overrides) -> VQAutoencoder:
    return VQAutoencoder(VQAutoencoderConfig(**{**TINY, "num_embeddings": 16, **overrides}))


def moments(b: int = 2, c: int = 3, side: int = 4) -> torch.Tensor:
    return torch.cat([torch.randn(b, c, side, side), torch.randn(b, c, side, side) * 1.5], dim=1)


# --------------------------------------------------------------------------------------------- Gaussian posterior
def test_kl_equals_closed_form_and_torch_distributions():
    m = moments()
    q = DiagonalGaussian(m)
    mean, logvar = m.chunk(2, dim=1)
    closed = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    reference = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(q.kl(), closed)
    torch.testing.assert_close(q.kl(), reference, rtol=1e-5, atol=1e-5)
    assert q.kl().shape == (2,)


def test_kl_is_zero_for_the_prior_and_nll_matches_log_prob():
    zero = DiagonalGaussian(torch.zeros(2, 6, 3, 3))
    torch.testing.assert_close(zero.kl(), torch.zeros(2))
    q = DiagonalGaussian(moments())
    z = torch.randn_like(q.mean)
    torch.testing.assert_close(q.nll(z), -Normal(q.mean, q.std).log_prob(z).sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(q.mode(), q.mean)


def test_logvar_is_clamped_like_ldm():
    m = torch.cat([torch.zeros(1, 2, 2, 2), torch.tensor([100.0, -100.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)], dim=1)
    q = DiagonalGaussian(m)
    assert q.logvar[0, 0].eq(20.0).all() and q.logvar[0, 1].eq(-30.0).all()
    torch.testing.assert_close(q.var, q.logvar.exp())
    torch.testing.assert_close(q.std, (0.5 * q.logvar).exp())


def test_reparameterised_samples_have_the_encoders_mean_and_variance():
    model = kl_tiny().eval()
    with torch.no_grad():
        q = model.encode_dist(images(1, 8))
        g = torch.Generator().manual_seed(1)
        z = torch.stack([q.sample(g) for _ in range(4000)])
    # 4000 samples: the standard error of the mean is std/63, of the variance about var * sqrt(2/4000) = 2.2% var
    torch.testing.assert_close(z.mean(0), q.mean, atol=float(5 * q.std.max() / 63), rtol=0)
    rel = (z.var(0) / q.var - 1).abs()
    assert rel.max() < 0.12, f"sample variance off by {rel.max():.3f} (relative)"
    assert not torch.allclose(z[0], z[1])


def test_encode_sample_is_the_posterior_sample_with_the_same_generator():
    model, x = kl_tiny().eval(), images(2, 8)
    with torch.no_grad():
        a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        b = model.encode_dist(x).sample(torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(model.encode(x), model.encode_dist(x).mean)


def test_kl_loss_is_reconstruction_plus_weighted_kl_per_pixel():
    model, x = kl_tiny(kl_weight=0.5), images(2, 8)
    loss, logs = model.loss(x, generator=torch.Generator().manual_seed(0))
    assert set(logs) == {"rec", "kl"}
    assert math.isclose(float(loss.detach()), logs["rec"] + 0.5 * logs["kl"] / x[0].numel(), rel_tol=1e-5)
    with torch.no_grad():
        q = model.encode_dist(x)
        x_hat = model.decode(q.sample(torch.Generator().manual_seed(0)))
    assert math.isclose(logs["rec"], float((x_hat - x).abs().mean()), rel_tol=1e-5)
    assert math.isclose(logs["kl"], float(q.kl().mean()), rel_tol=1e-5)


def test_l2_reconstruction_loss():
    model, x = kl_tiny(rec_loss="l2"), images(2, 8)
    y = x + 0.1 * torch.randn_like(x)
    torch.testing.assert_close(model.reconstruction_loss(y, x), ((y - x) ** 2).mean())


def test_kl_training_lowers_the_reconstruction_loss():
    model, x = kl_tiny(), images(4, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    recs = []
    for step in range(40):
        loss, logs = model.loss(x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        recs.append(logs["rec"])
    assert sum(recs[-5:]) / 5 < 0.6 * sum(recs[:5]) / 5, f"rec went {recs[0]:.3f} -> {recs[-1]:.3f}"


# --------------------------------------------------------------------------------------------- vector quantiser
def test_quantize_picks_the_nearest_code_in_range_with_straight_through_values():
    model = vq_tiny().eval()
    z = torch.randn(2, 4, 4, 4) * 0.1
    z_q, indices, stats = model.quantize(z)
    codes = model.quantizer.codebook.weight
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, codes).argmin(dim=1).view(2, 4, 4)
    assert indices.dtype == torch.long and indices.min() >= 0 and indices.max() < 16
    assert torch.equal(indices, expected)
    torch.testing.assert_close(z_q, codes[indices].permute(0, 3, 1, 2))
    torch.testing.assert_close(stats["commit"], ((z - z_q) ** 2).mean())
    torch.testing.assert_close(stats["codebook"], stats["commit"])


def test_straight_through_gradient_reaches_the_encoder():
    model, x = vq_tiny(), images(2, 8)
    z_e = model.encode(x)
    z_q, _, _ = model.quantize(z_e)
    rec = model.reconstruction_loss(model.decoder(model.post_quant_conv(z_q)), x)
    rec.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.quantizer.codebook.weight.grad is None  # the rec loss alone does not move the codes


def test_perplexity_and_codes_used():
    vq = VectorQuantizer(8, 2, usage_decay=0.9, dead_code_threshold=0.0)
    uniform = vq.usage_stats(torch.arange(8).repeat(3))
    single = vq.usage_stats(torch.zeros(10, dtype=torch.long))
    torch.testing.assert_close(uniform["perplexity"], torch.tensor(8.0))
    torch.testing.assert_close(single["perplexity"], torch.tensor(1.0))
    assert float(uniform["codes_used"]) == 8 and float(single["codes_used"]) == 1


def test_dead_codes_restart_onto_batch_vectors_deterministically():
    def restarted(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        vq = VectorQuantizer(8, 2, usage_decay=0.9, dead_code_threshold=0.5)
        vq.usage.fill_(1 / 8)
        vq.usage[[1, 5]] = 0.0  # two dead codes
        z = torch.randn(1, 2, 4, 4) + 10.0
        assert vq.restart_dead_codes(z) == 2
        flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
        for k in (1, 5):
            assert (flat - vq.codebook.weight[k]).abs().sum(1).min() == 0  # code k is one of the batch vectors
        assert vq.codebook.weight[[0, 2, 3, 4, 6, 7]].abs().max() < 1  # live codes untouched
        return vq.codebook.weight.detach().clone()

    assert torch.equal(restarted(7), restarted(7))


def test_tiny_vq_training_keeps_several_codes_in_use():
    model, x = vq_tiny(num_embeddings=32, usage_decay=0.8), images(4, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss, logs = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"rec", "codebook", "commit", "perplexity", "codes_used"} <= set(logs)
    with torch.no_grad():
        _, indices, stats = model.eval().quantize(model.encode(x))
    # with dead-code restarts ~26 of 32 codes are in use here; without them (threshold 0) the codebook collapses to ~4
    assert float(stats["perplexity"]) > 8.0 and float(stats["codes_used"]) > 8, stats
    assert indices.max() < 32


# --------------------------------------------------------------------------------------------- registry and Hub
@pytest.mark.parametrize("name", AUTOENCODERS.names())
def test_every_registered_autoencoder_encodes_and_decodes(name: str):
    model = AUTOENCODERS.build(name, tiny=True).eval()
    assert max(model.config.channels) <= 16
    f = int(name.split("-f")[1])
    assert model.downsample_factor == f and model.latent_channels == 4 and model.scaling_factor == 1.0
    x = images(2, 32)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 4, 32 // f, 32 // f)
        assert model.decode(z).shape == x.shape
    loss, logs = model.loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss) and "rec" in logs


def test_registered_defaults_match_the_latent_shapes_of_the_catalog():
    for name, side in (("kl-f4", 16), ("kl-f8", 8), ("vq-f4", 16), ("vq-f8", 8)):
        config = AUTOENCODERS.build(name, latent_channels=4).config
        assert 64 // config.downsample_factor == side and config.latent_channels == 4
    assert AUTOENCODERS.build("vq-f8", latent_channels=3).config.embed_dim == 3


@pytest.mark.parametrize("make", [kl_tiny, vq_tiny])
def test_save_pretrained_round_trip(make, tmp_path):
    model = make()
    model.loss(images(2, 8))  # a training step's state: the VQ usage buffer and restarted codes
    model.config = model.config.replace(scaling_factor=0.37)  # as the training stage stores its measurement
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.scaling_factor == 0.37
    x = images(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)), rtol=0, atol=0)


def test_estimate_scaling_factor_is_one_over_the_latent_std():
    model, x = kl_tiny().eval(), images(5, 8)
    scale = estimate_scaling_factor(model, x, batch_size=2)
    with torch.no_grad():
        z = model.encode(x)
    assert math.isclose(scale, 1 / float(z.std()), rel_tol=1e-5)
    assert math.isclose(float((z * scale).std()), 1.0, rel_tol=1e-5)
    assert estimate_scaling_factor(vq_tiny().eval(), x) > 0


# --------------------------------------------------------------------------------------------- diffusers as oracle
@pytest.mark.parametrize("mid_attention", [True, False])
def test_converted_diffusers_autoencoder_gives_the_same_outputs(mid_attention: bool):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        mid_block_add_attention=mid_attention,
    ).eval()
    ours = AutoencoderKL(AutoencoderKLConfig(**config_from_diffusers(dict(theirs.config))))
    ours.load_state_dict(state_dict_from_diffusers(theirs.state_dict()), strict=True)
    ours.eval()
    x = images(2, 16)
    with torch.no_grad():
        q_theirs, q_ours = theirs.encode(x).latent_dist, ours.encode_dist(x)
        torch.testing.assert_close(q_ours.mean, q_theirs.mean, rtol=0, atol=1e-4)
        torch.testing.assert_close(q_ours.logvar, q_theirs.logvar, rtol=0, atol=1e-4)
        z = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, rtol=0, atol=1e-4)
    assert ours.scaling_factor == pytest.approx(0.18215)


def test_diffusers_conversion_errors_name_the_problem():
    with pytest.raises(ValueError, match="'encoder.mystery.weight'"):
        state_dict_from_diffusers({"encoder.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shift_factor"):
        config_from_diffusers({"block_out_channels": (8, 16), "shift_factor": 0.1})
    with pytest.raises(ValueError, match="multiples"):
        config_from_diffusers({"block_out_channels": (8, 12)})
    with pytest.raises(ValueError, match="down_block_types"):
        config_from_diffusers({"block_out_channels": (8, 16), "down_block_types": ["DownBlock2D"] * 2})
    assert rename_key("decoder.mid_block.attentions.0.proj_attn.weight") == "decoder.mid.attn.proj.weight"
    assert rename_key("encoder.down_blocks.1.resnets.0.conv_shortcut.bias") == "encoder.down.1.res.0.skip.bias"
    conv = state_dict_from_diffusers({"encoder.mid_block.attentions.0.query.weight": torch.ones(4, 4, 1, 1)})
    assert conv["encoder.mid.attn.q.weight"].shape == (4, 4)


# --------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("make", [kl_tiny, vq_tiny])
def test_bad_images_raise_clear_errors(make):
    model = make()
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode([[0.0]])
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4-D"):
        model.encode(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="3 channels"):
        model.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
        model.encode(torch.zeros(1, 3, 8, 7))
    with pytest.raises(ValueError, match="4 channels"):
        model.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        model.loss(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize(
    ("config_class", "bad", "message"),
    [
        (AutoencoderKLConfig, {"norm_groups": 3}, "norm_groups=3 must divide"),
        (AutoencoderKLConfig, {"channel_mult": ()}, "channel_mult"),
        (AutoencoderKLConfig, {"channel_mult": (1, 0)}, "channel_mult"),
        (AutoencoderKLConfig, {"latent_channels": 0}, r"KLConfig.latent_channels must be .*\[1, 8192\] .*, got 0"),
        (AutoencoderKLConfig, {"base_channels": 8.0}, "base_channels must be an integer"),
        (AutoencoderKLConfig, {"rec_loss": "l3"}, "rec_loss must be one of"),
        (AutoencoderKLConfig, {"scaling_factor": 0.0}, r"scaling_factor must be a finite number in \(0.0"),
        (AutoencoderKLConfig, {"scaling_factor": float("nan")}, "scaling_factor"),
        (AutoencoderKLConfig, {"kl_weight": -1.0}, "kl_weight"),
        (AutoencoderKLConfig, {"mid_attention": "yes"}, "mid_attention must be a bool"),
        (VQAutoencoderConfig, {"num_embeddings": 1}, "Config.num_embeddings must be an integer >= 2, got 1"),
        (VQAutoencoderConfig, {"beta": -0.1}, "beta"),
        (VQAutoencoderConfig, {"usage_decay": 1.0}, r"usage_decay must be a finite number in \[0.0, 1.0\)"),
        (VQAutoencoderConfig, {"dead_code_threshold": True}, "dead_code_threshold"),
    ],
)
def test_bad_configs_raise_clear_errors(config_class, bad, message):
    with pytest.raises(ValueError, match=message):
        config_class(**{**TINY, **bad})


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="takes a AutoencoderKLConfig"):
        AutoencoderKL(VQAutoencoderConfig(**TINY))
    with pytest.raises(TypeError, match="config must be a VQAutoencoderConfig"):
        vq_tiny().config = AutoencoderKLConfig(**TINY)
    with pytest.raises(ValueError, match="even channel count"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        estimate_scaling_factor(kl_tiny(), images(2, 8), batch_size=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        AUTOENCODERS.build("kl-f4", tiny=True, latent_chanels=4)
    assert kl_module.kl_f4 is AUTOENCODERS.get("kl-f4") and vq_module.vq_f8 is AUTOENCODERS.get("vq-f8")


# --------------------------------------------------------------------------------------------- growing the decoder
@pytest.mark.parametrize("make", [kl_tiny, vq_tiny])
def test_a_grown_decoder_computes_what_the_old_one_did_and_saves_and_loads(make, tmp_path):
    from components.autoencoders.blocks import grow_decoder

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # random weights everywhere, so an identity block is not an accident of zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    grown = grow_decoder(model, 2)
    assert grown.config.decoder_extra_blocks == 2 and grown.config.decoder_blocks == model.config.decoder_blocks + 2
    assert all(len(level.res) == model.config.decoder_blocks + 2 for level in grown.decoder.up)
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())
    x = images(2, 8)
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(grown.encode(x), z, rtol=0, atol=0)  # the encoder is untouched
        torch.testing.assert_close(grown.decode(z), model.decode(z), rtol=0, atol=0)  # the new blocks: identity
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path)
    assert loaded.config == grown.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), grown.decode(z), rtol=0, atol=0)
    twice = grow_decoder(loaded, 1)  # growing a grown decoder appends after the blocks it has
    assert twice.config.decoder_extra_blocks == 3
    with torch.no_grad():
        torch.testing.assert_close(twice.decode(z), model.decode(z), rtol=0, atol=0)


def test_decoder_growth_refuses_bad_counts_and_changes_nothing():
    from components.autoencoders.blocks import grow_decoder

    model = kl_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="extra"):
            grow_decoder(model, bad)
    with pytest.raises(ValueError, match="decoder_extra_blocks"):
        AutoencoderKLConfig(**TINY, decoder_extra_blocks=-1)
    assert model.config.decoder_extra_blocks == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_config_saved_before_decoder_extra_blocks_existed_loads_as_zero_and_other_gaps_are_refused(tmp_path):
    import json

    from components.base import WeightsError

    model = kl_tiny().eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    del data["decoder_extra_blocks"]  # as every config.json written before session 5
    path.write_text(json.dumps(data))
    loaded = AutoencoderKL.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.config.decoder_extra_blocks == 0
    del data["base_channels"]
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r"misses fields \['base_channels'\]"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_the_round_trip_by_shape_script_counts_every_image_once(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "roundtrip_by_shape.py"
    spec = importlib.util.spec_from_file_location("roundtrip_by_shape", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    AUTOENCODERS.build("kl-f4", tiny=True).save_pretrained(tmp_path / "ae")
    table = script.by_shape(str(tmp_path / "ae"), n=12, seed=1)
    assert sum(total for _, total in table.values()) == 12 and all(0 <= r <= t for r, t in table.values())
    shapes = ("circle", "square", "triangle")
    assert set(table) <= {f"{size} {shape}" for size in ("small", "large") for shape in shapes}
    script.main([str(tmp_path / "ae"), "--images", "12"])
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'ae'}: all ")
