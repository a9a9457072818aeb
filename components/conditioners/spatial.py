"""Spatial conditioner: a semantic map -> label-fraction channels on the latent grid, concatenated to z_t.

LDM (Rombach et al. 2022, Sec. 4.3.2, semantic synthesis) concatenates a downsampled one-hot semantic map
to the U-Net's input. A map is either an integer label per pixel, (H, W) or (B, H, W), or an RGB map
(H, W, 3) / (B, H, W, 3) uint8 (a PIL image too), each pixel snapped to the nearest palette colour
(Euclidean RGB distance; anti-aliased strokes snap back, no colour is rejected). A 3-D uint8 array whose last
dimension is 3 is read as one RGB map. Label -1 means "unlabelled".

Resizing is area averaging (adaptive average pooling): a latent pixel holds the fraction of its image pixels
carrying each label, so the channels sum to 1 on labelled pixels (0 where all unlabelled). The module has no
learned parameters (channels = num_labels, what the U-Net's concat_channels must equal); the palette is a
non-persistent buffer, so model.safetensors is empty and the buffer's device/dtype set the output's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from components.base import Config, HubModule
from components.registry import CONDITIONERS
from components.validation import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_LEVELS, require_int

# Label 0 is the background (black), then distinct colours (Trubetskoy's list), one per label.
DEFAULT_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200),
    (255, 225, 25), (245, 130, 48), (145, 30, 180), (70, 240, 240),
)  # fmt: skip
MAX_SIDE_FACTOR = 8  # a map's side: at most 8x the model's image_size, as the pipelines' height and width
UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class SpatialConfig(Config):
    num_labels: int = 4
    palette: tuple[tuple[int, int, int], ...] = DEFAULT_PALETTE[:4]  # RGB of label i, for RGB maps
    downsample_factor: int = 4  # the autoencoder's f: latent grid = image size / f
    image_size: int = 64  # side of the null map that empty_input() makes

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints("num_labels", maximum=MAX_CLASSES)
        self.check_ints("downsample_factor", maximum=2 ** (MAX_LEVELS - 1), why="the autoencoder's factor")
        self.check_ints("image_size", maximum=MAX_IMAGE_SIZE, why="SD's images are 512 or 768")
        if len(self.palette) != self.num_labels:
            raise ValueError(f"palette needs one RGB triple per label ({self.num_labels}), got {len(self.palette)}")
        if any(len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in self.palette):
            raise ValueError(f"palette colours must be (r, g, b) ints in [0, 255], got {self.palette}")
        if len(set(self.palette)) != len(self.palette):
            raise ValueError(f"palette colours must be distinct, got {self.palette}")
        if self.image_size % self.downsample_factor:
            f = self.downsample_factor
            raise ValueError(f"image_size {self.image_size} is not divisible by downsample_factor {f}")


class SpatialConditioner(HubModule):
    """maps -> (B, num_labels, H/f, W/f) label fractions (module docstring)."""

    config_class = SpatialConfig
    mode = "concat"
    kind = "map"  # takes semantic maps (components/conditioners/base.py)

    def __init__(self, config: SpatialConfig):
        super().__init__()
        self.config = config
        self.register_buffer("palette", torch.tensor(config.palette, dtype=torch.float32), persistent=False)

    @property
    def channels(self) -> int:
        return self.config.num_labels

    def empty_input(self) -> torch.Tensor:
        """The null map for classifier-free guidance: every pixel unlabelled, so all channels are 0.

        (An all-background map would be a real condition, "no shape", not the absence of one.)
        """
        side = self.config.image_size
        return torch.full((side, side), UNLABELLED, dtype=torch.long, device=self.palette.device)

    def forward(self, maps: Any, latent_size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Label fractions (B, num_labels, h, w); (h, w) = (H/f, W/f) unless `latent_size` is given."""
        labels = self.to_labels(maps)  # (B, H, W)
        size = self.grid_size(labels.shape[-2:], latent_size)
        one_hot = F.one_hot(labels + 1, self.channels + 1)[..., 1:]  # unlabelled (-1) -> all zeros
        one_hot = one_hot.permute(0, 3, 1, 2).to(self.palette.dtype)  # (B, H, W, K) -> (B, K, H, W)
        return F.adaptive_avg_pool2d(one_hot, size)

    def grid_size(self, hw: torch.Size, latent_size: int | tuple[int, int] | None) -> tuple[int, int]:
        if latent_size is None:
            f = self.config.downsample_factor
            if hw[0] % f or hw[1] % f:
                raise ValueError(f"map size {tuple(hw)} is not divisible by downsample_factor {f}; pass latent_size=")
            return hw[0] // f, hw[1] // f
        size = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
        if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= d for s, d in zip(size, hw, strict=False)):
            raise ValueError(f"latent_size must be an int or (h, w) of positive ints within the map {tuple(hw)}")
        return size

    def to_labels(self, maps: Any) -> torch.Tensor:
        """Any accepted map (module docstring) -> long labels (B, H, W) on the palette's device, range-checked."""
        if isinstance(maps, (list, tuple)):
            if not maps:
                raise ValueError("empty batch: pass at least one map")
            return torch.cat([self.to_labels(m) for m in maps])
        x = as_tensor(maps, MAX_SIDE_FACTOR * self.config.image_size).to(self.palette.device)
        if x.dim() in (3, 4) and x.shape[-1] == 3:  # (H, W, 3): RGB, which must be uint8 (a label map is wider)
            if x.dtype != torch.uint8:
                raise ValueError(
                    f"a map of shape {tuple(x.shape)} ending in 3 is read as RGB, which must be uint8, got {x.dtype}; "
                    "label maps are integer (H, W) or (B, H, W)"
                )
            x = self.snap(x)
        x = x.long()  # before the range check: uint8 cannot hold -1
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or 0 in x.shape:
            raise ValueError(f"a label map is (H, W) or (B, H, W), an RGB map (H, W, 3) uint8; got {tuple(x.shape)}")
        if x.min() < UNLABELLED or x.max() >= self.channels:
            low, high = int(x.min()), int(x.max())
            raise ValueError(
                f"map labels must lie in [0, {self.channels - 1}] (or -1: unlabelled), got [{low}, {high}]"
            )
        return x

    def snap(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (..., 3) uint8 -> label of the nearest palette colour (Euclidean distance in RGB)."""
        distance = torch.cdist(rgb.reshape(-1, 3).float(), self.palette.float())  # (N, K)
        return distance.argmin(dim=1).reshape(rgb.shape[:-1])


def as_tensor(maps: Any, largest: int | None = None) -> torch.Tensor:
    """A PIL image, numpy array or integer tensor as a tensor; floats and other types are refused, and so is a map
    with a side above `largest` (checked before anything is copied)."""
    shape = tuple(maps.size[::-1]) if isinstance(maps, Image.Image) else tuple(getattr(maps, "shape", ()))
    sides = shape[-3:-1] if len(shape) in (3, 4) and shape[-1] == 3 else shape[-2:]  # (H, W) of RGB or labels
    if largest is not None and any(side > largest for side in sides):
        raise ValueError(f"a map may be at most {largest} x {largest} ({MAX_SIDE_FACTOR}x image_size), got {shape}")
    if isinstance(maps, Image.Image):
        maps = np.array(maps.convert("RGB"))  # a writable copy
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.array(maps))  # a copy: never aliases the caller's array
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"a map is a tensor, numpy array or PIL image (or a list of them), got {type(maps).__name__}")
    if maps.dtype.is_floating_point or maps.dtype.is_complex or maps.dtype == torch.bool:
        raise TypeError(f"maps must hold integer labels or uint8 RGB, got dtype {maps.dtype}")
    return maps


@CONDITIONERS.register("seg", tiny={})
def seg(*, num_labels: int = 4, palette: Any = None, **config: int) -> SpatialConditioner:
    """A semantic map as label-fraction channels at the latent grid, concatenated to z_t (default palette if None)."""
    if palette is None:
        why = "without a palette: one default colour each"
        require_int("num_labels", num_labels, minimum=1, maximum=len(DEFAULT_PALETTE), why=why)
        palette = DEFAULT_PALETTE[:num_labels]
    return SpatialConditioner(SpatialConfig(num_labels=num_labels, palette=tuple(map(tuple, palette)), **config))
