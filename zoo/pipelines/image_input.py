"""Images and masks given to `generate` (image-to-image, inpainting), checked and converted once, here.

What is accepted, and what is done with it (each conversion is said by a UserWarning):

- a PIL image, a path to an image file, a uint8 / uint16 array (HxW or HxWxC), or a float tensor (3, H, W) or
  (1, 3, H, W) in [-1, 1];
- alpha is dropped, grayscale is repeated to RGB, 16-bit values are scaled to 8 bits (x / 257);
- an image of another size than the one drawn is resized (bicubic); one over MAX_PIXELS pixels is refused
  from its header, before PIL decodes it;
- a mask (white = repaint) is read as grayscale in [0, 1] and thresholded at 0.5, as diffusers'
  VaeImageProcessor(do_binarize=True) does; it must have the image's size and must not be empty.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_PIXELS = 4096 * 4096  # larger images are refused before decoding (a decompression bomb costs memory)


def open_image(image: Any, what: str = "image") -> Image.Image | torch.Tensor:
    """A path, array or PIL image as a PIL image (header read, pixels not yet decoded); tensors pass through."""
    if isinstance(image, str | Path):
        try:
            image = Image.open(image)  # lazy: only the header is read
        except OSError as err:
            raise ValueError(f"cannot read {what} {str(image)!r}: {err}") from err
    elif isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or image.shape[-1] == 0:
            raise ValueError(f"an {what} array must be uint8 or uint16, HxW or HxWxC, got {image.dtype} {image.shape}")
        image = array_to_pil(image)
    if isinstance(image, torch.Tensor):
        return image
    if not isinstance(image, Image.Image):
        kind = type(image).__name__
        raise TypeError(f"{what} must be a PIL image, a path, a uint8 array or an image tensor, got {kind}")
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{what} is {width}x{height}: over {MAX_PIXELS} pixels, refused before decoding")
    return image


def array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype == np.uint16:
        return Image.fromarray(array) if array.ndim == 2 else Image.fromarray((array // 257).astype(np.uint8))
    return Image.fromarray(array if array.ndim == 2 or array.shape[-1] in (3, 4) else array[..., 0])


def to_rgb(image: Image.Image, what: str) -> Image.Image:
    """8-bit RGB, each conversion said: alpha dropped, grayscale repeated, 16 bits scaled to 8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        warnings.warn(f"{what}: 16-bit grayscale, scaled to 8 bits (x / 257) and repeated to RGB", stacklevel=4)
        array = np.asarray(image, dtype=np.int64)
        return Image.fromarray(np.clip(array // 257, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"{what}: its alpha channel is dropped (the model draws opaque RGB)", stacklevel=4)
    elif image.mode in ("L", "1"):
        warnings.warn(f"{what}: grayscale, repeated to RGB", stacklevel=4)
    return image.convert("RGB")


def resized(image: Image.Image, size: tuple[int, int], what: str, resample: Image.Resampling) -> Image.Image:
    """image at size = (width, height); a different size is resized and said."""
    if image.size == size:
        return image
    warnings.warn(f"{what} is {image.size[0]}x{image.size[1]}: resized to {size[0]}x{size[1]}", stacklevel=4)
    return image.resize(size, resample)


def load_image(image: Any, height: int, width: int) -> torch.Tensor:
    """The image to edit as (1, 3, height, width) in [-1, 1]."""
    opened = open_image(image)
    if isinstance(opened, torch.Tensor):
        return tensor_image(opened, height, width)
    rgb = resized(to_rgb(opened, "image"), (width, height), "image", Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
    return (array.permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)  # (H, W, 3) -> (1, 3, H, W) in [-1, 1]


def tensor_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = x.unsqueeze(0) if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
        raise ValueError(f"an image tensor must be float (3, H, W) or (1, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.abs().max() > 1:
        raise ValueError("an image tensor must hold finite values in [-1, 1]")
    if tuple(x.shape[2:]) != (height, width):
        warnings.warn(f"image is {x.shape[3]}x{x.shape[2]}: resized to {width}x{height}", stacklevel=3)
        x = F.interpolate(x.float(), size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x.float()


def load_mask(mask: Any, image: Any, height: int, width: int) -> torch.Tensor:
    """The mask as (1, 1, height, width) of 0 (keep) and 1 (repaint): white = repaint, thresholded at 0.5."""
    opened, reference = open_image(mask, "mask_image"), open_image(image)
    if isinstance(opened, torch.Tensor):
        m = opened.float().reshape(1, 1, *opened.shape[-2:]) if opened.dim() in (2, 3, 4) else opened
        if m.dim() != 4 or m.numel() != opened.numel():
            raise ValueError(f"a mask tensor must be (H, W), (1, H, W) or (1, 1, H, W), got {tuple(opened.shape)}")
        mask_size = (m.shape[3], m.shape[2])
    else:
        mask_size = opened.size
        gray = opened.convert("F") if opened.mode in ("I;16", "I;16B", "I;16L", "I") else opened.convert("L")
        scale = 65535.0 if gray.mode == "F" else 255.0
        m = torch.from_numpy(np.asarray(gray, dtype=np.float32) / scale)[None, None]
    image_size = (reference.shape[-1], reference.shape[-2]) if isinstance(reference, torch.Tensor) else reference.size
    if tuple(mask_size) != tuple(image_size):
        raise ValueError(
            f"image is {image_size[0]}x{image_size[1]} but mask_image is {mask_size[0]}x{mask_size[1]}: give a "
            "mask of the image's size"
        )
    return binarized(m, height, width)


def binarized(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("a mask tensor must hold values in [0, 1] (1, white, = repaint)")
    if ((m > 0) & (m < 1)).any():
        warnings.warn("mask_image is not binary: thresholded at 0.5 (>= 0.5 repaint), as diffusers", stacklevel=3)
    m = (m >= 0.5).float()  # diffusers' VaeImageProcessor.binarize
    if tuple(m.shape[2:]) != (height, width):
        warnings.warn(f"mask_image is resized to {width}x{height} (nearest)", stacklevel=3)
        m = F.interpolate(m, size=(height, width), mode="nearest")
    if not m.any():
        raise ValueError("mask_image is empty (all black): nothing to repaint; for image-to-image leave it out")
    if m.all():
        warnings.warn("mask_image is all white: everything is repainted (plain image-to-image)", stacklevel=3)
    return m
