"""Image-to-image and training-free inpainting: where the sampling loop starts, and the step after each step.

SDEdit (Meng et al. 2022, Sec. 3): perturb the image x_0 to an intermediate time t_0 with q(x_t0 | x_0)
(DDPM Eq. 4) and run the reverse process from there. As diffusers' img2img pipelines, `strength` picks the
start on the sampler's own grid of S steps: init_timestep = min(int(S * strength), S), and the loop runs the
last init_timestep entries (`grid[-init_timestep:]`); strength 1 starts from pure noise (the image ignored),
strength 0 runs no step and returns the image (diffusers raises there).

Inpainting without training, the blended step (Avrahami et al. 2022 "Blended Diffusion", in pixels; 2023
"Blended Latent Diffusion", in latents; diffusers' StableDiffusionInpaintPipeline for 4-channel U-Nets):
after each step the known region (mask 0) is replaced by the input noised to the level that step landed on,
x <- m x + (1 - m) q(x_t' | x_0) with the same eps as the start; after the last step by x_0 itself.
"""

from __future__ import annotations

import dataclasses

import torch

from components.samplers.common import Callback, Grid, report
from components.schedulers.schedule import NoiseSchedule
from components.validation import require_number


def check_strength(strength: float) -> float:
    return require_number("strength", strength, minimum=0, maximum=1, why="0 keeps the image, 1 ignores it")


def img2img_grid(grid: Grid, strength: float) -> Grid | None:
    """The last min(int(S * strength), S) steps of `grid` (diffusers' get_timesteps); None when that is 0."""
    init_timestep = min(int(len(grid) * strength), len(grid))
    return grid[len(grid) - init_timestep :] if init_timestep else None


def noised(schedule: NoiseSchedule, x0: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0), DDPM Eq. 4, at the 0-based timestep t for the whole batch."""
    return schedule.q_sample(x0, torch.full((x0.shape[0],), t, dtype=torch.long), eps)


@dataclasses.dataclass
class Blend:
    """The blended step of Blended (Latent) Diffusion: known region from the input, noised to the step's level."""

    schedule: NoiseSchedule
    grid: Grid  # the grid the sampler runs (after img2img_grid)
    x0: torch.Tensor  # the input in the diffusion space (B, C, h, w)
    eps: torch.Tensor  # the noise the start was drawn with
    mask: torch.Tensor  # (1, 1, h, w): 1 repaint, 0 keep
    callback: Callback | None = None  # the caller's, called with the blended x_t

    def __call__(self, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
        last = i + 1 >= len(self.grid)
        known = self.x0 if last else noised(self.schedule, self.x0, self.grid.timesteps[i + 1], self.eps)
        x = self.mask * x + (1 - self.mask) * known
        return report(self.callback, i, x, x0_pred)
