"""The denoising U-Net eps_theta(x_t, t, context) of DDPM and latent diffusion, and its registered variants.

Architecture: DDPM (Ho et al. 2020, arXiv:2006.11239, Appendix B: a PixelCNN++-style U-Net with Wide-ResNet
blocks, GroupNorm, self-attention at chosen resolutions, the Transformer sinusoidal embedding of t) extended as
in LDM (Rombach et al. 2022, Sec. 3.3): spatial transformers with cross-attention to conditioning tokens
(`context`), and spatially aligned conditions concatenated to the input (`concat`). An optional class-label
embedding is added to the time embedding (improved-diffusion, Nichol & Dhariwal 2021).

The module tree mirrors diffusers' `UNet2DConditionModel` (conv_in; time MLP; down blocks of resnets [+
transformers] + downsampler; a resnet-transformer-resnet mid block; up blocks of num_res_blocks + 1 resnets fed
with skip concatenations [+ transformers] + upsampler; norm_out, conv_out), so a diffusers checkpoint loads by
renaming keys (diffusers_compat.py).

Initialisation: conv_out, every ResBlock's conv2 and every transformer's proj_out start at zero, so each
residual branch starts as the identity and the untrained network predicts 0 (improved-diffusion / LDM
`zero_module`). The overfit test in tests/test_unets.py trains from this initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from components.base import Config, HubModule
from components.blocks import Upsample
from components.registry import UNETS
from components.unets.blocks import (
    RESNET_EPS,
    CrossMask,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TimestepMLP,
    cross_mask,
    timestep_embedding,
    zero_,
)
from components.validation import MAX_BLOCKS, MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, require_int


@dataclasses.dataclass(frozen=True)
class UNetConfig(Config):
    """Hyperparameters of `UNet`. Level i works at resolution H / 2**i with model_channels * channel_mult[i] channels.

    Attention heads: set exactly one of `num_heads` (per attention layer) or `num_head_channels` (width per head).
    `context_dim` None: no cross-attention (the transformers do self-attention only, as the pixel DDPM).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)
    num_heads: int | None = None
    num_head_channels: int | None = 32
    transformer_depth: int = 1
    context_dim: int | None = 128
    concat_channels: int = 0
    num_classes: int | None = None
    dropout: float = 0.0
    norm_groups: int = 32
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_sizes()
        self._check_channels()
        self._check_attention()

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads(self, channels: int) -> int:
        """Number of attention heads of a transformer with `channels` channels."""
        return self.num_heads if self.num_heads is not None else channels // self.num_head_channels

    def _check_sizes(self) -> None:
        widths = ("in_channels", "out_channels", "model_channels", "norm_groups")
        self.check_ints(*widths, maximum=MAX_CHANNELS, why=f"{MAX_CHANNELS}: SD's widest level has 1280 channels")
        self.check_ints("concat_channels", minimum=0, maximum=MAX_CHANNELS)
        if self.context_dim is not None:
            self.check_ints("context_dim", maximum=MAX_CHANNELS, why="SDXL's context is 2048 wide")
        if self.num_classes is not None:
            self.check_ints("num_classes", maximum=MAX_CLASSES, why="ImageNet-21k has 21,841")
        self.check_ints("num_res_blocks", maximum=MAX_BLOCKS, why="DDPM and SD use 2")
        self.check_ints("transformer_depth", maximum=MAX_DEPTH, why="SDXL's deepest is 10")
        self.check_levels("model_channels")
        # Each level has 2 * num_res_blocks + 1 ResBlocks (down and up) of two 3x3 convolutions: 18 ch^2 each, and as
        # many transformers at attention levels: about 12 ch^2 + 2 ch context_dim each per depth (an underestimate).
        context, depth = self.context_dim or 0, self.transformer_depth
        per_level = [
            (2 * self.num_res_blocks + 1)
            * (18 * ch * ch + (i in self.attention_levels) * depth * 2 * ch * (6 * ch + context))
            for i, ch in enumerate(self.level_channels)
        ]
        self.check_parameters(sum(per_level), "model_channels, channel_mult, num_res_blocks and transformer_depth")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def _check_channels(self) -> None:
        if self.model_channels % 2:
            raise ValueError(f"model_channels must be even (sin and cos halves), got {self.model_channels}")
        for ch in self.level_channels:
            if ch % self.norm_groups:
                raise ValueError(
                    f"every level's channels must be divisible by norm_groups={self.norm_groups} (GroupNorm), "
                    f"but level channels are {self.level_channels}"
                )

    def _check_attention(self) -> None:
        levels, chosen = len(self.channel_mult), self.attention_levels
        for i in chosen:
            require_int("each attention_levels entry", i, minimum=0, maximum=levels - 1, why="a level index")
        if (self.num_heads is None) == (self.num_head_channels is None):
            got = f"num_heads={self.num_heads}, num_head_channels={self.num_head_channels}"
            raise ValueError(f"set exactly one of num_heads or num_head_channels, got {got}")
        what = "num_heads" if self.num_heads is not None else "num_head_channels"
        self.check_ints(what)
        attended = [self.level_channels[i] for i in chosen] + [self.level_channels[-1]]  # + the mid block
        if any(ch % getattr(self, what) for ch in attended):
            raise ValueError(
                f"channels of the attention levels and mid block {attended} must be divisible by "
                f"{what}={getattr(self, what)}"
            )


