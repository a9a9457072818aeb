"""Diffusion Zoo: registries of interchangeable parts, and the recipes that assemble them into pipelines."""
