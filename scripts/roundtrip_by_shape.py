"""Round trips D(E(x)) of unseen dataset images read by the strict analyser, per size and shape.

    python scripts/roundtrip_by_shape.py zoo/weights/ldm-clip-kl/autoencoder runs/s5/kl-f4-dec-grown/final

`zoo.evaluate`'s autoencoder row gives the overall share; this splits it by the dataset's size and shape, which
is where an autoencoder's failures sit (small triangles lose their apex, small squares their corners).
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch

from zoo.data.analyser import ATTRIBUTES
from zoo.data.shapes import pregenerate
from zoo.evaluate import judge
from zoo.pipeline_io import load_part
from zoo.pipelines.base import to_pil


@torch.no_grad()
def by_shape(folder: str, n: int = 512, seed: int = 12345, name: str = "kl-f4") -> dict[str, tuple[int, int]]:
    """{"<size> <shape>": (read right, count)} over `n` unseen images (split "all", `seed`)."""
    ae = load_part("autoencoder", name, folder).eval()
    data = pregenerate(n, seed=seed, split="all", image_size=64)
    rec = torch.cat([ae.decode(ae.encode(chunk)) for chunk in data["images"].split(64)])
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for image, truth in zip(to_pil(rec.clamp(-1, 1)), data["attributes"], strict=True):
        judged = judge(image, {f: getattr(truth, f) for f in ATTRIBUTES})
        cell = counts[f"{truth.size} {truth.shape}"]
        cell[0] += all(judged["right"].values())
        cell[1] += 1
    return {key: (right, total) for key, (right, total) in sorted(counts.items())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="autoencoder folders (config.json + model.safetensors)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--name", default="kl-f4", help="the registered autoencoder name (kl-f4, vq-f4, ...)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for folder in args.folders:
        table = by_shape(folder, args.images, name=args.name)
        right = sum(r for r, _ in table.values())
        cells = ", ".join(f"{key} {r}/{t}" for key, (r, t) in table.items())
        sys.stdout.write(f"{folder}: all {right / args.images:.1%}; {cells}\n")


if __name__ == "__main__":
    main()
