"""The KL-regularised autoencoder of latent diffusion (LDM, Rombach et al. 2022, Sec. 3.1: "KL-reg.").

E(x) gives the moments of q(z|x) = N(mean, diag(var)); the training objective is reconstruction + a slight
KL(q || N(0, I)) penalty. LDM weights a per-sample *sum* of |x - x_hat| against kl_weight * KL (kl_weight 1e-6);
we divide the whole objective by D = C*H*W, so "rec" is a per-pixel mean and kl_weight keeps LDM's meaning.
Perceptual (LPIPS) and adversarial terms of LDM's autoencoder training are left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from components.autoencoders.blocks import AutoencoderConfig, DiagonalGaussian, LatentAutoencoder, check_float
from components.registry import AUTOENCODERS

TINY = {"base_channels": 8, "norm_groups": 4}


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(AutoencoderConfig):
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self, "kl_weight", low=0.0, high=math.inf)


class AutoencoderKL(LatentAutoencoder):
    """encoder -> quant_conv -> q(z|x);  z -> post_quant_conv -> decoder (the diffusers AutoencoderKL tree)."""

    config_class = AutoencoderKLConfig

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__(config)
        c = 2 * config.latent_channels  # mean and log-variance
        self.encoder = self.build_encoder(c)
        self.quant_conv = nn.Conv2d(c, c, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = self.build_decoder()

    def encode_dist(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x) for images x (B, in_channels, H, W) in [-1, 1]."""
        self.check_images(x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Unscaled latents (B, latent_channels, H/f, W/f): the posterior mean, or a reparameterised sample."""
        posterior = self.encode_dist(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents -> images (B, out_channels, h*f, w*f)."""
        self.check_latents(z)
        return self.decoder(self.post_quant_conv(z))

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
        """(rec + kl_weight * KL / D, logs): rec on the decoded posterior sample, KL summed per sample, batch mean."""
        posterior = self.encode_dist(x)
        x_hat = self.decode(posterior.sample(generator))
        rec = self.reconstruction_loss(x_hat, x)
        kl = posterior.kl().float().mean()
        loss = rec + self.config.kl_weight * kl / x[0].numel()
        return loss, {"rec": float(rec.detach()), "kl": float(kl.detach())}


def build(base: dict[str, Any], overrides: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(AutoencoderKLConfig(**{**base, **overrides}))


@AUTOENCODERS.register("kl-f4", description="KL autoencoder, f=4: 64x64x3 -> 16x16x4 latents", tiny=TINY)
def kl_f4(**overrides: Any) -> AutoencoderKL:
    """KL-regularised autoencoder, downsampling factor 4 (LDM's KL-f4)."""
    return build({"channel_mult": (1, 2, 2)}, overrides)


@AUTOENCODERS.register(
    "kl-f8", description="KL autoencoder, f=8: 64x64x3 -> 8x8x4 latents", tiny={**TINY, "channel_mult": (1, 1, 2, 2)}
)
def kl_f8(**overrides: Any) -> AutoencoderKL:
    """KL-regularised autoencoder, downsampling factor 8 (LDM's KL-f8, Stable Diffusion's VAE shape)."""
    return build({"channel_mult": (1, 2, 2, 4)}, overrides)
