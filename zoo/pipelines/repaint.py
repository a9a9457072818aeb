"""RePaint (Lugmayr et al. 2022, arXiv:2201.09865): training-free inpainting by resampling, for any pipeline.

Alg. 1: at each step the known region of x_{t-1} is the input forward-noised, q(x_{t-1} | x_0) (DDPM Eq. 4;
Alg. 1 line 5), the unknown region the model's sample of p_theta(x_{t-1} | x_t) (DDPM Alg. 2; Alg. 1 line 7),
x_{t-1} = m x^known + (1 - m) x^unknown (line 8; their m is 1 where known, ours, `mask`, is 1 where repainted).
That much is the blended step (editing.py's `Blend`). Resampling (Alg. 1 lines 9-10, Sec. 4.2): the chain
goes back up, x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (DDPM Eq. 2), and down again, so
the model sees the known region and its own sample at one noise level and harmonises them; r times at each
step in Alg. 1. Jumps (Sec. 4.2, "jump length"): j steps up at once, every j-th step, r - 1 times: the
schedule of the authors' code (get_schedule_jump; diffusers' RePaintScheduler.set_timesteps), here on the
sampler's grid of S steps, each step up the respaced forward step with beta' = 1 - alpha_bar_t / alpha_bar_t'
(the DDPM sampler's respacing, components/samplers/ddpm.py). The paper uses j = 10, r = 10 (Sec. 5).

Notation (code -> paper): `mask` -> 1 - m; `jump` -> j; `resample` -> r (Alg. 1's U).

One departure, chosen so that r = 1 is exactly the blended step: the known region is noised with the starting
noise at every level (as diffusers' inpainting pipelines blend), where Alg. 1 line 4 draws a fresh eps each
step; each level's known region is still a sample of q(x_t | x_0). DDPM's ancestral sampler only: RePaint is
defined on Alg. 2's stochastic steps (DDIM and DPM-Solver++ are refused).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from components.samplers.common import Grid, Sampler, randn_like
from components.samplers.ddpm import ancestral_step
from components.samplers.denoiser import Denoiser
from components.validation import require_choice, require_int
from zoo.pipelines.editing import Blend

INPAINT_METHODS = ("blend", "repaint")  # the training-free inpainting methods `generate(inpaint=...)` offers
MAX_RESAMPLE = 100  # r: each resampling costs another pass over the jumped steps


@dataclasses.dataclass(frozen=True)
class RePaint:
    """RePaint's schedule: jump length j and resampling count r (Lugmayr et al. 2022, Sec. 4.2)."""

    jump: int = 10  # j: steps gone back up at once (the paper's 10)
    resample: int = 10  # r: passes over each stretch of j steps (the paper's 10; 1 = no resampling)

    def path(self, steps: int) -> list[int]:
        """The positions on a grid of `steps` steps the chain visits, 0 (x at the first timestep) to S (x_0):
        get_schedule_jump's walk, which after landing on each position S - k (k = 0, j, 2j, ... < S - j)
        goes j positions back up, r - 1 times."""
        jumps = {steps - k: self.resample - 1 for k in range(0, steps - self.jump, self.jump)}
        position, path = 0, [0]
        while position < steps:
            position += 1
            path.append(position)
            if jumps.get(position, 0) > 0:
                jumps[position] -= 1
                path.extend(range(position - 1, position - self.jump - 1, -1))
                position -= self.jump
        return path

    def denoising_steps(self, steps: int) -> int:
        """How many steps down the walk takes (each one network evaluation, two with guidance)."""
        path = self.path(steps)
        return sum(there > here for here, there in zip(path, path[1:], strict=False))

    def check(self, sampler: Sampler, grid: Grid) -> None:
        """The sampler must be DDPM's, and with r > 1 the grid long enough for a jump (j < S)."""
        if sampler.name != "ddpm":
            raise ValueError(
                f"inpaint='repaint' resamples DDPM's ancestral steps (Alg. 2): use sampler='ddpm' (or leave it "
                f"unset), got {sampler.name!r}"
            )
        if self.resample > 1 and self.jump >= len(grid):
            raise ValueError(
                f"repaint_jump={self.jump} must be below the {len(grid)} steps that run (steps x strength): no jump "
                "back would fit"
            )

    def sample(
        self, denoiser: Denoiser, x: torch.Tensor, grid: Grid, *, generator: torch.Generator, blend: Blend
    ) -> torch.Tensor:
        """x_0 by Alg. 1 with jumps: down a position, DDPM's ancestral step then the blended known region
        (lines 5-8); up from position a to a - 1, x ~ q(x_t | x_t'') with the respaced beta' (line 10)."""
        alphas_cumprod, steps = grid.alphas_cumprod, list(grid)
        path = self.path(len(grid))
        for here, there in zip(path, path[1:], strict=False):
            if there > here:
                x, x0 = ancestral_step(denoiser, x, steps[here], generator)
                x = blend(here, x, x0)
            else:
                beta = 1.0 - alphas_cumprod[there] / alphas_cumprod[here]  # respaced forward step, DDPM Eq. 2
                x = math.sqrt(1.0 - beta) * x + math.sqrt(beta) * randn_like(x, generator)
        return x


def inpainting_method(
    inpaint: str | None, jump: int | None, resample: int | None, *, masked: bool, trained: bool = False
) -> RePaint | None:
    """`generate`'s inpaint, repaint_jump and repaint_resample checked: a RePaint for inpaint='repaint', None for
    the blended step (inpaint None or 'blend'), or a clear error."""
    if inpaint is not None:
        require_choice("inpaint", inpaint, INPAINT_METHODS)
        if not masked:
            raise ValueError(f"inpaint={inpaint!r} needs a mask: pass image= and mask_image=")
        if trained:
            raise ValueError(
                f"this model is trained to inpaint (the mask goes in by concatenation): inpaint={inpaint!r} chooses a "
                "training-free method, for the other pipelines; leave it unset"
            )
    if inpaint != "repaint":
        if jump is not None or resample is not None:
            raise ValueError("repaint_jump and repaint_resample apply only with inpaint='repaint'")
        return None
    defaults = RePaint()
    jump = require_int("repaint_jump", defaults.jump if jump is None else jump, minimum=1)
    why = "each resampling is another pass over the steps"
    resample = defaults.resample if resample is None else resample
    resample = require_int("repaint_resample", resample, minimum=1, maximum=MAX_RESAMPLE, why=why)
    return RePaint(jump, resample)
