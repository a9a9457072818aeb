"""Autoencoders of latent diffusion (LDM, Rombach et al. 2022): KL-regularised (`kl.py`) and VQ-regularised (`vq.py`).

Shared parts live in `blocks.py`; `diffusers_compat.py` maps diffusers' AutoencoderKL configs and weights onto ours.
The modules register "kl-f4", "kl-f8", "vq-f4", "vq-f8" in `components.registry.AUTOENCODERS` when imported
(`zoo.catalog.load()` imports them).
"""
