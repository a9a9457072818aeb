"""diffusers `UNet2DConditionModel` checkpoints <-> our `UNet`: config translation and state-dict key renaming.

Our module tree mirrors diffusers' (see unet.py), so weights map one to one by renaming keys; no tensor is
reshaped. diffusers is not imported here: configs are plain dicts (a checkpoint's unet/config.json) and state
dicts plain {name: tensor} (its safetensors file). Options our U-Net does not have raise a clear error.

Name trap: diffusers' `attention_head_dim` is the number of heads per level when `num_attention_heads` is unset
(a historical misnomer kept for compatibility); Stable Diffusion 1.x sets 8 heads, SD 2.x heads = channels / 64.
"""

from __future__ import annotations

import re
from typing import Any

from components.unets.unet import UNetConfig

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID = "UNetMidBlock2DCrossAttn"

# diffusers' constructor defaults for the options we read, used where a config.json leaves one out.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN),
    "up_block_types": (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "dropout": 0.0,
    "norm_num_groups": 32,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "use_linear_projection": False,
    "num_class_embeds": None,
}

# Options with no counterpart in our U-Net: the values (diffusers' defaults) under which they are no-ops.
NO_OP_VALUES: dict[str, tuple] = {
    "center_input_sample": (False,),
    "mid_block_type": (MID,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1,),
    "act_fn": ("silu",),
    "norm_eps": (1e-5,),
    "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
}
# Read and accepted without effect: sizes and numerics that do not change the fp32 network.
IGNORED = {"sample_size", "upcast_attention", "addition_embed_type_num_heads"}


def config_from_diffusers(diffusers_config: dict, concat_channels: int = 0) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet2DConditionModel config dict; ValueError for options we lack.

    concat_channels: how many of its in_channels are a concatenated condition, not x_t (SD inpainting's
    U-Net takes 9: z_t 4, then the mask 1 and the masked image's latent 4)."""
    cfg = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in diffusers_config.items() if not k.startswith("_")}}
    _check_no_ops(cfg)
    channels = tuple(cfg["block_out_channels"])
    attention_levels = _attention_levels(cfg["down_block_types"], cfg["up_block_types"])
    model_channels = channels[0]
    if any(ch % model_channels for ch in channels):
        raise ValueError(f"block_out_channels {channels} must all be multiples of the first (our channel_mult)")
    if not 0 <= concat_channels < cfg["in_channels"]:
        raise ValueError(f"concat_channels={concat_channels} must lie in [0, in_channels={cfg['in_channels']})")
    return UNetConfig(
        in_channels=cfg["in_channels"] - concat_channels,
        concat_channels=concat_channels,
        out_channels=cfg["out_channels"],
        model_channels=model_channels,
        channel_mult=tuple(ch // model_channels for ch in channels),
        num_res_blocks=_uniform("layers_per_block", cfg["layers_per_block"]),
        attention_levels=attention_levels,
        transformer_depth=_uniform("transformer_layers_per_block", cfg["transformer_layers_per_block"]),
        context_dim=_uniform("cross_attention_dim", cfg["cross_attention_dim"]),
        num_classes=cfg["num_class_embeds"],
        dropout=float(cfg["dropout"]),
        norm_groups=_norm_groups(cfg["norm_num_groups"]),
        use_linear_projection=bool(cfg["use_linear_projection"]),
        flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]),
        freq_shift=float(cfg["freq_shift"]),
        **_heads(cfg, channels, attention_levels),
    )


def _check_no_ops(cfg: dict) -> None:
    known = set(DIFFUSERS_DEFAULTS) | set(NO_OP_VALUES) | IGNORED
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown diffusers UNet2DConditionModel option(s) {unknown}; known: {sorted(known)}")
    for name, allowed in NO_OP_VALUES.items():
        if name in cfg and cfg[name] not in allowed:
            raise ValueError(f"diffusers option {name}={cfg[name]!r} has no equivalent in our UNet (only {allowed})")


def _attention_levels(down_types: Any, up_types: Any) -> tuple[int, ...]:
    """Levels whose down block is CrossAttnDownBlock2D; the up blocks must mirror them (ours share one list)."""
    for kind in down_types:
        if kind not in (CROSS_DOWN, PLAIN_DOWN):
            raise ValueError(f"down block type {kind!r} is not supported (only {CROSS_DOWN}, {PLAIN_DOWN})")
    levels = tuple(i for i, kind in enumerate(down_types) if kind == CROSS_DOWN)
    mirrored = [CROSS_UP if i in levels else PLAIN_UP for i in reversed(range(len(down_types)))]
    if list(up_types) != mirrored:
        got, down = list(up_types), list(down_types)
        raise ValueError(f"up_block_types {got} must mirror down_block_types {down}, i.e. be {mirrored}")
    return levels


def _uniform(name: str, value: int | list | tuple) -> int:
    """An int, or a list of equal ints (our U-Net uses one value for every level)."""
    if isinstance(value, list | tuple):
        if len(set(value)) != 1 or isinstance(value[0], list | tuple):
            raise ValueError(f"{name}={value!r}: our UNet needs one value for every level")
        return value[0]
    return value


def _norm_groups(value: int | None) -> int:
    if value is None:
        raise ValueError("norm_num_groups=None (no output GroupNorm) has no equivalent in our UNet")
    return value


