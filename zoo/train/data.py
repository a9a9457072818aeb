"""The training set, generated once and cached: images as uint8 (and latents, once an autoencoder exists).

The procedural dataset is deterministic by seed, so the cache is a speed-up, never a source of truth:
it is keyed by (split, number of samples, seed) and rebuilt when absent. Under a distributed launch the main
process builds it while the others wait, then they read it; files appear whole (written, then renamed), so
runs sharing one cache never read half a file.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from zoo.data.shapes import pregenerate, sample_item

logger = logging.getLogger(__name__)


def cached_dataset(cache_dir: Path, num_samples: int, *, seed: int, split: str = "train") -> dict:
    """{"images": uint8 (N, 3, 64, 64), "semantic_maps": uint8 (N, 64, 64), "class_labels": (N,), "captions"}.

    Under a distributed launch this waits for all processes (the main one builds, then the others read): call it
    on every process, never from main-only code."""
    from zoo.train.loop import process_state

    with process_state().main_process_first():
        return load_or_build(Path(cache_dir), num_samples, seed=seed, split=split)


def load_or_build(cache_dir: Path, num_samples: int, *, seed: int, split: str) -> dict:
    stem = cache_dir / f"shapes-{split}-{num_samples}-seed{seed}"
    tensors_file, captions_file = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if tensors_file.is_file() and captions_file.is_file():
        tensors = load_file(tensors_file)
        return {**tensors, "captions": json.loads(captions_file.read_text())}
    logger.info("generating %d %s samples (seed %d)", num_samples, split, seed)
    data = parallel_pregenerate(num_samples, seed=seed, split=split)
    tensors = {
        "images": data["images"],
        "semantic_maps": data["semantic_maps"].to(torch.uint8),
        "class_labels": data["class_labels"].long(),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = stem.with_name(f"{stem.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data["captions"]))
    os.replace(partial, captions_file)
    save_file({k: v.contiguous() for k, v in tensors.items()}, partial)
    os.replace(partial, tensors_file)  # last: the pair is complete once the tensors file exists
    return {**tensors, "captions": data["captions"]}


def _items(start: int, stop: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    items = [sample_item(i, seed=seed, split=split) for i in range(start, stop)]
    images = np.stack([it["image_uint8"] for it in items]).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    maps = np.stack([it["semantic_map"] for it in items]).astype(np.uint8)
    return images, maps, [it["caption"] for it in items], [it["attributes"].class_label for it in items]


def parallel_pregenerate(num_samples: int, *, seed: int, split: str, chunk: int = 2000) -> dict:
    """pregenerate(..., uint8=True), in worker processes where there are cores: item i depends on (seed, i) only."""
    workers = min(os.cpu_count() or 1, max(1, num_samples // chunk))
    if workers == 1:
        return pregenerate(num_samples, seed=seed, split=split, uint8=True)
    starts = range(0, num_samples, chunk)
    with ProcessPoolExecutor(workers) as pool:
        parts = list(
            pool.map(_items, starts, [min(s + chunk, num_samples) for s in starts], repeat(seed), repeat(split))
        )
    return {
        "images": torch.from_numpy(np.concatenate([p[0] for p in parts])),
        "semantic_maps": torch.from_numpy(np.concatenate([p[1] for p in parts])),
        "class_labels": torch.tensor([label for p in parts for label in p[3]], dtype=torch.long),
        "captions": [caption for p in parts for caption in p[2]],
    }


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
