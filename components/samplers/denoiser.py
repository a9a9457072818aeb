"""The denoiser adapter: a network's output at (x_t, t) -> (eps, x0), the two predictions every sampler uses.

It is the one place that knows the network: how to call it (with its condition, and the unconditional one for
classifier-free guidance), its parameterisation ("eps", "x0" or "v") and whether x0 is clipped. Samplers
only step on what it returns. A network with more outputs than x has channels (a learned variance, improved
DDPM Sec. 3.1) is split here (`predict`), and its variance part v returned beside eps and x0.

    denoiser = Denoiser(unet, schedule, "eps", cond={"context": c}, uncond={"context": c0}, guidance_scale=3.0)
    eps, x0 = denoiser(x_t, t)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from components.schedulers.schedule import PREDICTION_TYPES, NoiseSchedule
from components.schedulers.variance import check_model_variance, split_output
from components.validation import require_choice, require_number

Network = Callable[..., torch.Tensor]  # network(x_t, t, **condition) -> output; t a LongTensor (B,)
MAX_GUIDANCE = 30


class Prediction(NamedTuple):
    """What a denoiser predicts at one step: the noise eps and the clean sample x0."""

    eps: torch.Tensor
    x0: torch.Tensor


def guided(out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance, Ho & Salimans 2022 Eq. 6: w = 1 is the conditional model, w = 0 the unconditional."""
    return out_uncond + guidance_scale * (out_cond - out_uncond)


class Denoiser:
    """`network` under its parameterisation, with classifier-free guidance (when `uncond` is given and w != 1)
    and x0 clamped to [-clip_x0, clip_x0] (eps is left as predicted: diffusers' use_clipped_model_output=False).

    model_variance "learned": the network outputs 2C channels, the mean's C then v's C (improved DDPM Sec. 3.1,
    components/schedulers/variance.py); eps and x0 come from the first half, `predict` also returns v.
    """

    def __init__(
        self,
        network: Network,
        schedule: NoiseSchedule,
        prediction_type: str = "eps",
        *,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        clip_x0: float | None = None,
        model_variance: str = "fixed_small",
    ):
        self.network, self.schedule = network, schedule
        self.model_variance = check_model_variance(model_variance)
        self.prediction_type = require_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.guidance_scale = require_number("guidance_scale", guidance_scale, minimum=0, maximum=MAX_GUIDANCE)
        if clip_x0 is not None and not require_number("clip_x0", clip_x0) > 0:
            raise ValueError(f"clip_x0 must be None or a positive bound (e.g. 1.0 for pixels), got {clip_x0!r}")
        self.clip_x0 = clip_x0
        self.cond = dict(cond or {})
        guiding = uncond is not None and self.guidance_scale != 1.0
        self.both = {k: torch.cat([uncond[k], self.cond[k]]) for k in self.cond} if guiding else None

    def network_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output at (x_t, t), guided when an unconditional input was given (one batched call). A
        learned-variance output keeps its 2C channels: the mean part guided, v the conditional branch's,
        unguided (as diffusers' DeepFloyd IF pipeline guides a learned-variance U-Net)."""
        if self.both is None:
            return self.network(x, t, **self.cond)
        out_uncond, out_cond = self.network(torch.cat([x, x]), torch.cat([t, t]), **self.both).chunk(2)
        (mean_uncond, _), (mean_cond, v) = (split_output(o, x, self.model_variance) for o in (out_uncond, out_cond))
        guided_mean = guided(mean_cond, mean_uncond, self.guidance_scale)
        return guided_mean if v is None else torch.cat([guided_mean, v], dim=1)

    def predict(self, x: torch.Tensor, t: int | torch.Tensor) -> tuple[Prediction, torch.Tensor | None]:
        """(eps, x0) at timestep t (an int, or a LongTensor (B,) of one per sample), and v of a learned variance."""
        t_batch = torch.as_tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])
        mean_part, v = split_output(self.network_output(x, t_batch), x, self.model_variance)
        eps, x0 = self.schedule.split_prediction(mean_part, x, t_batch, self.prediction_type)
        return Prediction(eps, x0 if self.clip_x0 is None else x0.clamp(-self.clip_x0, self.clip_x0)), v

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor) -> Prediction:
        """(eps, x0) at timestep t: all DDIM and DPM-Solver++ use of a learned-variance network (its mean part)."""
        return self.predict(x, t)[0]
