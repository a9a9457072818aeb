"""`python -m zoo.loss_study`: L_simple vs the variational bound (README "L_simple vs the bound"), measured.

    python -m zoo.train plan --only loss-study      # trains ddpm-simple-32, ddpm-hybrid-32, ddpm-vlb-32
    python -m zoo.loss_study                        # the README table, from the embedded weights
    python -m zoo.loss_study --weights runs         # ... or from <runs>/<name>/final

For each pipeline: the bound in bits/dim on held-out 32x32 images (`pipe.vlb`, the KL terms below t = 50
exactly and every 10th above, each standing for its stride), L_simple on the same draws, and the quality of
unconditional samples read back by the pixel analyser (zoo/data/analyser.py) at several sampler settings,
with the same measures on held-out dataset images as the reference row.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.data.analyser import analyse, clean_fraction
from zoo.data.shapes import pregenerate
from zoo.evaluate import SHAPE_IOU
from zoo.train.plan import LOSS_STUDY
from zoo.train.stages import downsample

logger = logging.getLogger(__name__)
HELDOUT_SEED = 4321  # the held-out images of zoo.evaluate's bits/dim (split "all": seen and held-out pairs)
SETTINGS = (("ddpm", 10), ("ddpm", 50), ("ddim", 10))  # few steps, the recipes' default, few steps deterministic


def heldout_images(n: int, size: int = 32, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """n held-out dataset images at `size`, made as the training images are (zoo/train/stages.py, downsample)."""
    data = pregenerate(n, seed=seed, split="all", uint8=True)
    return downsample(data["images"], size).float() / 127.5 - 1


def sample_quality(images: list[Any]) -> dict[str, float]:
    """The evaluator's measures (zoo/evaluate.py), for unconditional samples: "all" = the analyser reads all
    five attributes, a shape colour unlike the background (as in every dataset image) and a shape whose template
    fits with IoU >= SHAPE_IOU; "template_iou" = mean best-template IoU (0 where nothing stands out); "clean" =
    mean share of pixels near a palette colour (analyser.clean_fraction)."""
    readings = [analyse(image) for image in images]
    fits = [a.fit or 0.0 for a in readings]
    complete = [
        None not in (a.background, a.colour, a.shape, a.size, a.position)
        and a.colour != a.background
        and fit >= SHAPE_IOU
        for a, fit in zip(readings, fits, strict=True)
    ]
    return {
        "all": sum(complete) / len(images),
        "template_iou": statistics.fmean(fits),
        "clean": statistics.fmean(clean_fraction(image) for image in images),
    }


@torch.no_grad()
def measure(pipe: Any, *, bound_images: int, samples: int) -> dict[str, Any]:
    """Bits/dim and L_simple on held-out images; sample quality at each of SETTINGS (16 per batch, seeds 0, 16, ..)."""
    x = heldout_images(bound_images, pipe.recipe.image_size)
    result = pipe.vlb(x, stride=10, exact_below=50, seed=0)
    T = pipe.num_timesteps
    l_simple = ((result.mse * result.weights.float()).sum(1) + result.decoder_mse) / T  # E_t ||eps - eps_theta||^2
    row: dict[str, Any] = {
        "pipeline": pipe.recipe.name,
        "objective": pipe.recipe.objective,
        "variance": pipe.recipe.variance,
        "bits_per_dim": float(result.total.mean()),
        "bits_per_dim_sem": float(result.total.std() / len(result.total) ** 0.5),
        "l_simple": float(l_simple.mean()),
        "terms": {"prior": float(result.prior.mean()), "decoder": float(result.decoder.mean())},
        "estimator": result.estimator,
    }
    for sampler, steps in SETTINGS:
        images = []
        for start in range(0, samples, 16):  # batches of 16, seeded 0, 16, 32, ...
            images += pipe.generate(steps=steps, sampler=sampler, seed=start, num_images=min(16, samples - start))
        row[f"{sampler}-{steps}"] = sample_quality(images)
    return row


def data_row(samples: int, size: int = 32) -> dict[str, Any]:
    """The analyser on held-out dataset images at the study's size: what a perfect sampler would score."""
    from zoo.pipelines.base import to_pil

    quality = sample_quality(to_pil(heldout_images(samples, size, seed=HELDOUT_SEED + 1)))
    return {"pipeline": "dataset (held-out)", **{f"{s}-{n}": quality for s, n in SETTINGS}}


def table(rows: list[dict[str, Any]]) -> str:
    """The README's table: one row per pipeline, bits/dim, L_simple, and readable / IoU / clean per setting."""
    settings = [f"{s}-{n}" for s, n in SETTINGS]
    head = ["pipeline", "bits/dim", "L_simple", *(f"{s}: all / IoU / clean" for s in settings)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        bpd = f"{row['bits_per_dim']:.3f} ± {row['bits_per_dim_sem']:.3f}" if "bits_per_dim" in row else "-"
        simple = f"{row['l_simple']:.4f}" if "l_simple" in row else "-"
        cells = [f"{row[s]['all']:.0%} / {row[s]['template_iou']:.2f} / {row[s]['clean']:.2f}" for s in settings]
        lines.append("| " + " | ".join([row["pipeline"], bpd, simple, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.loss_study", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a runs folder holding <name>/final (default: embedded)")
    parser.add_argument("--names", nargs="+", default=list(LOSS_STUDY))
    parser.add_argument("--bound-images", type=int, default=32, help="held-out images for bits/dim")
    parser.add_argument("--samples", type=int, default=48, help="samples per sampler setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.names:
        weights = str(Path(args.weights) / name / "final") if args.weights else None
        pipe = zoo.build(name, weights=weights, device="cpu")
        rows.append(measure(pipe, bound_images=args.bound_images, samples=args.samples))
    rows.append(data_row(args.samples))
    print(table(rows))  # noqa: T201 (the command's output)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
