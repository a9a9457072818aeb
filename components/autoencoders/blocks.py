"""The autoencoders' shared parts: blocks, Encoder / Decoder, the diagonal Gaussian posterior, the vector quantiser.

The module tree mirrors diffusers' `AutoencoderKL` (encoder: conv_in, levels of resnets + downsampler, a mid
block resnet-attention-resnet, norm_out, conv_out; decoder symmetric with num_res_blocks + 1 resnets per level,
deepest level first), so real Stable Diffusion VAE weights load by a mechanical key renaming
(`diffusers_compat.py`); ours only: `decoder_extra_blocks` more resnets per decoder level (`grow_decoder`).
Layer choices follow LDM (Rombach et al. 2022): GroupNorm(eps=1e-6) + SiLU, no time embedding, one single-head
attention in the middle, asymmetric padding in the downsampler.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from components.base import Config, HubModule
from components.blocks import Upsample
from components.validation import MAX_BLOCKS, MAX_CHANNELS, require_int

logger = logging.getLogger(__name__)

NORM_EPS = 1e-6  # GroupNorm epsilon of the LDM / Stable Diffusion autoencoders
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps log sigma^2 to this range
REC_LOSSES = ("l1", "l2")
COUNT_KNOBS = ("in_channels", "out_channels", "base_channels", "num_res_blocks", "latent_channels", "norm_groups")


# --------------------------------------------------------------------------------------------- layers
def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    """h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); out = skip(x) + h. No time embedding (LDM autoencoder)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual: x + proj(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v = (nn.Linear(channels, channels) for _ in range(3))
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[-2]
        h = rearrange(self.norm(x), "b c h w -> b 1 (h w) c")  # one head
        h = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))
        h = rearrange(self.proj(h), "b 1 (h w) c -> b c h w", h=height)
        return x + h


class Downsample(nn.Module):
    """Halve H and W: pad right/bottom by one, then a stride-2 3x3 conv (LDM's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MidBlock(nn.Module):
    """resnet -> attention (optional) -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.res1 = ResnetBlock(channels, channels, groups)
        self.attn = AttentionBlock(channels, groups) if attention else None
        self.res2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res1(x)
        return self.res2(x if self.attn is None else self.attn(x))


class Level(nn.Module):
    """One resolution: `num_blocks` resnets, then a resampler (Downsample / Upsample) unless it is the last level."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, groups: int, resample: nn.Module | None):
        super().__init__()
        chans = [in_channels] + [out_channels] * num_blocks
        self.res = nn.ModuleList(ResnetBlock(a, b, groups) for a, b in zip(chans[:-1], chans[1:], strict=True))
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res:
            x = block(x)
        return x if self.resample is None else self.resample(x)


# --------------------------------------------------------------------------------------------- encoder / decoder
class Encoder(nn.Module):
    """x (B, in, H, W) -> (B, out, H/f, W/f), f = 2**(len(channels)-1); `config.channels` are the levels' widths."""

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int):
        super().__init__()
        channels, groups = config.channels, config.norm_groups
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        last = len(channels) - 1
        self.down = nn.ModuleList(
            Level(channels[max(i - 1, 0)], c, config.num_res_blocks, groups, Downsample(c) if i < last else None)
            for i, c in enumerate(channels)
        )
        self.mid = MidBlock(channels[-1], groups, config.mid_attention)
        self.norm_out = group_norm(channels[-1], groups)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """z (B, in, h, w) -> (B, out, h*f, w*f); levels run deepest first, each with config.decoder_blocks resnets."""

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int):
        super().__init__()
        widths, groups = tuple(reversed(config.channels)), config.norm_groups
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid = MidBlock(widths[0], groups, config.mid_attention)
        self.up = nn.ModuleList(
            Level(widths[max(i - 1, 0)], c, config.decoder_blocks, groups, Upsample(c) if i < last else None)
            for i, c in enumerate(widths)
        )
        self.norm_out = group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------- posterior
