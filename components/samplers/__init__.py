"""Samplers: one function per method with one signature, like k-diffusion's `sample_<name>(model, x, ...)`.

    x0 = sample_ddim(model, x_T, schedule, steps=50, prediction_type="eps", eta=0.0)

`model(x_t, t)` returns the network output for a batch (t a LongTensor (B,)); progress is reported through
`callback(step_index, x_t, x0_pred)`. Each sampler registers itself in `zoo.registry.SAMPLERS`
(ddpm.py, ddim.py, dpmpp.py); zoo/catalog.py imports them.
"""

from components.samplers.common import TIMESTEP_SPACINGS, spaced_timesteps

__all__ = ["TIMESTEP_SPACINGS", "spaced_timesteps"]
