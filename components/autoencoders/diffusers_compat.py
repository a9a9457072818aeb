"""diffusers' `AutoencoderKL` config and weights -> ours, by a mechanical key renaming (no diffusers import).

    config = AutoencoderKLConfig(**config_from_diffusers(json.load(open("vae/config.json"))))
    model = AutoencoderKL(config); model.load_state_dict(state_dict_from_diffusers(sd), strict=True)

Keys of older diffusers checkpoints (`query`/`key`/`value`/`proj_attn`) and 1x1-conv attention weights are
accepted too.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

# (diffusers key pattern, our key): applied in order, first full match wins. \g<n> refers to the pattern's groups.
RESNET_PARTS = r"(norm1|conv1|norm2|conv2|conv_shortcut)"
ATTENTION_PARTS = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj",
}  # fmt: skip
KEY_RULES: list[tuple[str, str]] = [
    (r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
    (r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", r"\1.\2.\3"),
    (r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", r"\1.norm_out.\2"),
    (rf"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.{RESNET_PARTS}\.(weight|bias)", r"encoder.down.\1.res.\2.\3.\4"),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", r"encoder.down.\1.resample.conv.\2"),
    (rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{RESNET_PARTS}\.(weight|bias)", r"decoder.up.\1.res.\2.\3.\4"),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", r"decoder.up.\1.resample.conv.\2"),
    (rf"(encoder|decoder)\.mid_block\.resnets\.0\.{RESNET_PARTS}\.(weight|bias)", r"\1.mid.res1.\2.\3"),
    (rf"(encoder|decoder)\.mid_block\.resnets\.1\.{RESNET_PARTS}\.(weight|bias)", r"\1.mid.res2.\2.\3"),
    *(
        (
            rf"(encoder|decoder)\.mid_block\.attentions\.0\.{re.escape(theirs)}\.(weight|bias)",
            rf"\1.mid.attn.{ours}.\2",
        )
        for theirs, ours in ATTENTION_PARTS.items()
    ),
]
SUPPORTED = {"act_fn": "silu", "shift_factor": None, "use_quant_conv": True, "use_post_quant_conv": True}


def rename_key(key: str) -> str:
    """Our name for one diffusers AutoencoderKL key; ValueError naming the key when there is none."""
    for pattern, replacement in KEY_RULES:
        if match := re.fullmatch(pattern, key):
            return match.expand(replacement).replace("conv_shortcut", "skip")
    raise ValueError(f"cannot map diffusers AutoencoderKL key {key!r} onto components.autoencoders.kl.AutoencoderKL")


def state_dict_from_diffusers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict with our key names; 1x1-conv attention weights become linear."""
    out = {}
    for key, value in sd.items():
        ours = rename_key(key)
        if ".mid.attn." in ours and ours.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # (C, C, 1, 1) conv -> (C, C) linear, same map on each position
        out[ours] = value
    return out


def config_from_diffusers(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `AutoencoderKLConfig` for a diffusers AutoencoderKL config dict (its config.json)."""
    for key, wanted in SUPPORTED.items():
        if key in cfg and cfg[key] != wanted:
            raise ValueError(f"diffusers AutoencoderKL with {key}={cfg[key]!r} is not supported (only {wanted!r})")
    widths = list(cfg.get("block_out_channels", (64,)))
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if (types := list(cfg.get(key, [kind] * len(widths)))) != [kind] * len(widths):
            raise ValueError(f"{key} must be {len(widths)} x {kind!r} (one per block_out_channels), got {types}")
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"block_out_channels {widths} are not multiples of the first width {base} (our channel_mult)")
    return {
        "in_channels": cfg.get("in_channels", 3),
        "out_channels": cfg.get("out_channels", 3),
        "base_channels": base,
        "channel_mult": tuple(w // base for w in widths),
        "num_res_blocks": cfg.get("layers_per_block", 1),
        "latent_channels": cfg.get("latent_channels", 4),
        "mid_attention": cfg.get("mid_block_add_attention", True),
        "norm_groups": cfg.get("norm_num_groups", 32),
        "scaling_factor": cfg.get("scaling_factor", 0.18215),
    }