def at_least_float32(t: Tensor) -> Tensor:
    """Sums of many terms (KL, NLL) in float32 even under bf16/fp16 autocast; float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), from the encoder's 2*C moments split on the channel axis (LDM)."""

    def __init__(self, moments: Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(
                f"moments must be (B, 2*C, h, w) with an even channel count, got shape {tuple(moments.shape)}"
            )
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, Sec. 2.4)."""
        device = generator.device if generator is not None else self.mean.device  # a CPU generator on any device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar) over latent dims, per sample.

        The closed form of Kingma & Welling 2014, App. B (there written as -KL).
        """
        mean, var, logvar = (at_least_float32(t) for t in (self.mean, self.var, self.logvar))
        return 0.5 * (mean.pow(2) + var - 1.0 - logvar).sum(dim=(1, 2, 3))

    def nll(self, z: Tensor) -> Tensor:
        """-log q(z|x) = 1/2 sum(log(2 pi) + logvar + (z - mean)^2 / var) over latent dims, per sample."""
        z, mean, var, logvar = (at_least_float32(t) for t in (z, self.mean, self.var, self.logvar))
        return 0.5 * (math.log(2.0 * math.pi) + logvar + (z - mean).pow(2) / var).sum(dim=(1, 2, 3))


# --------------------------------------------------------------------------------------------- vector quantiser
class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (van den Oord et al. 2017, VQ-VAE).

    Collapse is prevented by dead-code restarts (Dhariwal et al. 2020, Jukebox, "random restarts"): `usage`
    tracks an exponential moving average of the fraction of latent vectors assigned to each code; before each
    training step, every code whose usage fell below `dead_code_threshold / num_embeddings` (that fraction of
    uniform use) is reset to a latent vector of the current batch, drawn with the given generator (the global
    torch RNG when none), so training stays deterministic given the seed. `usage` starts at zero: the first
    training step initialises the whole codebook from the data.
    """

    def __init__(self, num_embeddings: int, embed_dim: int, usage_decay: float, dead_code_threshold: float):
        super().__init__()
        self.codebook = nn.Embedding(num_embeddings, embed_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)
        self.usage_decay, self.dead_code_threshold = usage_decay, dead_code_threshold
        self.register_buffer("usage", torch.zeros(num_embeddings))

    @property
    def num_embeddings(self) -> int:
        return self.codebook.num_embeddings

    def nearest(self, z_flat: Tensor) -> Tensor:
        """k = argmin_j ||z - e_j||^2, with ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 (in float32)."""
        z, e = z_flat.float(), self.codebook.weight.float()
        dist = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ e.t() + e.pow(2).sum(1)
        return dist.argmin(dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z (B, D, h, w) -> (straight-through z_q, indices (B, h, w), stats); VQ-VAE Eq. 3's two codebook terms."""
        z_flat = rearrange(z, "b d h w -> (b h w) d")
        with torch.no_grad():
            indices = self.nearest(z_flat)
        e_k = rearrange(self.codebook(indices).to(z.dtype), "(b h w) d -> b d h w", b=z.shape[0], h=z.shape[2])
        stats = {
            "codebook": F.mse_loss(e_k.float(), z.detach().float()),  # ||sg[z_e] - e||^2 moves the codes
            "commit": F.mse_loss(z.float(), e_k.detach().float()),  # ||z_e - sg[e]||^2 keeps the encoder close
            **self.usage_stats(indices),
        }
        z_q = z + (e_k - z).detach()  # straight-through estimator: forward e_k, gradient to z as identity
        return z_q, indices.view(z.shape[0], z.shape[2], z.shape[3]), stats

    def usage_stats(self, indices: Tensor) -> dict[str, Tensor]:
        """Perplexity exp(-sum p_k log p_k) of the batch's code frequencies p_k, and the number of codes used."""
        p = torch.bincount(indices, minlength=self.num_embeddings).float() / indices.numel()
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"perplexity": entropy.exp(), "codes_used": (p > 0).sum().float()}

    @torch.no_grad()
    def track_usage(self, indices: Tensor) -> None:
        """usage <- decay * usage + (1 - decay) * (fraction of this batch's vectors assigned to each code)."""
        p = torch.bincount(indices.flatten(), minlength=self.num_embeddings).to(self.usage) / indices.numel()
        self.usage.mul_(self.usage_decay).add_(p, alpha=1.0 - self.usage_decay)

    @torch.no_grad()
    def restart_dead_codes(self, z: Tensor, generator: torch.Generator | None = None) -> int:
        """Reset each code used less than `dead_code_threshold` of uniform use to a random latent vector of `z`."""
        dead = (self.usage < self.dead_code_threshold / self.num_embeddings).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        z_flat = rearrange(z.detach(), "b d h w -> (b h w) d")
        pick = torch.randint(z_flat.shape[0], (dead.numel(),), generator=generator, device=z_flat.device)
        self.codebook.weight[dead] = z_flat[pick].to(self.codebook.weight)
        self.usage[dead] = 1.0 / self.num_embeddings  # a fresh code gets uniform usage, so it is not reset at once
        logger.debug("restarted %d dead codes", dead.numel())
        return int(dead.numel())


