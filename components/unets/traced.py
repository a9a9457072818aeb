"""The U-Net with its Python taken out of the sampling loop: `UNet.denoise` traced by TorchScript once per input
signature and replayed, so a sampling step no longer pays for ~260 module calls in Python (opt-in, inference only).

What it computes is the U-Net's own forward: `UNet.prepare` still validates every call and makes every decision
that depends on values (the context mask); the trace records only what depends on the signature, which is the
cache key: the shapes, dtypes and device of the inputs and which optional ones are present. The traced graph
shares the U-Net's parameters, so new weights (load_state_dict, a training step, `.to(dtype)`) are used as they
are. With gradients on, in training mode, or where torch.jit cannot trace, calls run the eager forward.
Measured in the README ("Where the time goes"): ~1.25x per U-Net call of `ldm-clip-kl` on one CPU thread, for a
one-off ~0.5 s trace per signature.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from components.unets.blocks import CrossMask
from components.unets.unet import UNet, UNetInputs

logger = logging.getLogger(__name__)
MAX_SIGNATURES = 8  # traced graphs kept (least recently used dropped): batch sizes x conditions of one app session


def flatten(inputs: UNetInputs) -> tuple[tuple[torch.Tensor, ...], tuple[bool, ...]]:
    """The tensors of `inputs` in order (a CrossMask as its one or two tensors) and which of the six are present."""
    key_mask = inputs.key_mask
    parts = (*inputs[:3], *(key_mask or (None, None)), *inputs[4:])  # x_t, t, context, attend, has_token, ...
    return tuple(p for p in parts if p is not None), tuple(p is not None for p in parts)


class _Signature(nn.Module):
    """UNet.denoise as a function of the present tensors only (what torch.jit.trace takes)."""

    def __init__(self, unet: UNet, present: tuple[bool, ...]):
        super().__init__()
        self.unet, self.present = unet, present

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = iter(tensors)
        x_t, t, context, attend, has_token, concat, labels = (next(given) if p else None for p in self.present)
        key_mask = None if attend is None else CrossMask(attend, has_token)
        return self.unet.denoise(UNetInputs(x_t, t, context, key_mask, concat, labels))


class TracedUNet:
    """Called as the UNet is (`forward(x_t, t, context, *, context_mask, concat, class_labels)`), same outputs."""

    def __init__(self, unet: UNet):
        if not isinstance(unet, UNet):
            raise TypeError(f"TracedUNet takes a UNet, got {type(unet).__name__}")
        self.unet = unet
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()
        self.lock = threading.Lock()  # the app's request threads share one pipeline: one trace per signature

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor | None = None, **kw: Any):
        inputs = self.unet.prepare(x_t, t, context, **kw)
        if torch.is_grad_enabled() or self.unet.training or not hasattr(torch.jit, "trace"):
            return self.unet.denoise(inputs)
        tensors, present = flatten(inputs)
        key = (present, *((p.shape, p.dtype, p.device) for p in tensors))
        with self.lock:
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = self.trace(tensors, present)
                while len(self.graphs) > MAX_SIGNATURES:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
        return graph(*tensors)

    def trace(self, tensors: tuple[torch.Tensor, ...], present: tuple[bool, ...]) -> Any:
        logger.info("tracing the U-Net for inputs of shapes %s", [tuple(p.shape) for p in tensors])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice; the tracer's notes on constants
            return torch.jit.trace(_Signature(self.unet, present), tensors, check_trace=False)
