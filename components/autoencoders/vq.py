"""The VQ-regularised autoencoder of latent diffusion (LDM, Rombach et al. 2022, Sec. 3.1: "VQ-reg.").

Diffusion runs on the *pre-quantisation* latents; the quantiser is "absorbed by the decoder": `encode` stops
before the codebook and `decode` quantises (nearest code) first. The objective is VQ-VAE's (van den Oord et al.
2017, Eq. 3): rec + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2, with a straight-through gradient. `latent_channels`
is LDM's `embed_dim` (the codebook vectors' width). Codebook collapse is prevented by dead-code restarts
(see `VectorQuantizer`). Perceptual (LPIPS) and adversarial terms of LDM's training are left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from components.autoencoders.blocks import (
    AutoencoderConfig,
    LatentAutoencoder,
    VectorQuantizer,
    check_float,
)
from components.registry import AUTOENCODERS

TINY = {"base_channels": 8, "norm_groups": 4, "num_embeddings": 16}


@dataclasses.dataclass(frozen=True)
class VQAutoencoderConfig(AutoencoderConfig):
    num_embeddings: int = 256
    beta: float = 0.25  # commitment weight (VQ-VAE's beta)
    usage_decay: float = 0.99  # EMA decay of each code's usage
    dead_code_threshold: float = 0.03  # restart codes used less than this fraction of uniform use (0 disables)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints("num_embeddings", minimum=2)
        check_float(self, "beta", low=0.0, high=math.inf)
        check_float(self, "usage_decay", low=0.0, high=1.0)
        check_float(self, "dead_code_threshold", low=0.0, high=1.0)

    @property
    def embed_dim(self) -> int:
        """LDM's name for the codebook width, which is the latent channel count."""
        return self.latent_channels


class VQAutoencoder(LatentAutoencoder):
    """encoder -> quant_conv -> z_e;  z -> quantize -> post_quant_conv -> decoder."""

    config_class = VQAutoencoderConfig

    def __init__(self, config: VQAutoencoderConfig):
        super().__init__(config)
        d = config.latent_channels
        self.encoder = self.build_encoder(d)
        self.quant_conv = nn.Conv2d(d, d, 1)
        self.quantizer = VectorQuantizer(config.num_embeddings, d, config.usage_decay, config.dead_code_threshold)
        self.post_quant_conv = nn.Conv2d(d, d, 1)
        self.decoder = self.build_decoder()

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Pre-quantisation latents z_e (B, latent_channels, H/f, W/f); deterministic, so `sample` changes nothing."""
        self.check_images(x)
        return self.quant_conv(self.encoder(x))

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(z + sg[e_k - z], code indices (B, h, w), stats: codebook, commit, perplexity, codes_used)."""
        self.check_latents(z)
        return self.quantizer(z)

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> nearest codes -> images (B, out_channels, h*f, w*f)."""
        z_q, _, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z_q))

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
        """(rec + codebook + beta * commit, logs); in training mode dead codes restart from this batch first."""
        z_e = self.encode(x)
        if self.training:
            self.quantizer.restart_dead_codes(z_e, generator)
        z_q, indices, stats = self.quantize(z_e)
        if self.training:
            self.quantizer.track_usage(indices)
        rec = self.reconstruction_loss(self.decoder(self.post_quant_conv(z_q)), x)
        loss = rec + stats["codebook"] + self.config.beta * stats["commit"]
        return loss, {"rec": float(rec.detach())} | {k: float(v.detach()) for k, v in stats.items()}


def build(base: dict[str, Any], overrides: dict[str, Any]) -> VQAutoencoder:
    return VQAutoencoder(VQAutoencoderConfig(**{**base, **overrides}))


@AUTOENCODERS.register("vq-f4", description="VQ autoencoder, f=4: 64x64x3 -> 16x16x4 latents, 256 codes", tiny=TINY)
def vq_f4(**overrides: Any) -> VQAutoencoder:
    """VQ-regularised autoencoder, downsampling factor 4 (LDM's VQ-f4)."""
    return build({"channel_mult": (1, 2, 2), "num_embeddings": 256}, overrides)


@AUTOENCODERS.register(
    "vq-f8",
    description="VQ autoencoder, f=8: 64x64x3 -> 8x8x4 latents, 512 codes",
    tiny={**TINY, "channel_mult": (1, 1, 2, 2)},
)
def vq_f8(**overrides: Any) -> VQAutoencoder:
    """VQ-regularised autoencoder, downsampling factor 8 (LDM's VQ-f8)."""
    return build({"channel_mult": (1, 2, 2, 4), "num_embeddings": 512}, overrides)