# --------------------------------------------------------------------------------------------- config and contract
@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(Config):
    """The encoder/decoder knobs both autoencoders share. f = 2**(len(channel_mult) - 1)."""

    added_fields = frozenset({"decoder_extra_blocks"})  # session 5; earlier config.json files mean 0
    internal_fields = frozenset({"decoder_extra_blocks"})  # the latents, and so every U-Net, stay as they were

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    mid_attention: bool = True
    norm_groups: int = 8
    rec_loss: str = "l1"
    scaling_factor: float = 1.0  # LDM: 1 / std of the training latents, see `estimate_scaling_factor`
    decoder_extra_blocks: int = 0  # resnets per decoder level beyond num_res_blocks + 1 (`grow_decoder`; not SD's)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints(*COUNT_KNOBS, minimum=1, maximum=MAX_CHANNELS, why="SD's VAE is 512 wide")
        self.check_ints("num_res_blocks", maximum=MAX_BLOCKS, why="SD's VAE uses 2")
        self.check_ints("decoder_extra_blocks", minimum=0, maximum=MAX_BLOCKS, why="a few deepen a small decoder")
        self.check_levels("base_channels")
        # Encoder and decoder: about 2 * num_res_blocks + 1 ResBlocks of two 3x3 convolutions (18 ch^2) per level.
        blocks = 2 * self.num_res_blocks + 1 + self.decoder_extra_blocks
        estimate = sum(blocks * 18 * ch * ch for ch in self.channels)
        self.check_parameters(estimate, "base_channels, channel_mult and num_res_blocks")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"norm_groups={self.norm_groups} must divide each level width {self.channels}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"mid_attention must be a bool, got {self.mid_attention!r}")
        check_float(self, "scaling_factor", low=0.0, high=math.inf, low_open=True)

    @property
    def channels(self) -> tuple[int, ...]:
        """The width of each level: base_channels * channel_mult."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def decoder_blocks(self) -> int:
        """Resnets per decoder level: num_res_blocks + 1 (LDM's and diffusers' decoder), plus decoder_extra_blocks."""
        return self.num_res_blocks + 1 + self.decoder_extra_blocks


class LatentAutoencoder(HubModule):
    """The contract pipelines use: encode / decode / loss, plus latent_channels, downsample_factor, scaling_factor.

    `config` may be replaced after training (e.g. with the measured scaling_factor): HubModule.save_pretrained
    writes the config the module holds.
    """

    config_class: type[AutoencoderConfig] = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        super().__init__()
        self.config = config

    @property
    def config(self) -> AutoencoderConfig:
        return self._config

    @config.setter
    def config(self, value: AutoencoderConfig) -> None:
        if not isinstance(value, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(value).__name__}")
        self._config = value

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    def build_encoder(self, out_channels: int) -> Encoder:
        c = self.config
        return Encoder(c, c.in_channels, out_channels)

    def build_decoder(self) -> Decoder:
        c = self.config
        return Decoder(c, c.latent_channels, c.out_channels)

    def check_images(self, x: Any) -> None:
        """Images must be a float (B, in_channels, H, W) tensor with H and W divisible by f."""
        check_float_4d(x, "images")
        f, c = self.downsample_factor, self.config.in_channels
        if x.shape[1] != c:
            raise ValueError(f"images must have {c} channels, got shape {tuple(x.shape)} (expected (B, {c}, H, W))")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"image height and width must be divisible by the downsampling factor {f}, got {tuple(x.shape[2:])}"
            )

    def check_latents(self, z: Any) -> None:
        check_float_4d(z, "latents")
        if z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have {self.latent_channels} channels, got shape {tuple(z.shape)}")

    def reconstruction_loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Mean |x - x_hat| (l1, LDM's choice) or mean (x - x_hat)^2 (l2) over every pixel value, in float32."""
        diff = x_hat.float() - x.float()
        return diff.abs().mean() if self.config.rec_loss == "l1" else diff.pow(2).mean()


