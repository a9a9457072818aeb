"""The U-Net's building blocks, each once: timestep embedding, ResBlock, attention, spatial transformer, resampling.

The module tree mirrors diffusers' `UNet2DConditionModel` parts so a diffusers checkpoint maps onto ours by
renaming keys (components/unets/diffusers_compat.py). Sources: DDPM (Ho et al. 2020, arXiv:2006.11239,
Appendix B: Transformer sinusoidal position embedding of t, Wide-ResNet blocks with GroupNorm, self-attention at
16x16); LDM (Rombach et al. 2022, Sec. 3.3: cross-attention to conditioning tokens inside a spatial
transformer); GEGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer").
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

RESNET_EPS = 1e-5  # GroupNorm eps of ResBlocks and the output norm (diffusers' norm_eps default)
TRANSFORMER_EPS = 1e-6  # GroupNorm eps at the spatial transformer's input (as LDM / diffusers)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch starts as the identity (improved-diffusion `zero_module`)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of t (Vaswani et al. 2017 Sec. 3.5, used for t by DDPM Appendix B), (B,) -> (B, dim).

    Frequencies w_i = 10000^(-i / (dim/2 - freq_shift)), i = 0..dim/2-1; output [sin(t w), cos(t w)], or
    [cos, sin] when `flip_sin_to_cos` (Stable Diffusion: flip_sin_to_cos=True, freq_shift=0). Computed in float32.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]  # (B, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class TimestepMLP(nn.Module):
    """The embedding MLP: Linear -> SiLU -> Linear, from the sinusoid width to the time-embedding width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(emb)))


class ResBlock(nn.Module):
    """Wide-ResNet block with the time embedding added (DDPM Appendix B).

    h = conv2(drop(SiLU(GN(conv1(SiLU(GN(x))) + W SiLU(emb))))); out = skip(x) + h, skip a 1x1 conv if C changes.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=RESNET_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=RESNET_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, E) already passed through SiLU by the caller (shared by every block)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(emb)[:, :, None, None]  # (B, C_out) -> (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class CrossMask(NamedTuple):
    """A (B, L) key padding mask prepared once per U-Net forward for every cross-attention layer.

    attend: (B, 1, 1, L) bool, True = attend; rows with no real token are unmasked (their softmax would be 0/0).
    has_token: (B, 1, 1) bool, False where a sample has no real token (its cross-attention output is zeroed);
    None when every sample has one.
    """

    attend: torch.Tensor
    has_token: torch.Tensor | None


def cross_mask(key_mask: torch.Tensor | None) -> CrossMask | None:
    """The CrossMask of a (B, L) bool key mask; None when it masks nothing (the cheaper unmasked attention)."""
    if key_mask is None or bool(key_mask.all()):
        return None
    has_token = key_mask.any(dim=-1)  # (B,)
    attend = (key_mask | ~has_token[:, None])[:, None, None, :]  # (B, L) -> (B, 1, 1, L), broadcast over heads
    return CrossMask(attend, None if bool(has_token.all()) else has_token[:, None, None])


class Attention(nn.Module):
    """Multi-head attention softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017 Eq. 1) via F.scaled_dot_product_attention.

    Self-attention when `context` is None, else cross-attention (LDM Sec. 3.3: Q from the image tokens, K and V
    from the conditioning tokens). `key_mask` (B, L) bool: True = a real token to attend to, False = padding.
    """

    def __init__(self, dim: int, heads: int, *, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, dim), context (B, L, context_dim); key_mask (B, L), or already (B, 1, 1, L) as the U-Net
        prepares it once per forward (`cross_mask`)."""
        source = x if context is None else context
        q, k, v = (
            self.split_heads(proj(inp)) for proj, inp in ((self.to_q, x), (self.to_k, source), (self.to_v, source))
        )
        mask = key_mask if key_mask is None or key_mask.dim() == 4 else key_mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        batch, heads, tokens, width = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, heads * width))  # (B, h, N, d) -> (B, N, h*d)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, h*d) -> (B, h, N, d): a view and a transpose (einops' rearrange did the same at ~10 us a call,
        ~40 calls a forward; README, "Where the time goes")."""
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)


class GEGLU(nn.Module):
    """Feed-forward x -> W2 (a * GELU(g)), [a, g] = W1 x: GEGLU of Shazeer 2020 Eq. 6, as in LDM / SD (4x width)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(a * F.gelu(g)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x += SelfAttn(LN x); x += CrossAttn(LN x, context); x += GEGLU(LN x). LDM Sec. 3.3.

    Without `context_dim` there is no cross-attention (pixel DDPM: self-attention only). Given a context_dim but
    called with context=None, the cross-attention branch is skipped: it adds nothing, exactly as when every
    context token is masked out (see `cross_attend`).
    """

    def __init__(self, dim: int, heads: int, *, context_dim: int | None, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim) if context_dim is not None else None
        self.attn2 = Attention(dim, heads, context_dim=context_dim) if context_dim is not None else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim, dropout=dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, key_mask: torch.Tensor | CrossMask | None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if context is not None and self.attn2 is not None:
            x = x + self.cross_attend(self.norm2(x), context, key_mask)
        return x + self.ff(self.norm3(x))

    def cross_attend(
        self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | CrossMask | None
    ) -> torch.Tensor:
        """Cross-attention; a sample whose context tokens are all masked out gets 0 (attends to nothing).

        key_mask: (B, L) bool, or the CrossMask the U-Net prepares from it once per forward (`cross_mask`)."""
        mask = key_mask if key_mask is None or isinstance(key_mask, CrossMask) else cross_mask(key_mask)
        if mask is None:
            return self.attn2(x, context)
        out = self.attn2(x, context, mask.attend)
        return out if mask.has_token is None else out * mask.has_token.to(out.dtype)


class SpatialTransformer(nn.Module):
    """Image features as tokens through transformer blocks, with a residual: LDM Sec. 3.3 / Fig. 3.

    GroupNorm -> proj_in (1x1 conv, or Linear on tokens when `linear_proj`, as SD 2) -> blocks -> proj_out -> + x.
    proj_out starts at zero, so the block starts as the identity (LDM `zero_module`).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        *,
        depth: int,
        context_dim: int | None,
        groups: int,
        linear_proj: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_EPS)
        layer = nn.Linear if linear_proj else functools.partial(nn.Conv2d, kernel_size=1)
        make_proj = lambda: layer(channels, channels)  # noqa: E731
        self.proj_in = make_proj()
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, heads, context_dim=context_dim, dropout=dropout) for _ in range(depth)
        )
        self.proj_out = zero_(make_proj())

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | CrossMask | None = None
    ) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        if not self.linear_proj:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        if self.linear_proj:
            h = self.proj_in(h)
        for block in self.blocks:
            h = block(h, context, key_mask)
        if self.linear_proj:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(x.shape[0], -1, height, width)  # (B, H*W, C) -> (B, C, H, W)
        if not self.linear_proj:
            h = self.proj_out(h)
        return x + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (DDPM Appendix B / improved-diffusion `Downsample`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
