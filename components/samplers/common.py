"""What the samplers share: the timestep subsequence, argument checks, the model call, noise and progress.

Timesteps are 0-based training indices (t = 0 is the paper's t = 1), as in components/schedulers/schedule.py.
A sampler visits the descending subsequence tau_1 > ... > tau_S of [0, T - 1] (DDIM Sec. 4.2 "respacing");
after the last one comes "t = -1", the data, where alpha_bar = 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from components.schedulers.schedule import NoiseSchedule, check_prediction_type

logger = logging.getLogger(__name__)

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def check_steps(num_timesteps: int, steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an integer in [1, {num_timesteps}] (the schedule's T), got {steps!r}")
    return steps


def spaced_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """`steps` descending training timesteps, as diffusers' DDIMScheduler.set_timesteps spaces them.

    Lin et al. 2024 (arXiv:2305.08891) Table 2: "linspace" rounds linspace(0, T-1, S); "leading" takes
    multiples of T // S (+ offset, diffusers' steps_offset, which only "leading" uses); "trailing" counts
    down from T - 1 in strides of T / S, so the first step starts at the last training timestep.
    """
    T, S = num_timesteps, check_steps(num_timesteps, steps)
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; allowed: {', '.join(TIMESTEP_SPACINGS)}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or (offset and spacing != "leading"):
        raise ValueError(
            f"steps_offset must be a non-negative integer, and non-zero only with 'leading', got {offset!r}"
        )
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


def step_pairs(timesteps: list[int]) -> Iterator[tuple[int, int, int]]:
    """(step_index, t, t_prev) over the subsequence, with t_prev = -1 (the data) after the last step."""
    for i, t in enumerate(timesteps):
        yield i, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1


def alpha_bar(schedule: NoiseSchedule, t: int) -> float:
    """alpha_bar_t as a float64 Python float; 1 at t = -1 (x_0 itself, diffusers' set_alpha_to_one)."""
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def check_sampler_args(x: torch.Tensor, prediction_type: str, clip_x0: float | None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (the starting noise x_T), got {type(x).__name__}")
    check_prediction_type(prediction_type)
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be None or a positive bound (e.g. 1.0 for pixels), got {clip_x0!r}")


def predict(
    model: Model, x: torch.Tensor, t: int, schedule: NoiseSchedule, prediction_type: str, clip_x0: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) predicted at timestep t; x0 clamped to [-clip_x0, clip_x0] when asked (eps is left as predicted)."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps, x0 = schedule.split_prediction(model(x, t_batch), x, t_batch, prediction_type)
    return eps, x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (a CPU generator gives the same
    numbers on every device), then moved to x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def progress_bar(pairs: Iterator, total: int, enabled: bool) -> Iterator:
    return tqdm(pairs, total=total, disable=not enabled, desc="sampling")


def report(callback: Callback | None, step_index: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(step_index, x, x0)