class UNetInputs(NamedTuple):
    """The U-Net's inputs once validated (`UNet.prepare`): t as (B,), the context mask as one CrossMask."""

    x_t: torch.Tensor  # (B, in_channels, H, W)
    t: torch.Tensor  # (B,)
    context: torch.Tensor | None  # (B, L, context_dim)
    key_mask: CrossMask | None  # None: every context token is real
    concat: torch.Tensor | None  # (B, concat_channels, H, W)
    class_labels: torch.Tensor | None  # (B,)


def _transformer(config: UNetConfig, channels: int) -> SpatialTransformer:
    return SpatialTransformer(
        channels,
        config.heads(channels),
        depth=config.transformer_depth,
        context_dim=config.context_dim,
        groups=config.norm_groups,
        linear_proj=config.use_linear_projection,
        dropout=config.dropout,
    )


def _resblock(config: UNetConfig, in_ch: int, out_ch: int) -> ResBlock:
    return ResBlock(in_ch, out_ch, config.time_embed_dim, groups=config.norm_groups, dropout=config.dropout)


class DownBlock(nn.Module):
    """One encoder level: num_res_blocks ResBlocks [each followed by a transformer], then a Downsample (not last)."""

    def __init__(self, config: UNetConfig, level: int):
        super().__init__()
        in_ch = config.level_channels[max(level - 1, 0)]
        out_ch = config.level_channels[level]
        n = config.num_res_blocks
        self.resnets = nn.ModuleList(_resblock(config, in_ch if j == 0 else out_ch, out_ch) for j in range(n))
        attend = level in config.attention_levels
        self.attentions = nn.ModuleList(_transformer(config, out_ch) for _ in range(n if attend else 0))
        self.downsample = Downsample(out_ch) if level < len(config.channel_mult) - 1 else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: dict, skips: list[torch.Tensor]) -> torch.Tensor:
        """Run the level; push every output the decoder will concatenate onto `skips`."""
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions:
                h = self.attentions[j](h, **cond)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        return h


