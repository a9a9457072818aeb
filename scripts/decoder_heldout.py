"""Round trips D(E(x)) of held-out-pair images, read by the strict analyser: the ceiling a decoder sets for
image-to-image at strength 0 and for super-resolution, which both start from held-out images.

    PYTHONPATH=. python scripts/decoder_heldout.py zoo/weights/ldm-clip-kl/autoencoder runs/s11/dec-A/final

For each autoencoder folder: the share read right (every attribute, shape at template IoU >= SHAPE_IOU) of `n`
held-out-pair images (seed 2025, zoo.evaluate's image-to-image inputs) and of `n` images of all pairs (seed
12345, its autoencoder row), decoding the posterior mean and a posterior sample, and the misses by size and shape.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch

from zoo.data.analyser import ATTRIBUTES
from zoo.data.shapes import pregenerate
from zoo.evaluate import IMG2IMG_SEED, judge
from zoo.pipeline_io import load_part
from zoo.pipelines.base import to_pil


@torch.no_grad()
def read(folder: str, n: int, seed: int, split: str, name: str = "kl-f4") -> dict[str, object]:
    """{"mode": share right, "sample": share right, "misses": Counter of "<size> <colour> <shape>"}."""
    ae = load_part("autoencoder", name, folder).eval()
    data = pregenerate(n, seed=seed, split=split, image_size=64)
    x = data["images"]
    generator = torch.Generator().manual_seed(0)
    result: dict[str, object] = {}
    misses: collections.Counter = collections.Counter()
    for how in ("mode", "sample"):
        z = torch.cat([ae.encode(c, sample=how == "sample", generator=generator) for c in x.split(64)])
        rec = torch.cat([ae.decode(c) for c in z.split(64)]).clamp(-1, 1)
        right = 0
        for image, truth in zip(to_pil(rec), data["attributes"], strict=True):
            ok = all(judge(image, {f: getattr(truth, f) for f in ATTRIBUTES})["right"].values())
            right += ok
            if not ok and how == "mode":
                misses[f"{truth.size} {truth.colour} {truth.shape} on {truth.background}"] += 1
        result[how] = right / n
    result["misses"] = misses
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="autoencoder folders (config.json + model.safetensors)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="kl-f4", help="the folders' registered autoencoder name (vq-f4: VQ)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for folder in args.folders:
        held = read(folder, args.images, IMG2IMG_SEED, "heldout", args.name)
        every = read(folder, args.images, 12345, "all", args.name)
        sys.stdout.write(
            f"{folder}: held-out pairs mode {held['mode']:.1%} sample {held['sample']:.1%}; "
            f"all pairs mode {every['mode']:.1%} sample {every['sample']:.1%}\n"
            f"  held-out misses (mode): {dict(held['misses'].most_common())}\n"
        )


if __name__ == "__main__":
    main()
