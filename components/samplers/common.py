"""What the samplers share: the timestep grid, the registered sampler, noise and progress.

The contract (k-diffusion's `sample_<name>(model, x, sigmas, callback=...)`): the caller builds the grid once,
a `Denoiser` (denoiser.py) turns the network's output into (eps, x0), and the sampler only steps:

    sampler = SAMPLERS.build("ddim", eta=0.0)
    grid = sampler.grid(schedule, 50, spacing="trailing", offset=0, set_alpha_to_one=True)
    x0 = sampler.sample(Denoiser(unet, schedule, "eps"), x_T, grid, generator=generator, callback=callback)

Timesteps are 0-based training indices (t = 0 is the paper's t = 1), as in components/schedulers/schedule.py.
A grid is the descending subsequence tau_1 > ... > tau_S of [0, T - 1] (DDIM Sec. 4.2 "respacing") with
alpha_bar at each entry plus one more, where the last step lands: 1 for the data itself, or alpha_bar_0 for
DDIM with set_alpha_to_one=False (diffusers' DDIMScheduler option). img2img starts from `grid[-k:]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from components.schedulers.schedule import NoiseSchedule
from components.validation import require_choice, require_int

# callback(step_index, x_t, x0_pred) after every step; a returned tensor replaces x_t (inpainting's blend), None
# keeps it.
Callback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """`steps` descending training timesteps, as diffusers' DDIMScheduler.set_timesteps spaces them.

    Lin et al. 2024 (arXiv:2305.08891) Table 2: "linspace" rounds linspace(0, T-1, S); "leading" takes
    multiples of T // S (+ offset, diffusers' steps_offset, which only "leading" uses); "trailing" counts
    down from T - 1 in strides of T / S, so the first step starts at the last training timestep.
    """
    T = num_timesteps
    S = require_int("steps", steps, minimum=1, maximum=T, why="the schedule's T")
    require_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    require_int("steps_offset", offset, minimum=0)
    if offset and spacing != "leading":
        raise ValueError(f"steps_offset must be non-zero only with 'leading' spacing, got {offset!r} with {spacing!r}")
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, S).round()[::-1]
    elif spacing == "leading":
        timesteps = (np.arange(S) * (T // S)).round()[::-1] + offset
    else:
        timesteps = np.round(np.arange(T, 0, -T / S)[:S]) - 1  # arange may round to S + 1 entries: keep S
    if timesteps[0] > T - 1:
        raise ValueError(
            f"steps_offset={offset} pushes the first timestep to {int(timesteps[0])}, beyond T - 1 = {T - 1}"
        )
    return [int(t) for t in timesteps]


class Step(NamedTuple):
    """One step of a grid: its index, the timestep t, alpha_bar_t, and alpha_bar where the step lands."""

    index: int
    t: int
    alpha_cumprod: float
    alpha_cumprod_prev: float
    last: bool


@dataclasses.dataclass(frozen=True)
class Grid:
    """The timesteps a sampler visits and the alpha_bar of each, plus where the last step lands.

    timesteps: tau_1 > ... > tau_S (0-based training indices). alphas_cumprod: S + 1 float64 values,
    alphas_cumprod[i] = alpha_bar at timesteps[i], alphas_cumprod[S] = the end of the last step.
    A slice is a grid again: `grid[-k:]` keeps the last k steps (img2img starts there).
    """

    timesteps: tuple[int, ...]
    alphas_cumprod: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.alphas_cumprod) != len(self.timesteps) + 1 or not self.timesteps:
            raise ValueError(
                f"a grid needs S >= 1 timesteps and S + 1 alphas_cumprod, got {len(self.timesteps)} and "
                f"{len(self.alphas_cumprod)}"
            )

    @classmethod
    def on(cls, schedule: NoiseSchedule, timesteps: list[int], final_alpha_cumprod: float = 1.0) -> Grid:
        """The grid of `timesteps` on `schedule`, its last step landing at `final_alpha_cumprod`."""
        values = [float(schedule.alphas_cumprod[t]) for t in timesteps]
        return cls(tuple(timesteps), (*values, float(final_alpha_cumprod)))

    def __len__(self) -> int:
        return len(self.timesteps)

    def __getitem__(self, index: slice) -> Grid:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"a grid is sliced with a contiguous slice (e.g. grid[-k:]), got {index!r}")
        start, stop, _ = index.indices(len(self))
        return Grid(self.timesteps[start:stop], self.alphas_cumprod[start:stop] + (self.alphas_cumprod[stop],))

    def __iter__(self) -> Iterator[Step]:
        S = len(self)
        for i, t in enumerate(self.timesteps):
            yield Step(i, t, self.alphas_cumprod[i], self.alphas_cumprod[i + 1], i == S - 1)


def spaced_grid(
    schedule: NoiseSchedule, steps: int, *, spacing: str = "trailing", offset: int = 0, set_alpha_to_one: bool = True
) -> Grid:
    """diffusers' DDIMScheduler grid: spaced_timesteps, the last step landing on the data (alpha_bar = 1), or
    with set_alpha_to_one=False at alpha_bar_0, as Stable Diffusion's scheduler config asks."""
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, spacing, offset)
    return Grid.on(schedule, timesteps, 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0]))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registered sampler: how it places its timesteps (`grid`, the convention of its reference
    implementation) and the loop that steps over them (`sample(denoiser, x, grid, *, generator, callback)`)."""

    name: str
    sample: Callable[..., torch.Tensor]  # sample(denoiser, x, grid, *, generator=None, callback=None)
    grid: Callable[..., Grid]  # grid(schedule, steps, *, spacing, offset, set_alpha_to_one)


def check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (the starting noise x_T), got {type(x).__name__}")


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (a CPU generator gives the same
    numbers on every device), then moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def steps_of(grid: Grid) -> Iterator[Step]:
    """The grid's steps (progress is the callback's to report: the app's bar, a tqdm bar in a script)."""
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a Grid (sampler.grid(schedule, steps, ...)), got {type(grid).__name__}")
    return iter(grid)


def report(callback: Callback | None, step_index: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Call the callback; the tensor it returns (if any) replaces x_t."""
    replaced = callback(step_index, x, x0) if callback is not None else None
    return x if replaced is None else replaced
