"""The Zoo: every offered pipeline and every registered component, as readable columns.

Parameter counts come from the parts built on PyTorch's meta device (shapes without storage), so the table
costs no memory even for Stable Diffusion's 860M-parameter U-Net; evaluation figures are read from
zoo/weights/<name>/evaluation.json, written by `python -m zoo.evaluate <name> --save`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

import zoo
from zoo import catalog
from zoo.app.cache import PipelineCache
from zoo.app.guard import handler
from zoo.build import REGISTRIES, embedded_weights
from zoo.recipes import Part
from zoo.registry import AUTOENCODERS, CONDITIONERS, SAMPLERS, SCHEDULES, UNETS

# Evaluation columns: (column, path in evaluation.json, as a percentage).
FIGURES = (
    ("all correct, seen pairs", ("adherence_seen", "all"), True),
    ("all correct, held-out pairs", ("adherence_heldout", "all"), True),
    ("unconditional samples read as drawings", ("drawings", "drawn"), True),
    ("autoencoder PSNR (dB)", ("reconstruction", "psnr_db"), False),
    ("bits/dim", ("bits_per_dim",), False),
    ("s / image", ("seconds_per_image",), False),
)


@functools.cache
def _part_facts(role: str, name: str, kwargs_json: str, tiny: bool) -> tuple[int, int, int]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        module = REGISTRIES[role].build(name, tiny=tiny, **json.loads(kwargs_json))
    count = sum(p.numel() for p in module.parameters())
    return count, getattr(module, "latent_channels", 0), getattr(module, "downsample_factor", 1)


def part_facts(role: str, part: Part, tiny: bool) -> tuple[int, int, int]:
    """(parameters, latent channels, downsampling factor) of one part, built once per architecture."""
    return _part_facts(role, part.name, json.dumps(dict(part.kwargs), sort_keys=True), tiny)


def evaluation(folder: Path | None) -> dict[str, str]:
    """The evaluation columns from folder/evaluation.json ("-" where a figure does not apply)."""
    path = folder / "evaluation.json" if folder else None
    if path is None or not path.is_file():
        return {column: "not evaluated" for column, _, _ in FIGURES}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {column: f"unreadable {path.name}" for column, _, _ in FIGURES}
    return {column: figure(data, keys, percent) for column, keys, percent in FIGURES}


def figure(data: Any, keys: tuple[str, ...], percent: bool) -> str:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    if isinstance(data, bool) or not isinstance(data, int | float):
        return "-"
    return f"{data:.0%}" if percent else f"{data:.3g}"


class ZooTable:
    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    @handler
    def pipelines(self) -> pd.DataFrame:
        """One row per offered pipeline: parts, parameters, latent shape, weights, evaluation figures."""
        return pd.DataFrame([self.row(name) for name in self.pipes.names()])

    def row(self, name: str) -> dict[str, str]:
        recipe = zoo.recipe(name)
        parts = {role: part for role, part in recipe.parts.items() if role != "schedule"}
        counts = {role: part_facts(role, part, self.pipes.tiny) for role, part in parts.items()}
        latent = "-"
        if "autoencoder" in counts:
            channels, factor = counts["autoencoder"][1:]
            latent = f"{channels}x{recipe.image_size // factor}x{recipe.image_size // factor}"
        if recipe.hub_id:
            weights = f"Hub: {recipe.hub_id}"
        else:
            weights = "embedded" if embedded_weights(name) and not self.pipes.tiny else "random (not trained)"
        return {
            "pipeline": name,
            "kind": recipe.kind,
            "schedule": recipe.schedule.name,
            **{role: part.name for role, part in parts.items()},
            "parameters": f"{sum(c[0] for c in counts.values()):,}",
            "latent shape": latent,
            "weights": weights,
            **evaluation(embedded_weights(name)),
        }

    @handler
    def components(self) -> pd.DataFrame:
        """Every registered component: its kind, name and description."""
        catalog.load()
        registries = {
            "schedule": SCHEDULES,
            "sampler": SAMPLERS,
            "unet": UNETS,
            "autoencoder": AUTOENCODERS,
            "conditioner": CONDITIONERS,
        }
        rows = [
            {"kind": kind, "name": name, "description": about}
            for kind, registry in registries.items()
            for name, about in registry.describe().items()
        ]
        return pd.DataFrame(rows)


def tab(handlers: ZooTable) -> dict[str, gr.components.Component]:
    """Both tables, filled when the page loads (the app wires demo.load to them)."""
    with gr.Tab("Zoo", id="zoo"):
        button = gr.Button("Refresh")
        pipelines = gr.Dataframe(label="pipelines", interactive=False, wrap=True, max_height=600)
        components = gr.Dataframe(label="registered components", interactive=False, wrap=True, max_height=600)
    button.click(handlers.pipelines, None, pipelines, api_name="zoo_table")
    button.click(handlers.components, None, components, api_name="components")
    return {"button": button, "pipelines": pipelines, "components": components}
