"""How a part's tensors are stored on disk: as they are (float32 / float16), or int8 with one scale per output
channel for the large weight matrices, so the embedded zoo fits its size budget.

Symmetric weight-only quantisation with a per-output-channel scale (Jacob et al. 2018, "Quantization and Training
of Neural Networks for Efficient Integer-Arithmetic-Only Inference", Eq. 1 with zero-point 0; per-channel
scales as in Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference", Sec. 2.1):

    s_o = max_i |W[o, i]| / 127,    q[o, i] = round(W[o, i] / s_o) in [-127, 127],    W'[o, i] = s_o q[o, i]

so every weight is off by at most s_o / 2. Only storage changes: loading turns q back into float (W') before
`load_state_dict`, and the network computes in float32 as always. Small tensors (biases, norms, the first and
last convolutions) stay float16. A file so stored says so in its safetensors metadata; anything else is read as is.
The zoo's own parts read it in components/base.py, the text encoders in components/conditioners/base.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STORAGE_KEY = "zoo_storage"
INT8 = "int8-per-output-channel"
SCALE_SUFFIX = ".int8_scale"
MIN_QUANTISED = 16_384  # elements: smaller tensors are too few bytes to matter and often the sensitive ones


def quantise(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The int8 form of a state dict: each floating tensor with >= 2 dims and >= MIN_QUANTISED elements becomes
    int8 `q` plus a float32 `<name>.int8_scale` of shape (out,); other floating tensors float16."""
    stored: dict[str, torch.Tensor] = {}
    for name, w in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            raise ValueError(f"tensor name {name!r} ends with {SCALE_SUFFIX!r}, which this format reserves")
        if not w.is_floating_point():
            stored[name] = w
        elif w.dim() >= 2 and w.numel() >= MIN_QUANTISED:
            w = w.float()
            scale = w.abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
            shape = (-1,) + (1,) * (w.dim() - 1)
            stored[name] = torch.round(w / scale.view(shape)).clamp_(-127, 127).to(torch.int8)
            stored[name + SCALE_SUFFIX] = scale
        else:
            stored[name] = w.to(torch.float16)
    return stored


def save(tensors: dict[str, torch.Tensor], file: str | Path, *, dtype: str) -> None:
    """Write `tensors` to `file` as `dtype` ("float32", "float16" or "int8": quantise() above)."""
    if dtype == "int8":
        save_file(quantise(tensors), str(file), metadata={"format": "pt", STORAGE_KEY: INT8})
        return
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, str(file), metadata={"format": "pt"})


def is_int8(file: str | Path) -> bool:
    """Whether `file` (a safetensors file) says it holds int8 storage (reads the header only)."""
    return stored_as(file) == "int8"


def same_content(a: str | Path, b: str | Path) -> bool:
    """Whether two safetensors files hold the same tensors and metadata, however their headers are laid out: the
    library writes the metadata map in no fixed order, so one save of the same tensors can differ in bytes."""
    import json
    import struct

    def parts(file: str | Path) -> tuple[dict, bytes]:
        data = Path(file).read_bytes()
        if len(data) < 8:
            raise ValueError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + n]), data[8 + n :]

    return parts(a) == parts(b)


def stored_as(file: str | Path) -> str | None:
    """The `dtype` that save() would have been given to write `file` ("int8", "float16", "float32"), read from its
    header only; None when its floating tensors mix dtypes without the int8 mark (no single save() wrote it)."""
    names = {"F16": "float16", "F32": "float32", "BF16": "bfloat16", "F64": "float64"}
    with safe_open(str(file), framework="pt") as handle:
        if (handle.metadata() or {}).get(STORAGE_KEY) is not None:
            return "int8"
        floats = {handle.get_slice(name).get_dtype() for name in handle.keys()} & names.keys()
    return names[floats.pop()] if len(floats) == 1 else None


def read(file: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in `file`, int8 tensors turned back into float32 (W' = s_o q); ValueError when a
    file that says it is int8 lacks a scale, has a stray one, or one of the wrong shape."""
    with safe_open(str(file), framework="pt") as handle:
        storage = (handle.metadata() or {}).get(STORAGE_KEY)
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if storage is None:
        return tensors
    if storage != INT8:
        raise ValueError(f"{file}: unknown {STORAGE_KEY} {storage!r} in the metadata (this version reads {INT8!r})")
    scaled = [name for name in tensors if name.endswith(SCALE_SUFFIX)]
    scales = {name.removesuffix(SCALE_SUFFIX): tensors.pop(name) for name in scaled}
    for name, scale in scales.items():
        q = tensors.get(name)
        if q is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            rows = tuple(scale.shape)
            raise ValueError(f"{file}: scale {name + SCALE_SUFFIX} has no int8 tensor {name} of {rows} rows")
        tensors[name] = q.float() * scale.float().view((-1,) + (1,) * (q.dim() - 1))
    unscaled = [name for name, t in tensors.items() if t.dtype == torch.int8 and name not in scales]
    if unscaled:
        raise ValueError(f"{file}: int8 tensors without a scale: {unscaled[:5]}")
    return tensors
