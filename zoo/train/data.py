"""The training set, generated once and cached: images as uint8 (and latents, once an autoencoder exists).

The procedural dataset is deterministic by seed, so the cache is a speed-up, never a source of truth:
it is keyed by (split, number of samples, seed) and rebuilt when absent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.data.shapes import pregenerate

logger = logging.getLogger(__name__)


def cached_dataset(cache_dir: Path, num_samples: int, *, seed: int, split: str = "train") -> dict:
    """{"images": uint8 (N, 3, 64, 64), "semantic_maps": uint8 (N, 64, 64), "class_labels": (N,), "captions"}."""
    cache_dir = Path(cache_dir)
    stem = cache_dir / f"shapes-{split}-{num_samples}-seed{seed}"
    tensors_file, captions_file = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if tensors_file.is_file() and captions_file.is_file():
        tensors = load_file(tensors_file)
        return {**tensors, "captions": json.loads(captions_file.read_text())}
    logger.info("generating %d %s samples (seed %d)", num_samples, split, seed)
    data = pregenerate(num_samples, seed=seed, split=split, uint8=True)
    tensors = {
        "images": data["images"],
        "semantic_maps": data["semantic_maps"].to(torch.uint8),
        "class_labels": data["class_labels"].long(),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tensors_file)
    captions_file.write_text(json.dumps(data["captions"]))
    return {**tensors, "captions": data["captions"]}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
