"""Pixel-space DDPM (Ho et al. 2020): an unconditional U-Net denoises 64x64 images directly."""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from components.samplers.common import Callback
from components.samplers.denoiser import Denoiser
from zoo.pipelines.base import Pipeline, check_num_images, check_seed, to_pil, to_tensor

logger = logging.getLogger(__name__)


class PixelPipeline(Pipeline):
    """x_T ~ N(0, I) in pixel space, denoised by the sampler; no autoencoder, no condition."""

    def generate(
        self,
        prompt: str | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        num_images: int = 1,
        callback: Callback | None = None,
        **unused: Any,
    ) -> list[Image.Image]:
        """Sample `num_images` images; the same seed gives the same images. A prompt is ignored (unconditional)."""
        if prompt:
            logger.warning("%s is unconditional: the prompt %r is ignored", self.recipe.name, prompt)
        seed, num_images = check_seed(seed), check_num_images(num_images)
        size = self.recipe.image_size
        x_T, generator = self.noise((num_images, self.unet.config.in_channels, size, size), seed)
        denoiser = Denoiser(self.unet, self.schedule, self.recipe.prediction_type, clip_x0=1.0)  # pixels in [-1, 1]
        x0 = self.sample(
            denoiser,
            x_T,
            sampler=sampler or self.recipe.sampler,
            steps=self.recipe.steps if steps is None else steps,
            generator=generator,
            callback=callback,
        )
        return to_pil(x0)

    @torch.no_grad()
    def forward_noise(self, image: Any, t: int, *, seed: int = 0, space: str = "pixel") -> Image.Image:
        """x_t from the closed form q(x_t | x_0) (DDPM Eq. 4), as an image; t in [0, T], t = 0 the image itself."""
        if space != "pixel":
            raise ValueError(f"{self.recipe.name} diffuses in pixel space; space must be 'pixel', got {space!r}")
        t, seed = self.check_t(t), check_seed(seed)
        x0 = to_tensor(image, self.recipe.image_size).to(self.device)
        return to_pil(self.closed_form(x0, t, seed))[0]