class MidBlock(nn.Module):
    """The bottleneck at the lowest resolution: ResBlock -> transformer -> ResBlock (DDPM Appendix B, LDM)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        ch = config.level_channels[-1]
        self.resnets = nn.ModuleList([_resblock(config, ch, ch), _resblock(config, ch, ch)])
        self.attention = _transformer(config, ch)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.resnets[1](self.attention(self.resnets[0](h, emb), **cond), emb)


class UpBlock(nn.Module):
    """One decoder level: num_res_blocks + 1 ResBlocks, each on [h, skip] concatenated [+ transformer], Upsample."""

    def __init__(self, config: UNetConfig, level: int, in_ch: int):
        super().__init__()
        chs, n = config.level_channels, config.num_res_blocks
        out_ch = chs[level]
        skip_chs = [out_ch] * n + [chs[max(level - 1, 0)]]  # the encoder outputs this level pops, in order
        ins = [in_ch] + [out_ch] * n
        self.resnets = nn.ModuleList(_resblock(config, ins[j] + skip_chs[j], out_ch) for j in range(n + 1))
        attend = level in config.attention_levels
        self.attentions = nn.ModuleList(_transformer(config, out_ch) for _ in range(n + 1 if attend else 0))
        self.upsample = Upsample(out_ch) if level > 0 else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: dict, skips: list[torch.Tensor]) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)  # (B, C, H, W) + (B, C_skip, H, W) on channels
            if self.attentions:
                h = self.attentions[j](h, **cond)
        return self.upsample(h) if self.upsample is not None else h


class UNet(HubModule):
    """eps_theta(x_t, t, context): DDPM / LDM U-Net. See the module docstring and `forward`."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet takes a UNetConfig, got {type(config).__name__}")
        self.config = config
        chs = config.level_channels
        self.conv_in = nn.Conv2d(config.in_channels + config.concat_channels, chs[0], 3, padding=1)
        self.time_mlp = TimestepMLP(config.model_channels, config.time_embed_dim)
        if config.num_classes is not None:
            self.class_embedding = nn.Embedding(config.num_classes, config.time_embed_dim)
        self.down_blocks = nn.ModuleList(DownBlock(config, i) for i in range(len(chs)))
        self.mid_block = MidBlock(config)
        ups = reversed(range(len(chs)))
        self.up_blocks = nn.ModuleList(UpBlock(config, i, chs[min(i + 1, len(chs) - 1)]) for i in ups)
        self.norm_out = nn.GroupNorm(config.norm_groups, chs[0], eps=RESNET_EPS)
        self.conv_out = zero_(nn.Conv2d(chs[0], config.out_channels, 3, padding=1))

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        context: torch.Tensor | None = None,
        *,
        context_mask: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from x_t (B, in_channels, H, W) at step t; returns (B, out_channels, H, W).

        t: LongTensor (B,), or an int / 0-d tensor used for the whole batch (float t is allowed: the sinusoid is
        defined for any real t). context: (B, L, context_dim) tokens for cross-attention; None skips the
        cross-attention branch entirely (the same output as a context_mask with every token False).
        context_mask: (B, L) bool or 0/1 ints, True = a real token, False = padding that is never attended to.
        concat: (B, concat_channels, H, W), concatenated to x_t on channels; required iff concat_channels > 0.
        class_labels: (B,) ints in [0, num_classes), whose embedding is added to the time embedding; None adds
        none (the unconditional model).
        """
        return self.denoise(
            self.prepare(x_t, t, context, context_mask=context_mask, concat=concat, class_labels=class_labels)
        )

    def prepare(
        self, x_t: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor | None = None, **inputs: Any
    ) -> UNetInputs:
        """`forward`'s arguments (inputs: context_mask, concat, class_labels) validated against the config, t as
        (B,), the mask as one CrossMask for every cross-attention layer: everything that branches on values, so
        that `denoise` branches only on which inputs are present (components/unets/traced.py traces it)."""
        cond = self._check_inputs(x_t, context, **inputs)
        concat, labels = inputs.get("concat"), inputs.get("class_labels")
        return UNetInputs(x_t, _timesteps(t, x_t), cond["context"], cond["key_mask"], concat, labels)

    def denoise(self, inputs: UNetInputs) -> torch.Tensor:
        """The network on prepared inputs (`prepare`): (B, in_channels, H, W) -> (B, out_channels, H, W)."""
        x_t, t, context, key_mask, concat, class_labels = inputs
        cond = {"context": context, "key_mask": key_mask}
        emb = F.silu(self.embed(t, class_labels, x_t.dtype))  # SiLU once, shared by every ResBlock
        h = self.conv_in(x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1))
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, cond, skips)
        h = self.mid_block(h, emb, cond)
        for block in self.up_blocks:
            h = block(h, emb, cond, skips)
        return self.conv_out(F.silu(self.norm_out(h)))

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Time embedding MLP(sinusoid(t)) [+ class embedding], (B,) -> (B, 4 * model_channels)."""
        c = self.config
        sinusoid = timestep_embedding(t, c.model_channels, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift)
        emb = self.time_mlp(sinusoid.to(dtype))
        return emb if class_labels is None else emb + self.class_embedding(class_labels)

    def _check_inputs(self, x_t, context, context_mask=None, concat=None, class_labels=None) -> dict:
        """Validate every input against the config; return the transformers' keyword arguments."""
        _check_image(x_t, self.config)
        _check_concat(concat, x_t, self.config)
        _check_class_labels(class_labels, x_t.shape[0], self.config)
        key_mask = cross_mask(_check_mask(context_mask, context))  # once per forward, not in every transformer
        return {"context": _check_context(context, x_t, self.config), "key_mask": key_mask}


