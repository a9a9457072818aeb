"""Samplers, k-diffusion style: the caller builds the timestep grid once, a denoiser adapter turns the network's
output into (eps, x0), and `sample_<name>(denoiser, x, grid, *, generator, callback)` only steps.

    sampler = SAMPLERS.build("ddim")                         # a Sampler: its grid convention and its loop
    grid = sampler.grid(schedule, 50, spacing="trailing")    # timesteps + alpha_bar, sliceable (grid[-k:])
    x0 = sampler.sample(Denoiser(unet, schedule, "eps"), x_T, grid, callback=lambda i, x_t, x0: None)

Each sampler registers itself in `components.registry.SAMPLERS` (ddpm.py, ddim.py, dpmpp.py); zoo/catalog.py
imports them. common.py holds the grid, denoiser.py the adapter.
"""

from components.samplers.common import TIMESTEP_SPACINGS, Grid, Sampler, spaced_grid, spaced_timesteps
from components.samplers.denoiser import Denoiser, Prediction

__all__ = ["TIMESTEP_SPACINGS", "Denoiser", "Grid", "Prediction", "Sampler", "spaced_grid", "spaced_timesteps"]
