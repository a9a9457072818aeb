"""`python -m zoo.loss_study`: L_simple vs the variational bound (README "L_simple vs the bound"), the whole table.

    python -m zoo.train plan --only loss-study      # trains ddpm-simple-32, ddpm-hybrid-32, ddpm-vlb-32
    python -m zoo.loss_study --threads 1 --markdown loss_study.md   # the README table, from the embedded weights
    python -m zoo.loss_study --weights runs         # ... or from <runs>/<name>/final

For each pipeline: the bound in bits/dim on held-out 32x32 images (`pipe.vlb`: x0_hat clipped as the samplers
clip it, the KL terms below t = 50 exactly, then every 10th standing for its stride, and the last), L_simple on the
same draws, and the quality of unconditional samples read back by the pixel analyser (zoo/data/analyser.py,
judged by zoo.evaluate's `judge`) with DDPM at the recipes' step count and at few steps, and with DDIM at few
steps; the same measures on held-out dataset images are the reference row. `--out` keeps every finished row, so
an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.data.analyser import ATTRIBUTES, analyse
from zoo.data.shapes import pregenerate
from zoo.evaluate import adherence_of, judge
from zoo.pipelines.base import to_pil
from zoo.train.plan import LOSS_STUDY
from zoo.train.stages import downsample

logger = logging.getLogger(__name__)
HELDOUT_SEED = 4321  # the held-out images of zoo.evaluate's bits/dim (split "all": seen and held-out pairs)
BOUND_IMAGES = 32  # held-out images for bits/dim and L_simple
SAMPLES = 64  # samples per sampler setting, drawn 16 at a time with seeds 0, 16, 32, ...
DDPM_STEPS = (50, 10)  # the recipes' step count, and few (improved DDPM Sec. 4 / Fig. 8: where a learned Sigma helps)
DDIM_STEPS = 10  # deterministic, few: the mean alone (a learned Sigma plays no part)
BOUND = {"stride": 10, "exact_below": 50, "seed": 0}  # pipe.vlb's estimator for the table


def heldout_images(n: int, size: int = 32, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """n held-out dataset images at `size`, made as the training images are (zoo/train/stages.py, downsample)."""
    data = pregenerate(n, seed=seed, split="all", uint8=True)
    return downsample(data["images"], size).float() / 127.5 - 1


def settings_of(ddpm_steps: tuple[int, ...] = DDPM_STEPS, ddim_steps: int | None = DDIM_STEPS) -> list[str]:
    """The sampler settings, as "sampler-steps" names (the table's columns)."""
    return [*(f"ddpm-{n}" for n in ddpm_steps), *([f"ddim-{ddim_steps}"] if ddim_steps else [])]


def own_scene(image: Any) -> dict[str, str] | None:
    """What an unconditional sample is held to: the scene the analyser reads in it, when it reads a whole one (all
    five attributes, a shape colour unlike the background, as in every dataset image); None otherwise."""
    reading = analyse(image)
    wanted = {name: getattr(reading, name) for name in ATTRIBUTES}
    return wanted if None not in wanted.values() and reading.colour != reading.background else None


def sample_quality(images: list[Any]) -> dict[str, float]:
    """zoo.evaluate's strict reading for samples without a condition: each image judged (`judge`) against its own
    scene, so "all" = a whole scene whose shape also fits its template with IoU >= zoo.evaluate.SHAPE_IOU;
    "template_iou" = mean best-template IoU (0 where nothing stands out); "clean" = mean near-palette share."""
    judged = []
    for image in images:
        wanted = own_scene(image)
        if wanted is None:  # no whole scene: wrong; the best template's IoU and the clean share still count
            reading = analyse(image)
            judged.append({"right": {"all": False}, "iou": reading.fit or 0.0, "clean": judge(image, {})["clean"]})
        else:
            judged.append(judge(image, wanted))
    return {
        "all": statistics.fmean(all(j["right"].values()) for j in judged),
        "template_iou": statistics.fmean(j["iou"] for j in judged),
        "clean": statistics.fmean(j["clean"] for j in judged),
    }


def draw(pipe: Any, setting: str, samples: int) -> list[Any]:
    """`samples` images at one "sampler-steps" setting, 16 per batch, seeded 0, 16, 32, ..."""
    sampler, steps = setting.split("-")
    images: list[Any] = []
    for start in range(0, samples, 16):
        images += pipe.generate(steps=int(steps), sampler=sampler, seed=start, num_images=min(16, samples - start))
    return images


@torch.no_grad()
def measure(pipe: Any, *, bound_images: int, samples: int, settings: list[str]) -> dict[str, Any]:
    """Bits/dim and L_simple on held-out images; sample quality at each setting; the seconds it all took."""
    start = time.perf_counter()
    result = pipe.vlb(heldout_images(bound_images, pipe.recipe.image_size), **BOUND)
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
    for setting in settings:
        row[setting] = sample_quality(draw(pipe, setting, samples))
    row["seconds"] = time.perf_counter() - start
    return row


def data_row(samples: int, settings: list[str], size: int = 32) -> dict[str, Any]:
    """The analyser on held-out dataset images at the study's size: what a perfect sampler would score; and, as a
    check of the analyser at this size, its strict reading against the images' true attributes."""
    data = pregenerate(samples, seed=HELDOUT_SEED + 1, split="all", uint8=True)
    images = to_pil(downsample(data["images"], size).float() / 127.5 - 1)
    truth = [({}, {name: getattr(a, name) for name in ATTRIBUTES}) for a in data["attributes"]]
    quality = sample_quality(images)
    return {"pipeline": "dataset (held-out)", **dict.fromkeys(settings, quality), "true": adherence_of(images, truth)}


def cell(quality: dict[str, float]) -> str:
    return f"{quality['all']:.0%} / {quality['template_iou']:.2f} / {quality['clean']:.2f}"


def table(rows: list[dict[str, Any]], settings: list[str], samples: int, bound_images: int) -> str:
    """The README's table: one row per pipeline, bits/dim (L_0 part), L_simple, all / IoU / clean per setting."""
    head = [
        "pipeline",
        f"bits/dim ± s.e. (L_0 part), {bound_images} images",
        "L_simple",
        *(f"{s.replace('-', ' ').upper()}: all / IoU / clean" for s in settings),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        bpd, simple = "-", "-"
        if "bits_per_dim" in row:
            bpd = f"{row['bits_per_dim']:.3f} ± {row['bits_per_dim_sem']:.3f} ({row['terms']['decoder']:.3f})"
            simple = f"{row['l_simple']:.4f}"
        label = (
            f"`{row['pipeline']}` ({row['objective']}, {row['variance']})" if "objective" in row else row["pipeline"]
        )
        lines.append("| " + " | ".join([label, bpd, simple, *(cell(row[s]) for s in settings)]) + " |")
    notes = [f"\n{samples} samples per setting (in batches of 16 seeded 0, 16, 32, ...)."]
    if truth := next((row["true"] for row in rows if "true" in row), None):
        notes.append(
            f"The analyser at 32x32 on the {int(truth['count'])} dataset images against their true attributes: "
            f"all-correct {truth['all']:.0%}, template IoU {truth['template_iou']:.2f}, clean {truth['clean']:.2f}."
        )
    if estimator := next((row["estimator"] for row in rows if "estimator" in row), None):
        notes.append(f"Bound: {estimator}.")
    return "\n".join(lines) + "\n" + " ".join(notes) + "\n"


def load_rows(out: Path | None, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows an earlier run with the same options finished (resume); another run's file is refused, not lost."""
    if out is None or not out.is_file():
        return {}
    saved = json.loads(out.read_text())
    if saved.get("options") != options:
        raise SystemExit(
            f"{out} holds a study with other options ({saved.get('options')}, now {options}); "
            "pass another --out, or delete it to start again"
        )
    return saved["rows"]


def save_rows(out: Path | None, options: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """Written whole to a temporary file, then moved over `out`: a stop mid-write leaves the last good file."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps({"options": options, "rows": rows}, indent=2))
    os.replace(partial, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.loss_study", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a runs folder holding <name>/final (default: embedded)")
    parser.add_argument("--names", nargs="+", default=list(LOSS_STUDY))
    parser.add_argument("--bound-images", type=int, default=BOUND_IMAGES, help="held-out images for bits/dim")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples (seeds) per sampler setting")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DDPM_STEPS), help="DDPM step counts")
    parser.add_argument("--ddim-steps", type=int, default=DDIM_STEPS, help="DDIM step count (0: no DDIM column)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the finished rows; a rerun resumes from it")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    for name in ("bound_images", "samples"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2 (a standard error needs two)")
    if min(args.steps) < 1 or args.ddim_steps < 0:
        parser.error("--steps must be positive and --ddim-steps at least 0")
    for name in args.names:  # the bound is of pixels: a latent model's would be of its latents (pipe.vlb says so)
        if zoo.recipe(name).kind != "pixel":
            parser.error(f"{name} is a {zoo.recipe(name).kind} pipeline; the study measures pixel pipelines' bound")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_of(tuple(args.steps), args.ddim_steps)
    options = {"weights": args.weights, "bound_images": args.bound_images, "samples": args.samples}
    options |= {"settings": settings, "bound": BOUND}
    done = load_rows(args.out, options)
    for name in args.names:
        if name not in done:
            weights = str(Path(args.weights) / name / "final") if args.weights else None
            pipe = zoo.build(name, weights=weights, device="cpu")
            done[name] = measure(pipe, bound_images=args.bound_images, samples=args.samples, settings=settings)
            save_rows(args.out, options, done)
    rows = [done[name] for name in args.names] + [data_row(args.samples, settings)]
    text = table(rows, settings, args.samples, args.bound_images)
    print(text)  # noqa: T201 (the command's output)
    if args.markdown:
        args.markdown.write_text(text)
    return text


if __name__ == "__main__":
    main()
