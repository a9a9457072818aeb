"""What inpainting and super-resolution cost against a plain generation: `python -m zoo.bench_inpaint [name]`.

Plain generation, the blended step and RePaint at the given (j, r) pairs, at the chosen sampler (default the
recipe's; RePaint always DDPM's) and steps, the same seed and prompt, timed in turn after a warm-up (zoo/bench.py's
interleaved medians); each line gives the ratio to the plain generation measured in the same run and the ratio of
denoising steps RePaint's walk takes (zoo/pipelines/repaint.py), which the time should follow. With `--trained`,
the models trained by concatenation join the same rounds at the same sampler and steps, each at its recipe's
guidance: `ldm-inpaint-kl` (its generate with image and mask) and `ldm-sr-kl` (generate(image=low_res)).
Issue 11's target: an inpainting or super-resolution image at most 1.5x a plain generation at the same steps.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

import zoo
from zoo.bench import interleaved_medians
from zoo.evaluate import example_low_res
from zoo.pipelines.repaint import RePaint

PROMPT = "a yellow triangle on a blue background"
TRAINED = ("ldm-inpaint-kl", "ldm-sr-kl")  # inpainting and super-resolution by concatenation
TARGET = 1.5  # issue 11: a trained inpainting or super-resolution image at most this many plain generations' time


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """ "5,3 10,10" -> [(5, 3), (10, 10)]; "" -> [] (no RePaint)."""
    try:
        return [(int(j), int(r)) for j, r in (pair.split(",") for pair in text.split())]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected pairs 'j,r j,r', got {text!r}") from err


def training_free(pipe: Any, pairs: list[tuple[int, int]], edit: dict[str, Any], sampler: str) -> dict[str, dict]:
    """generate's keywords of each training-free run on `pipe`: plain, the blended step, RePaint at each (j, r)."""
    runs = {"plain": {"sampler": sampler}, "blended step": {**edit, "inpaint": "blend", "sampler": sampler}}
    for j, r in pairs:
        repaint = {"inpaint": "repaint", "repaint_jump": j, "repaint_resample": r, "sampler": "ddpm"}
        runs[f"RePaint j={j} r={r}"] = {**edit, **repaint}
    return runs


def trained(build: Callable[[str], Any], edit: dict[str, Any], sampler: str) -> dict[str, tuple[Any, dict]]:
    """(pipeline, generate's keywords) of each model trained by concatenation: the inpainting model with the same
    image and mask and prompt, the super-resolution model with a low-res image (no prompt, no guidance)."""
    inpainter, upsampler = build(TRAINED[0]), build(TRAINED[1])
    return {
        f"{TRAINED[0]} (trained inpainting)": (inpainter, {**edit, "prompt": PROMPT, "sampler": sampler}),
        f"{TRAINED[1]} (super-resolution)": (upsampler, {"image": example_low_res(upsampler), "sampler": sampler}),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench_inpaint", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="ldm-clip-kl", help="a text pipeline (default ldm-clip-kl)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--sampler", default=None, help="default: the recipe's (RePaint: always ddpm)")
    parser.add_argument("--repaint", type=parse_pairs, default=parse_pairs("5,3 10,10"), help="'j,r j,r' or ''")
    parser.add_argument("--trained", action="store_true", help=f"also time {' and '.join(TRAINED)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny random pipelines (the smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs, steps = timed_runs(args)
    calls = [lambda p=p, kwargs=kwargs: p.generate(**kwargs, seed=1, steps=steps) for p, kwargs in runs.values()]
    medians = dict(zip(runs, interleaved_medians(calls, args.repeats, warmup=1), strict=True))
    sampler = runs["plain"][1]["sampler"]
    print(f"{args.name}, {sampler} {steps} steps, each pipeline at its recipe's guidance, {args.threads} thread(s):")  # noqa: T201
    for label, seconds in medians.items():
        print(describe(label, seconds / medians["plain"], runs[label], steps, seconds))  # noqa: T201
    return medians


def timed_runs(args: argparse.Namespace) -> tuple[dict[str, tuple[Any, dict]], int]:
    """label -> (pipeline, generate's keywords), and the steps they all run."""
    build = (lambda name: zoo.build(name, tiny=True, device="cpu")) if args.tiny else zoo.build
    pipe = build(args.name)
    steps, sampler = args.steps or pipe.recipe.steps, args.sampler or pipe.recipe.sampler
    image = pipe.generate("a red circle on a blue background", seed=0, steps=steps)[0]
    mask = np.zeros((pipe.recipe.image_size,) * 2, dtype=np.uint8)
    mask[:, mask.shape[1] // 2 :] = 255  # the right half repainted
    edit = {"image": image, "mask_image": mask}
    free = training_free(pipe, args.repaint, edit, sampler)
    runs = {label: (pipe, {"prompt": PROMPT, **kwargs}) for label, kwargs in free.items()}
    if args.trained:
        runs.update(trained(build, edit, sampler))
    return runs, steps


def describe(label: str, ratio: float, run: tuple[Any, dict], steps: int, seconds: float) -> str:
    """One line: seconds, the ratio to plain generation, RePaint's walk in steps, a trained model's target."""
    pipe, kwargs = run
    extra = ""
    if kwargs.get("inpaint") == "repaint":
        down = RePaint(kwargs["repaint_jump"], kwargs["repaint_resample"]).denoising_steps(steps)
        extra = f", {down / steps:.1f}x the steps"
    elif pipe.recipe.name in TRAINED:
        extra = f"; target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}"
    return f"{label}: {seconds:.2f} s per image ({ratio:.2f}x plain{extra})"


if __name__ == "__main__":
    main()
