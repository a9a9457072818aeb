"""Per-call time of slimmer latent U-Nets (random weights, batch 1, no guidance) against the pixel U-Net of
`ddpm-cosine`, interleaved in one process: how much a cheaper architecture would buy toward issue 9's "latent
>= 8x faster per image than pixel at the same steps", before any of it is trained.

    PYTHONPATH=. python scripts/unet_call_cost.py [--threads 2] [--repeats 30] [--variants root width-32] [--compile]
        [--images 1]

Each row is the shipped root's U-Net config (zoo/weights/ldm-clip-kl/unet/config.json) with the named change;
the ratio is the pixel U-Net's median call over the row's. Quality is not measured here: a row is only a
candidate until a from-scratch run of it (the ablation's `width-32` rows, README) meets the targets.
`--compile` also times each U-Net's `denoise` compiled by torch.compile (TorchInductor, its C++ wrapper: no
Python between kernels), checked to compute what the eager one does; each compile takes one to three minutes
on this CPU. `--images N` times a batch of N (s / image is the call over N; the ratio is per image either way).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import zoo
from components.unets.compiled import CompiledUNet
from components.unets.unet import UNet, UNetConfig
from zoo.bench import interleaved_medians
from zoo.pipeline_io import embedded_weights

VARIANTS = {  # key: (what it is, the change to the root's config)
    "root": ("the shipped root", {}),
    "attn-4x4": ("attention at 4x4 only", {"attention_levels": [2]}),
    "attn-4x4-w48": (
        "attention at 4x4 only, width 48",
        {"attention_levels": [2], "model_channels": 48, "norm_groups": 16},
    ),
    "two-levels": ("two levels (16, 8), attention at 8x8", {"channel_mult": [1, 2], "attention_levels": [1]}),
    "width-32": ("width 32 (the ablation's width-32)", {"model_channels": 32}),
    "attn-4x4-w32": (
        "attention at 4x4 only, width 32",
        {"attention_levels": [2], "model_channels": 32, "norm_groups": 16},
    ),
}


def timed(unet: UNet, *args: torch.Tensor, compile_it: bool) -> list:
    """The calls to time for `unet` on `args`: its eager forward, and with `compile_it` its compiled `denoise`."""
    inputs = unet.prepare(*args)
    fns = [lambda: unet.denoise(inputs)]
    if compile_it:
        compiled = CompiledUNet(unet).compiled  # what enable_compiled_unet runs
        difference = (compiled(inputs) - unet.denoise(inputs)).abs().max().item()
        if difference > 1e-4:
            raise SystemExit(f"the compiled U-Net differs from the eager one by {difference:.2g}")
        fns.append(lambda: compiled(inputs))
    return fns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--compile", action="store_true", help="also time each compiled (torch.compile)")
    parser.add_argument("--images", type=int, default=1, help="the batch of each call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = json.loads((embedded_weights("ldm-clip-kl") / "unet" / "config.json").read_text())
    pixel = zoo.build("ddpm-cosine", device="cpu").unet.eval()
    generator = torch.Generator().manual_seed(0)
    n = args.images
    x_pixel, t = torch.randn(n, 3, 64, 64, generator=generator), torch.full((n,), 500)
    x, context = torch.randn(n, 4, 16, 16, generator=generator), torch.randn(n, 16, base["context_dim"])
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    with torch.inference_mode():
        fns = timed(pixel, x_pixel, t, compile_it=args.compile)
        names = [f"the pixel U-Net (ddpm-cosine), {mode}" for mode in modes]
        for key in args.variants:
            name, change = VARIANTS[key]
            unet = UNet(UNetConfig(**{**base, **change})).eval()
            fns += timed(unet, x, t, context, compile_it=args.compile)
            size = f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters"
            names += [f"{name} ({size}), {mode}" for mode in modes]
        medians = interleaved_medians(fns, repeats=args.repeats, warmup=3)
    for i, (name, seconds) in enumerate(zip(names, medians, strict=True)):
        pixel_s = medians[i % len(modes)]  # the pixel U-Net run the same way
        per_image = f"{seconds * 1e3 / n:7.2f} ms / image"
        sys.stdout.write(f"{name:68s} {per_image}   pixel / this {pixel_s / seconds:5.2f}x\n")


if __name__ == "__main__":
    main()