def _heads(cfg: dict, channels: tuple[int, ...], attention_levels: tuple[int, ...]) -> dict[str, int | None]:
    """num_heads if every attention layer has the same head count, else num_head_channels if heads have one width."""
    heads = cfg["num_attention_heads"] if cfg["num_attention_heads"] is not None else cfg["attention_head_dim"]
    if not isinstance(heads, list | tuple):
        heads = [heads] * len(channels)
    used = sorted(set(attention_levels) | {len(channels) - 1})  # the mid block uses the last level's heads
    counts = {heads[i] for i in used}
    if len(counts) == 1:
        return {"num_heads": counts.pop(), "num_head_channels": None}
    widths = {channels[i] // heads[i] for i in used}
    if len(widths) == 1 and all(channels[i] % heads[i] == 0 for i in used):
        return {"num_heads": None, "num_head_channels": widths.pop()}
    raise ValueError(f"attention heads {list(heads)} for channels {channels}: need equal counts or equal head widths")


def config_to_diffusers(config: UNetConfig) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config of the same network (needs cross-attention: context_dim set).

    Its input takes x_t and the concat channels as one tensor: in_channels = in_channels + concat_channels.
    """
    if config.context_dim is None:
        raise ValueError("UNet2DConditionModel always has cross-attention: a config with context_dim=None has no twin")
    chs, levels = config.level_channels, range(len(config.channel_mult))
    heads = [config.heads(ch) if ch % (config.num_head_channels or 1) == 0 else 1 for ch in chs]
    return {
        "in_channels": config.in_channels + config.concat_channels,
        "out_channels": config.out_channels,
        "block_out_channels": list(chs),
        "down_block_types": [CROSS_DOWN if i in config.attention_levels else PLAIN_DOWN for i in levels],
        "up_block_types": [CROSS_UP if i in config.attention_levels else PLAIN_UP for i in reversed(levels)],
        "layers_per_block": config.num_res_blocks,
        "transformer_layers_per_block": config.transformer_depth,
        "cross_attention_dim": config.context_dim,
        "attention_head_dim": heads,
        "num_class_embeds": config.num_classes,
        "dropout": config.dropout,
        "norm_num_groups": config.norm_groups,
        "use_linear_projection": config.use_linear_projection,
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "freq_shift": config.freq_shift,
    }


# Full-key renaming rules, diffusers -> ours, applied after `mid_block.attentions.0.` -> `mid_block.attention.`.
_BLOCK = r"((?:down|up)_blocks\.\d+|mid_block)"
_ATTN = r"((?:down|up)_blocks\.\d+\.attentions\.\d+|mid_block\.attention)"
_RULES = [
    (r"(conv_in|conv_out)\.(weight|bias)", r"\1.\2"),
    (r"conv_norm_out\.(weight|bias)", r"norm_out.\1"),
    (r"time_embedding\.(linear_[12])\.(weight|bias)", r"time_mlp.\1.\2"),
    (r"class_embedding\.weight", r"class_embedding.weight"),
    (_BLOCK + r"\.resnets\.(\d+)\.(norm1|conv1|norm2|conv2)\.(weight|bias)", r"\1.resnets.\2.\3.\4"),
    (_BLOCK + r"\.resnets\.(\d+)\.time_emb_proj\.(weight|bias)", r"\1.resnets.\2.time_proj.\3"),
    (_BLOCK + r"\.resnets\.(\d+)\.conv_shortcut\.(weight|bias)", r"\1.resnets.\2.skip.\3"),
    (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", r"down_blocks.\1.downsample.conv.\2"),
    (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", r"up_blocks.\1.upsample.conv.\2"),
    (_ATTN + r"\.(norm|proj_in|proj_out)\.(weight|bias)", r"\1.\2.\3"),
    (_ATTN + r"\.transformer_blocks\.(\d+)\.(norm[123])\.(weight|bias)", r"\1.blocks.\2.\3.\4"),
    (_ATTN + r"\.transformer_blocks\.(\d+)\.(attn[12])\.(to_[qkv])\.weight", r"\1.blocks.\2.\3.\4.weight"),
    (_ATTN + r"\.transformer_blocks\.(\d+)\.(attn[12])\.to_out\.0\.(weight|bias)", r"\1.blocks.\2.\3.to_out.\4"),
    (_ATTN + r"\.transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(weight|bias)", r"\1.blocks.\2.ff.proj_in.\3"),
    (_ATTN + r"\.transformer_blocks\.(\d+)\.ff\.net\.2\.(weight|bias)", r"\1.blocks.\2.ff.proj_out.\3"),
]
_COMPILED = [(re.compile(pattern), repl) for pattern, repl in _RULES]


def rename_key(key: str) -> str | None:
    """Our parameter name for a diffusers UNet2DConditionModel key, or None when it has no counterpart."""
    key = re.sub(r"^mid_block\.attentions\.0\.", "mid_block.attention.", key)
    for pattern, repl in _COMPILED:
        if match := pattern.fullmatch(key):
            return match.expand(repl)
    return None


def state_dict_from_diffusers(sd: dict) -> dict:
    """A diffusers UNet2DConditionModel state dict with our key names (same tensors); ValueError naming stray keys."""
    renamed = {key: rename_key(key) for key in sd}
    unmapped = sorted(key for key, new in renamed.items() if new is None)
    if unmapped:
        shown = ", ".join(unmapped[:10]) + (f" (+{len(unmapped) - 10} more)" if len(unmapped) > 10 else "")
        raise ValueError(f"{len(unmapped)} diffusers key(s) have no counterpart in our UNet: {shown}")
    return {renamed[key]: value for key, value in sd.items()}