def _timesteps(t: torch.Tensor | int | float, x_t: torch.Tensor) -> torch.Tensor:
    """t as a (B,) tensor on x_t's device: an int, float or 0-d tensor is broadcast over the batch."""
    batch = x_t.shape[0]
    if isinstance(t, bool) or not isinstance(t, int | float | torch.Tensor):
        raise TypeError(f"t must be an int, a float, or a tensor of shape () or ({batch},), got {type(t).__name__}")
    t = torch.as_tensor(t, device=x_t.device)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold integer or real time steps, got dtype {t.dtype}")
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape () or ({batch},) for a batch of {batch}, got {tuple(t.shape)}")
    return t


def _check_image(x_t: torch.Tensor, config: UNetConfig) -> None:
    if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point():
        raise TypeError(f"x_t must be a floating-point tensor, got {type(x_t).__name__} {getattr(x_t, 'dtype', '')}")
    if x_t.dim() != 4 or x_t.shape[1] != config.in_channels:
        raise ValueError(f"x_t must have shape (B, {config.in_channels}, H, W), got {tuple(x_t.shape)}")
    factor = 2 ** (len(config.channel_mult) - 1)
    if x_t.shape[2] % factor or x_t.shape[3] % factor:
        raise ValueError(
            f"x_t's height and width must be divisible by {factor} (the U-Net halves them "
            f"{len(config.channel_mult) - 1} times), got {tuple(x_t.shape[2:])}"
        )


def _check_concat(concat: torch.Tensor | None, x_t: torch.Tensor, config: UNetConfig) -> None:
    n = config.concat_channels
    if concat is None:
        if n:
            raise ValueError(f"this U-Net has concat_channels={n}: pass concat of shape (B, {n}, H, W)")
        return
    if not n:
        raise ValueError("concat was given but this U-Net has concat_channels=0 (no spatially concatenated condition)")
    expected = (x_t.shape[0], n, *x_t.shape[2:])
    if not isinstance(concat, torch.Tensor) or tuple(concat.shape) != expected:
        raise ValueError(f"concat must have shape {expected} (batch and size of x_t), got {_shape(concat)}")


def _check_context(context: torch.Tensor | None, x_t: torch.Tensor, config: UNetConfig) -> torch.Tensor | None:
    if context is None:
        return None
    if config.context_dim is None:
        raise ValueError("context was given but this U-Net has context_dim=None (no cross-attention)")
    if not isinstance(context, torch.Tensor) or context.dim() != 3:
        raise ValueError(f"context must have shape (B, L, {config.context_dim}), got {_shape(context)}")
    if context.shape[0] != x_t.shape[0] or context.shape[2] != config.context_dim:
        raise ValueError(
            f"context must have shape ({x_t.shape[0]}, L, {config.context_dim}) (batch of x_t, context_dim), "
            f"got {tuple(context.shape)}"
        )
    return context.to(x_t.dtype)


def _check_mask(context_mask: torch.Tensor | None, context: torch.Tensor | None) -> torch.Tensor | None:
    """The key padding mask as bool (B, L), checked."""
    if context_mask is None:
        return None
    if context is None:
        raise ValueError("context_mask was given without a context")
    if not isinstance(context_mask, torch.Tensor) or context_mask.is_floating_point() or context_mask.is_complex():
        raise TypeError(f"context_mask must be a bool (or 0/1 integer) tensor, got {_shape(context_mask)}")
    if tuple(context_mask.shape) != tuple(context.shape[:2]):
        expected, got = tuple(context.shape[:2]), tuple(context_mask.shape)
        raise ValueError(f"context_mask must have shape {expected} (B, L of context), got {got}")
    return context_mask.to(device=context.device, dtype=torch.bool)


