"""The super-resolution evaluation's misses, image by image: what the truth is, what the model drew, and whether
bicubic upsampling of the same low-res input reads right (`zoo.evaluate`'s images and seeds).

    PYTHONPATH=. python scripts/sr_misses.py 48 [--weights FOLDER]
"""

from __future__ import annotations

import argparse

import torch

import zoo
from zoo.data.analyser import analyse
from zoo.evaluate import SR_ATTRIBUTES, judge, super_resolution_cases
from zoo.pipelines.base import to_pil
from zoo.pipelines.super_resolution import bicubic_upsampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="images (as zoo.evaluate --prompts)")
    parser.add_argument("--weights", default=None, help="a pipeline folder instead of the embedded ldm-sr-kl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = zoo.load_pipeline(args.weights, device="cpu") if args.weights else zoo.build("ldm-sr-kl")
    size = pipe.recipe.image_size
    for k, (_, low, a) in enumerate(super_resolution_cases(pipe, args.n)):
        drawn = pipe.generate(image=low, seed=k)[0]  # zoo.evaluate's seed for image k
        wanted = {name: getattr(a, name) for name in SR_ATTRIBUTES}
        model, bicubic = judge(drawn, wanted), judge(to_pil(bicubic_upsampled(low, size))[0], wanted)
        if not all(model["right"].values()):
            read = analyse(drawn)
            print(  # noqa: T201 (the script's output)
                f"{k}: {a.size} {a.colour} {a.shape} on {a.background} | drawn {read.colour} {read.shape} "
                f"(template IoU {model['iou']:.2f}) | bicubic right: {all(bicubic['right'].values())}"
            )


if __name__ == "__main__":
    main()
