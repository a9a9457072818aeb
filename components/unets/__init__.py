"""Denoising U-Nets (DDPM / LDM family): blocks.py holds the building blocks, unet.py the network and its
registered variants ("unet-ddpm", "unet-ldm"), diffusers_compat.py the mapping from diffusers checkpoints."""

from components.unets.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
