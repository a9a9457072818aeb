"""Pixel-space DDPM (Ho et al. 2020): an unconditional U-Net denoises 64x64 images directly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from components.samplers.common import Callback
from components.samplers.denoiser import Denoiser
from components.schedulers.losses import Bound, bound
from zoo.pipelines.base import Pipeline, check_num_images, check_seed, to_pil, to_tensor
from zoo.pipelines.repaint import inpainting_method

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
        image: Any = None,
        strength: float = 1.0,
        mask_image: Any = None,
        latents: torch.Tensor | None = None,
        inpaint: str | None = None,
        repaint_jump: int | None = None,
        repaint_resample: int | None = None,
        **unused: Any,
    ) -> list[Image.Image]:
        """Sample `num_images` images; the same seed gives the same images. A prompt is ignored (unconditional).

        image, strength: image-to-image (SDEdit) from the image noised to `strength` of the grid; mask_image (white
        = repaint): the rest kept, exactly, by the blended step (zoo/pipelines/editing.py), or with
        inpaint="repaint" by RePaint's resampling (jump length repaint_jump, repaint_resample passes; DDPM's sampler;
        zoo/pipelines/repaint.py). latents: x_T (or the eps that noises the image), (num_images, 3, size, size)."""
        if prompt:
            logger.warning("%s is unconditional: the prompt %r is ignored", self.recipe.name, prompt)
        seed, num_images = check_seed(seed), check_num_images(num_images)
        size = self.recipe.image_size
        repaint = inpainting_method(inpaint, repaint_jump, repaint_resample, masked=mask_image is not None)
        edit = self.edit_inputs(image, mask_image, size, size)
        # a learned variance (2C outputs) is split by the denoiser: DDPM steps with Sigma_theta, DDIM the mean part
        denoiser = Denoiser(
            self.network, self.schedule, self.recipe.prediction_type, clip_x0=1.0, model_variance=self.recipe.variance
        )  # pixels in [-1, 1]
        x0 = self.draw(
            denoiser,
            (num_images, self.unet.config.in_channels, size, size),
            seed=seed,
            sampler=sampler,
            steps=self.recipe.steps if steps is None else steps,
            callback=callback,
            latents=latents,
            strength=strength,
            repaint=repaint,
            **edit,
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

    @torch.no_grad()
    def vlb(
        self,
        images: Any,
        *,
        stride: int = 1,
        exact_below: int = 50,
        seed: int = 0,
        batch: int = 64,
        clip_x0: bool = True,
    ) -> Bound:
        """The variational bound of DDPM Eq. 5 on 8-bit RGB images, term by term, in bits/dim (`Bound`).

        images: a PIL image, a uint8 HxWx3 array, a float (3, H, W) / (B, 3, H, W) tensor in [-1, 1] on the 256
        bins, or a list of those, at the recipe's image_size (never resized: the bound is of these pixels).
        stride 1 evaluates every KL term (exact up to one x_t draw per term, T network calls); stride k the terms
        below `exact_below` and then every k-th (components/schedulers/losses.py, `strided_timesteps`). The
        variance is the recipe's (fixed_small, fixed_large or the U-Net's learned one). Same seed, same x_t.
        batch: at most this many images per U-Net call (fewer images: several timesteps per call; the same x_t).
        clip_x0: the bound of the model the samplers run, x0_hat clipped to [-1, 1] (as DDPM's and improved
        DDPM's bits/dim evaluation, clip_denoised=True). Off, the last term L_{T-1} of a cosine schedule (beta
        clipped to 0.999, so the mean's error is weighted by 1 / alpha_t ~ 1000) can outweigh all the others.
        """
        x0 = bound_images(images, self.recipe.image_size).to(self.device)
        generator = torch.Generator("cpu").manual_seed(check_seed(seed))
        model = lambda x_t, t: self.unet(x_t.to(self.dtype), t).float()  # noqa: E731
        return bound(
            model,
            x0,
            self.schedule,
            stride=stride,
            exact_below=exact_below,
            generator=generator,
            batch=batch,
            clip_x0=clip_x0,
            prediction_type=self.recipe.prediction_type,
            model_variance=self.recipe.variance,
        )


def bound_images(images: Any, size: int) -> torch.Tensor:
    """(B, 3, size, size) float32 on the 256 bins of [-1, 1], or a clear error: the bound's discretised decoder
    (DDPM Eq. 13) measures 8-bit RGB pixels, so other modes, sizes and off-grid values are refused, not converted."""
    items = list(images) if isinstance(images, Sequence) and not isinstance(images, str) else [images]
    if not items:
        raise ValueError("vlb() needs at least one image")
    batches = []
    for i, image in enumerate(items):
        if isinstance(image, Image.Image) and image.mode != "RGB":
            raise ValueError(
                f"image {i} has mode {image.mode!r}: the bound is of 8-bit RGB images; convert it yourself "
                "(image.convert('RGB')) if that is the image you mean"
            )
        if isinstance(image, np.ndarray) and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
            raise ValueError(f"image {i}: an array must be uint8 HxWx3 (RGB), got {image.dtype} {image.shape}")
        x = to_tensor(image)
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"image {i} is {x.shape[-1]}x{x.shape[-2]}; this pipeline's bound is of {size}x{size} images"
            )
        levels = (x.double() + 1) * 127.5
        if not (levels.min() >= -1e-4 and levels.max() <= 255 + 1e-4 and (levels - levels.round()).abs().max() < 1e-3):
            raise ValueError(
                f"image {i}: a tensor must hold 8-bit levels k / 127.5 - 1 in [-1, 1], got values in "
                f"[{x.min():.3g}, {x.max():.3g}] (off the 256 bins the discretised decoder measures)"
            )
        batches.append((levels.round() / 127.5 - 1).float())
    return torch.cat(batches)
