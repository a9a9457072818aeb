"""The from-scratch ablation's table (issue 9): every finished row of `zoo.train.plan.ABLATION`, measured alike.

    python -m zoo.train plan --only ablation --jobs 2   # train the rows (15 CPU-minutes each, one thread)
    python -m zoo.ablation                              # measure each finished row, print the Markdown table
    python -m zoo.ablation --rows base eps              # only these rows

Each row is ldm-clip-kl's U-Net trained from random weights for the same CPU minutes with one choice changed.
It is measured with the strict reading of `zoo.evaluate` (shape right only at template IoU >= SHAPE_IOU) on the
same seen and held-out prompts and seeds, with all three samplers at the recipe's steps and guidance, plus the
DDIM / DPM-Solver++ same-seed agreement. A row's measures are kept in `<run>/ablation.json` (with the prompt count
they were measured at), so a second call only measures the rows that are new.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.evaluate import SAMPLERS, adherence_of, agreement, draw, jobs, sampler_settings, seconds_per_image
from zoo.train.plan import ABLATION

SPLITS = ("seen", "heldout")


def measure(folder: Path, prompts: int) -> dict[str, Any]:
    """All-correct and per-attribute accuracy per sampler and split, the agreement, seconds per image (DDPM)."""
    pipe = zoo.build("ldm-clip-kl", weights=str(folder))
    result: dict[str, Any] = {"prompts": prompts}
    drawn: dict[tuple[str, str], list[Any]] = {}
    for sampler in SAMPLERS:
        settings = sampler_settings(pipe, sampler, None, None)
        for split in SPLITS:
            todo = jobs(pipe, split, prompts)
            drawn[sampler, split] = draw(pipe, todo, f"{folder.parent.name} {sampler} {split}", **settings)
            result[f"{sampler}_{split}"] = adherence_of(drawn[sampler, split], todo)
    result["agreement"] = {split: agreement(drawn["ddim", split], drawn["dpmpp", split]) for split in SPLITS}
    result["seconds_per_image"] = seconds_per_image(pipe, **sampler_settings(pipe, "ddpm", None, None))
    return result


def training_of(run: Path) -> dict[str, Any]:
    """Optimiser steps reached and the wall seconds they took, from the run's metrics.json history."""
    history = json.loads((run / "metrics.json").read_text())["history"]
    timed = [h for h in history if "seconds" in h]
    steps = max(h["step"] for h in history)
    return {"steps": steps, "seconds": timed[-1]["seconds"] if timed else None}


def measured(run: Path, prompts: int) -> dict[str, Any]:
    """The row's measures: read from <run>/ablation.json when taken at `prompts`, else measured and written."""
    kept = run / "ablation.json"
    if kept.is_file() and (known := json.loads(kept.read_text())).get("prompts") == prompts:
        return known
    result = {**measure(run / "final", prompts), **training_of(run)}
    kept.with_suffix(".json.tmp").write_text(json.dumps(result, indent=2))
    kept.with_suffix(".json.tmp").replace(kept)  # never a half-written file
    return result


def pair(result: dict[str, Any], sampler: str, key: str = "all") -> str:
    return " / ".join(f"{result[f'{sampler}_{split}'][key]:.0%}" for split in SPLITS)


def row_cells(name: str, change: str, result: dict[str, Any]) -> list[str]:
    per_step = result["seconds"] / result["steps"] if result.get("seconds") else float("nan")
    return [
        f"`{name}`",
        change,
        f"{result['steps']:,} ({per_step:.2f} s)",
        pair(result, "ddpm"),
        pair(result, "ddim"),
        pair(result, "dpmpp"),
        pair(result, "ddpm", "colour"),
        pair(result, "ddpm", "shape"),
        f"{result['ddim_seen']['clean']:.3f} / {result['ddim_heldout']['clean']:.3f}",
        " / ".join(f"{result['agreement'][s]:.0%}" for s in SPLITS),
        f"{result['seconds_per_image']:.2f}",
    ]


HEADER = [
    "row",
    "change from the base",
    "steps (s a step)",
    "DDPM 25",
    "DDIM 25",
    "DPM-Solver++ 25",
    "colour (DDPM)",
    "shape (DDPM)",
    "DDIM clean",
    "DDIM / DPM agreement",
    "s / image (DDPM 25)",
]


def table(runs: Path, prompts: int, rows: list[str] | None = None) -> str:
    """The Markdown table of every finished row (all-correct etc. as seen / held-out), and the rows not finished;
    `rows`: only these (two processes can measure halves of the table at once, the last call reads both)."""
    unknown = sorted(set(rows or []) - set(ABLATION))
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; the rows: {', '.join(ABLATION)}")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    missing = []
    for name, (change, _) in ABLATION.items():
        if rows and name not in rows:
            continue
        run = runs / "ablation" / name
        if not ((run / "final").is_dir() and (run / "metrics.json").is_file()):
            missing.append(name)
            continue
        lines.append("| " + " | ".join(row_cells(name, change, measured(run, prompts))) + " |")
    if missing:
        lines.append(f"\nNot finished (train with `python -m zoo.train plan --only ablation`): {', '.join(missing)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="the plan's runs folder (rows in <runs>/ablation/<row>)")
    parser.add_argument("--prompts", type=int, default=24, help="prompts per split")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (default: every row)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(table(Path(args.runs), args.prompts, args.rows))  # noqa: T201 (the command's output)


if __name__ == "__main__":
    main()
