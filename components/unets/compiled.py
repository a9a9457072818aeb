"""The U-Net compiled by TorchInductor (`torch.compile` with its C++ wrapper), opt-in, inference only: the kernels
of `UNet.denoise` fused where they can be and called from generated C++, so a sampling step pays for no Python
between them, which is what a small latent U-Net on a CPU mostly pays for (README "Where the time goes").

What it computes is the U-Net's own forward: `UNet.prepare` still validates every call and makes every decision
that depends on values (as for the traced U-Net, components/unets/traced.py); `torch.compile` compiles `denoise`
once per input signature (`dynamic=False`: shapes, dtypes and which optional inputs are present; its guards
recompile when one changes, up to torch._dynamo's cache limit, past which it runs eager). The parameters stay
inputs of the compiled graph (no freezing), so new weights are used as they are. With gradients on or in training
mode calls run the eager forward. It needs a C++ compiler, as TorchInductor does on a CPU.
Measured (README "Where the time goes", `scripts/unet_call_cost.py --compile`): 1.35x per call of `ldm-clip-kl`'s
U-Net on 2 threads, for a compile of one to three minutes per signature on this 2-core CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from components.unets.unet import UNet

# TorchInductor's options: its C++ wrapper calls the kernels without Python in between
INDUCTOR_OPTIONS = {"cpp_wrapper": True}


class CompiledUNet:
    """Called as the UNet is (`forward(x_t, t, context, *, context_mask, concat, class_labels)`), same outputs."""

    def __init__(self, unet: UNet):
        if not isinstance(unet, UNet):
            raise TypeError(f"CompiledUNet takes a UNet, got {type(unet).__name__}")
        self.unet = unet
        self.compiled = torch.compile(unet.denoise, dynamic=False, options=INDUCTOR_OPTIONS)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor | None = None, **kw: Any):
        inputs = self.unet.prepare(x_t, t, context, **kw)
        if torch.is_grad_enabled() or self.unet.training:
            return self.unet.denoise(inputs)
        return self.compiled(inputs)