def _check_class_labels(class_labels: torch.Tensor | None, batch: int, config: UNetConfig) -> None:
    if class_labels is None:
        return
    if config.num_classes is None:
        raise ValueError("class_labels were given but this U-Net has num_classes=None (no class embedding)")
    if not isinstance(class_labels, torch.Tensor) or class_labels.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"class_labels must be an int64/int32 tensor of shape ({batch},), got {_shape(class_labels)}")
    if tuple(class_labels.shape) != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}")
    if bool((class_labels < 0).any() | (class_labels >= config.num_classes).any()):
        raise ValueError(f"class_labels must lie in [0, {config.num_classes}), got {class_labels.tolist()}")


def _shape(x: object) -> str:
    return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


def build(defaults: dict, overrides: dict) -> UNet:
    """A U-Net from a variant's defaults and the caller's overrides (any UNetConfig field).

    When `channel_mult` is overridden with fewer levels and `attention_levels` is not, the default attention
    levels that no longer exist are dropped (e.g. the 8x8-latent LDM with channel_mult=(1, 2)).
    """
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown U-Net option(s) {unknown}; allowed: {sorted(fields)}")
    merged = {**defaults, **overrides}
    if "attention_levels" not in overrides and isinstance(merged["channel_mult"], tuple | list):
        merged["attention_levels"] = tuple(i for i in defaults["attention_levels"] if i < len(merged["channel_mult"]))
    return UNet(UNetConfig(**merged))


# 64x64x3 -> levels at 64, 32, 16, 8; ~3.9M parameters, lean enough to train on a 2-core CPU.
DDPM_64 = dict(
    in_channels=3,
    out_channels=3,
    model_channels=48,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attention_levels=(2,),
    num_heads=None,
    num_head_channels=32,
    context_dim=None,
    norm_groups=16,
)
# 32x32x3 -> levels at 32, 16, 8 (24, 48, 48 channels), self-attention at 8x8 and in the mid block; 0.76M
# parameters (1.5 MB in float16): the loss study's model, small enough that three objectives each train ~11 CPU
# minutes on one core (README, "L_simple vs the bound"); attention at 16x16 would cost ~40% more per step here.
DDPM_32 = {**DDPM_64, "model_channels": 24, "channel_mult": (1, 2, 2), "num_head_channels": 24, "norm_groups": 8}
# 16x16x4 -> levels at 16, 8, 4 with attention (self + cross) at 8x8 and 4x4 and the mid block; ~4.7M parameters.
LDM_16 = dict(
    in_channels=4,
    out_channels=4,
    model_channels=64,
    channel_mult=(1, 1, 2),
    num_res_blocks=1,
    attention_levels=(1, 2),
    num_heads=None,
    num_head_channels=32,
    context_dim=128,
    norm_groups=32,
)
TINY = dict(model_channels=16, channel_mult=(1, 2), norm_groups=8, num_head_channels=8, attention_levels=(1,))


@UNETS.register("unet-ddpm", tiny=TINY)
def unet_ddpm(**overrides) -> UNet:
    """Pixel-space DDPM U-Net for 64x64x3 images, unconditional, self-attention at 16x16 (DDPM Appendix B)."""
    return build(DDPM_64, overrides)


@UNETS.register("unet-ddpm-32", tiny=TINY)
def unet_ddpm_32(**overrides) -> UNet:
    """Pixel-space DDPM U-Net for 32x32x3 images, self-attention at 8x8; out_channels=6 for a learned variance."""
    return build(DDPM_32, overrides)


@UNETS.register("unet-ldm", tiny={**TINY, "context_dim": 16})
def unet_ldm(**overrides) -> UNet:
    """Latent-space LDM U-Net for 16x16x4 latents, cross-attention (context 128) at 8x8 and 4x4 (LDM Sec. 3.3)."""
    return build(LDM_16, overrides)
