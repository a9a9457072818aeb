"""What training-free inpainting costs against a plain generation: `python -m zoo.bench_inpaint [name]`.

Plain generation, the blended step and RePaint at the given (j, r) pairs, at the recipe's sampler (RePaint:
DDPM's) and steps, the same seed and prompt, timed in turn after a warm-up (zoo/bench.py's interleaved medians);
each line gives the ratio to the plain generation measured in the same run and the ratio of denoising steps
RePaint's walk takes (zoo/pipelines/repaint.py), which the time should follow.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

import zoo
from zoo.bench import interleaved_medians
from zoo.pipelines.repaint import RePaint

PROMPT = "a yellow triangle on a blue background"


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """ "5,3 10,10" -> [(5, 3), (10, 10)]."""
    try:
        return [(int(j), int(r)) for j, r in (pair.split(",") for pair in text.split())]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected pairs 'j,r j,r', got {text!r}") from err


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench_inpaint", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="ldm-clip-kl", help="a text pipeline (default ldm-clip-kl)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--repaint", type=parse_pairs, default=parse_pairs("5,3 10,10"), help="'j,r j,r'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = zoo.build(args.name)
    steps = args.steps or pipe.recipe.steps
    image = pipe.generate("a red circle on a blue background", seed=0, steps=steps)[0]
    mask = np.zeros((pipe.recipe.image_size,) * 2, dtype=np.uint8)
    mask[:, mask.shape[1] // 2 :] = 255  # the right half repainted
    edit = {"image": image, "mask_image": mask}
    runs = {"plain": {}, "blended step": {**edit, "inpaint": "blend"}}
    for j, r in args.repaint:
        runs[f"RePaint j={j} r={r}"] = {**edit, "inpaint": "repaint", "repaint_jump": j, "repaint_resample": r}
    calls = [lambda kwargs=kwargs: pipe.generate(PROMPT, seed=1, steps=steps, **kwargs) for kwargs in runs.values()]
    medians = dict(zip(runs, interleaved_medians(calls, args.repeats, warmup=1), strict=True))
    for label, seconds in medians.items():
        jump = runs[label].get("repaint_jump")
        walked = RePaint(jump, runs[label]["repaint_resample"]).denoising_steps(steps) if jump else None
        down = f", {walked / steps:.1f}x the steps" if walked else ""
        print(f"{label}: {seconds:.2f} s per image ({seconds / medians['plain']:.2f}x plain{down})")  # noqa: T201
    return medians


if __name__ == "__main__":
    main()