def check_float(config: Config, name: str, *, low: float, high: float, low_open: bool = False) -> None:
    """ValueError unless `config.<name>` is a real number in [low, high) (or (low, high) if `low_open`)."""
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value >= high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise ValueError(f"{type(config).__name__}.{name} must be a finite number in {interval}, got {value!r}")


def check_float_4d(t: Any, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor (images in [-1, 1]), got dtype {t.dtype}")
    if t.ndim != 4:
        raise ValueError(f"{what} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")


@torch.no_grad()
def estimate_scaling_factor(
    autoencoder: LatentAutoencoder, images: Tensor, *, batch_size: int = 64, sample: bool = False
) -> float:
    """1 / std of the latents E(images), LDM Sec. 4.3 (latent rescaling): brings the latents to unit variance.

    KL latents are the posterior means unless `sample` (LDM itself used one posterior sample); VQ latents are the
    pre-quantisation latents. The std is over every latent element, like LDM's `1 / z.flatten().std()`.
    """
    require_int("batch_size", batch_size, minimum=1)
    autoencoder.check_images(images)
    z = torch.cat([autoencoder.encode(chunk, sample=sample).float() for chunk in images.split(batch_size)])
    std = float(z.flatten().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the latents have std {std}: cannot scale them to unit variance")
    return 1.0 / std


def grow_decoder(ae: LatentAutoencoder, extra: int) -> LatentAutoencoder:
    """A copy of `ae` with `extra` more resnets at the end of each decoder level (`decoder_extra_blocks`), each
    starting as the identity: its residual branch ends in conv2, which is zero-initialised, and its skip is the
    identity (same width in and out), so the grown autoencoder computes exactly what `ae` computes (tested) and a
    decoder fine-tune with the encoder frozen starts where `ae` is, with more capacity where the detail is drawn
    (the last level runs at full resolution). Function-preserving growth in the spirit of Net2Net (Chen et al.
    2016, "Net2DeeperNet"); zero-initialising the last layer of a residual branch is Goyal et al. 2017's trick.
    Ours, not LDM's: a diffusers AutoencoderKL has no such blocks, so a grown decoder stays in our layout."""
    extra = require_int("extra", extra, minimum=1, maximum=MAX_BLOCKS)
    config = ae.config.replace(decoder_extra_blocks=ae.config.decoder_extra_blocks + extra)
    grown = type(ae)(config)
    missing, unexpected = grown.load_state_dict(ae.state_dict(), strict=False)
    new_blocks = [
        (f"decoder.up.{i}.res.{k}", level.res[k])
        for i, level in enumerate(grown.decoder.up)
        for k in range(ae.config.decoder_blocks, config.decoder_blocks)
    ]
    expected = {f"{prefix}.{name}" for prefix, block in new_blocks for name in block.state_dict()}
    if unexpected or set(missing) != expected:  # a state dict this code did not make: say so, change nothing
        raise ValueError(f"cannot grow this decoder: unexpected keys {unexpected}, missing {sorted(missing)}")
    with torch.no_grad():
        for _, block in new_blocks:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
    return grown.to(next(ae.parameters()).device).train(ae.training)
