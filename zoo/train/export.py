"""Copy a trained pipeline folder into the package, with its tensors stored as float16 to keep the wheel small.

Loading casts back to the model's float32 parameters (safetensors load + load_state_dict copy), so only the
storage changes; the rounding error of float16 (~1e-3 relative) is far below what changes an image.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)


def export(run: Path, to: Path, *, dtype: str = "float16") -> Path:
    """Copy `run` to `to` with its tensors cast to `dtype`. The copy is made whole beside `to` and swapped in
    by renames, so an interrupted export leaves the old folder (or none), never a half-written one."""
    if not ((run / "recipe.json").is_file() or (run / "config.json").is_file()):
        raise SystemExit(f"{run} is neither a pipeline folder (recipe.json) nor a model folder (config.json)")
    staging, old = to.with_name(f".{to.name}.export-tmp"), to.with_name(f".{to.name}.export-old")
    for leftover in (staging, old):  # from an export that was interrupted earlier
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(run, staging, ignore=shutil.ignore_patterns("README.md"))
    if dtype != "float32":
        for file in staging.rglob("*.safetensors"):
            tensors = load_file(file)
            cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(cast, file, metadata={"format": "pt"})
    if to.exists():
        to.rename(old)
    staging.rename(to)
    if old.exists():
        shutil.rmtree(old)
    size = sum(f.stat().st_size for f in to.rglob("*") if f.is_file())
    logger.info("exported %s -> %s (%.1f MB)", run, to, size / 1e6)
    return to
