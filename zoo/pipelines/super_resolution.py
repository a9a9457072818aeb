"""Super-resolution by concatenation (LDM, Rombach et al. 2022, Sec. 4.4): the low-resolution image y is
concatenated to z_t (tau = identity) at latent resolution, so a KL-f4 model upsamples 16x16 RGB to 64x64.

The degradation is LDM's (Sec. 4.4, after SR3): bicubic downsampling by the autoencoder's factor, here with
antialiasing (as PIL resizes), values kept in [-1, 1].

Noise augmentation (the Stable Diffusion x4 upscaler's, diffusers' StableDiffusionUpscalePipeline): y is noised to
a level s by the forward process, y_s ~ q(x_s | x_0 = y) (DDPM Eq. 4), with the pipeline's own noise schedule
(the upscaler keeps a separate one: CompVis "linear", linear in sqrt(beta) from 1e-4 to 0.02 over T = 1000; one
schedule is simpler to read here), and s enters the U-Net as a
class label whose embedding is added to the time embedding (the upscaler's `class_labels=noise_level` into
`num_class_embeds = max_noise_level + 1` embeddings; our UNet's `class_embedding`). Training draws s uniformly in
[0, max_noise_level]; at sampling s is chosen (0 by default: our inputs are clean downsamples). s = 0 is the
clean image; s >= 1 is the paper's t = s (0-based index s - 1, as `Pipeline.closed_form`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from components.schedulers.schedule import NoiseSchedule
from components.validation import require_int
from zoo.pipelines import image_input

LOW_RES_CHANNELS = 3  # the low-res image's RGB channels, concatenated after z_t's


def low_res_of(images: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, side, side): bicubic downsampling with antialiasing (LDM Sec. 4.4)."""
    small = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return small.clamp(-1, 1)


def bicubic_upsampled(low_res: torch.Tensor, side: int) -> torch.Tensor:
    """The baseline the model is compared with: (B, 3, h, w) -> (B, 3, side, side) by bicubic interpolation."""
    return F.interpolate(low_res.float(), size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)


def noised_low_res(
    schedule: NoiseSchedule, low_res: torch.Tensor, levels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """y_s ~ q(x_s | x_0 = y), DDPM Eq. 4, at each image's level s (B,): s = 0 keeps y, s >= 1 is index s - 1."""
    eps = torch.randn(low_res.shape, generator=generator).to(low_res)
    index = (levels - 1).clamp_min(0).to(low_res.device)
    x_s = schedule.q_sample(low_res, index, eps)
    return torch.where((levels == 0).to(low_res.device)[:, None, None, None], low_res, x_s)


def check_noise_level(noise_level: Any, largest: int, name: str) -> int:
    """The sampling noise level s: 0 unless the model was trained with noise augmentation up to `largest`."""
    if noise_level is None:
        return 0
    if not largest:
        why = f"{name} was trained without noise augmentation, its recipe noise_augmentation is 0: leave it unset"
        return require_int("noise_level", noise_level, minimum=0, maximum=0, why=why)
    why = f"{name}'s recipe noise_augmentation, the largest level it was trained on"
    return require_int("noise_level", noise_level, minimum=0, maximum=largest, why=why)


def load_low_res(image: Any, side: int, name: str) -> torch.Tensor:
    """The low-res image as (1, 3, side, side) in [-1, 1] (image_input.py's checks; another size is resized)."""
    if image is None:
        raise ValueError(f"{name} upsamples a low-resolution image: pass image= (a {side}x{side} RGB image)")
    return image_input.load_image(image, side, side)
