"""Per-call time of slimmer latent U-Nets (random weights, batch 1, no guidance) against the pixel U-Net of
`ddpm-cosine`, interleaved in one process: how much a cheaper architecture would buy toward issue 9's "latent
>= 8x faster per image than pixel at the same steps", before any of it is trained.

    PYTHONPATH=. python scripts/unet_call_cost.py [--threads 2] [--repeats 30]

Each row is the shipped root's U-Net config (zoo/weights/ldm-clip-kl/unet/config.json) with the named change;
the ratio is the pixel U-Net's median call over the row's. Quality is not measured here: a row is only a
candidate until a from-scratch run of it (the ablation's `width-32` rows, README) meets the targets.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import zoo
from components.unets.unet import UNet, UNetConfig
from zoo.bench import interleaved_medians
from zoo.pipeline_io import embedded_weights

VARIANTS = {
    "the shipped root": {},
    "attention at 4x4 only": {"attention_levels": [2]},
    "attention at 4x4 only, width 48": {"attention_levels": [2], "model_channels": 48, "norm_groups": 16},
    "two levels (16, 8), attention at 8x8": {"channel_mult": [1, 2], "attention_levels": [1]},
    "width 32 (the ablation's width-32)": {"model_channels": 32},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = json.loads((embedded_weights("ldm-clip-kl") / "unet" / "config.json").read_text())
    pixel = zoo.build("ddpm-cosine", device="cpu").unet.eval()
    generator = torch.Generator().manual_seed(0)
    x_pixel, t = torch.randn(1, 3, 64, 64, generator=generator), torch.tensor([500])
    fns, names = [lambda: pixel(x_pixel, t)], ["the pixel U-Net (ddpm-cosine)"]
    x, context = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 16, base["context_dim"])
    for name, change in VARIANTS.items():
        unet = UNet(UNetConfig(**{**base, **change})).eval()
        fns.append(lambda unet=unet: unet(x, t, context))
        names.append(f"{name} ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters)")
    with torch.inference_mode():
        medians = interleaved_medians(fns, repeats=args.repeats, warmup=3)
    for name, seconds in zip(names, medians, strict=True):
        sys.stdout.write(f"{name:58s} {seconds * 1e3:7.2f} ms   pixel / this {medians[0] / seconds:5.2f}x\n")


if __name__ == "__main__":
    main()
