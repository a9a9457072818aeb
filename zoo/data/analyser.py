"""Reads a shapes image back from its pixels alone (no model): the judge of prompt adherence.

    analysis = analyse(image)                      # PIL / uint8 (H, W, 3) / float (3, H, W) in [-1, 1]
    score(analysis, parse_caption(prompt))         # {"shape": True, "colour": False, ...}
    accuracy_table([score(...), ...])              # per attribute accuracy + "all"

Steps (W = image width, lengths below scale with W / 64):
  1. background = nearest PALETTE colour of the per-channel median of the 1-px border ring;
  2. candidate mask = pixels more than CANDIDATE_DISTANCE (36, half the closest palette pair, orange-yellow)
     from the measured border median, largest 4-connected component; shape colour estimate = its median;
  3. shape mask = pixels nearer the shape-colour estimate than the border median (the 50% contour, which is
     exactly the dataset's semantic map), largest 4-connected component, holes filled: robust to mild noise
     (stray pixels form small separate components or holes) and blur (the 50% contour barely moves);
  4. colour = nearest PALETTE colour of the mask's median;
  5. shape = the best of three moment-matched templates: each dataset shape (circle, square, upright
     triangle with base = height) placed at the mask's centroid with the extent that gives the mask's
     standard deviation, drawn like the dataset draws it, scored by IoU with the mask; below MIN_FIT none fits
     (None). Moments ignore the ragged 1-px edges and spurs that noise makes, which would fool a bounding-box
     fill ratio (ideal 1 / pi/4 / 1/2). Margins on dataset images: the right template has IoU >= 0.96 clean,
     >= 0.86 with sigma = 0.15 noise; the best wrong one <= 0.86;
  6. size from the fitted extent s (the bounding-box side when no template fits): "small" below 23 px
     (dataset: 14-18 small, 28-32 large);
  7. position from the fitted box centre (the bounding-box centre when no template fits): "center" when both
     offsets from the image centre are under W/8, a quadrant when both are at least W/16, None in between.
Anything it cannot read (e.g. an empty mask, fewer than MIN_AREA pixels) is None.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image

from zoo.data.shapes import PALETTE, SHAPES, Attributes, coverage

CANDIDATE_DISTANCE = 36.0
MIN_AREA = 8  # pixels at W = 64
MIN_FIT = 0.75  # IoU with the best template below which the mask is no recognisable shape
# Extent s of each dataset shape per unit geometric-mean deviation: square sigma = s / sqrt(12) per axis; circle
# of diameter s: sigma = s / 4; triangle with base = height = s: sigma_x = s / sqrt(24), sigma_y = s / sqrt(18).
TEMPLATE_EXTENT = {"circle": 4.0, "square": 12**0.5, "triangle": 432**0.25}
CLEAN_DISTANCE = 24.0  # RGB distance to the palette within which a pixel counts as clean (clean_fraction)
SMALL_LARGE_EXTENT = 23.0  # px at W = 64
ATTRIBUTES = ("shape", "colour", "background", "size", "position")
_PALETTE_RGB = np.asarray(list(PALETTE.values()), dtype=np.float32)  # (8, 3)


@dataclass(frozen=True)
class Analysis:
    """What the pixels show; None for what could not be read. `area` (mask pixels), `fit` (best template IoU)."""

    background: str | None
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None
    area: int = 0
    fit: float | None = None


# ---------------------------------------------------------------------------------------------- input
def to_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """PIL image, uint8 (H, W, 3) or float (3, H, W) in [-1, 1] (numpy or torch) -> float32 (H, W, 3) in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image, a uint8 (H, W, 3) or float (3, H, W) array/tensor, got {type(image)}")
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image.astype(np.float32)
    if image.dtype.kind == "f" and image.ndim == 3 and image.shape[0] == 3:
        return (np.clip(np.transpose(image, (1, 2, 0)), -1.0, 1.0) + 1.0) * 127.5  # (3, H, W) -> (H, W, 3)
    raise ValueError(
        f"expected one image: uint8 (H, W, 3) or float (3, H, W) in [-1, 1], got dtype {image.dtype} "
        f"and shape {tuple(image.shape)}"
    )


def nearest_colour(rgb: np.ndarray) -> str:
    """Name of the PALETTE colour nearest (Euclidean RGB) to one colour."""
    return list(PALETTE)[int(((_PALETTE_RGB - rgb) ** 2).sum(-1).argmin())]


# ------------------------------------------------------------------------------------------- the mask
def _dilate(region: np.ndarray) -> np.ndarray:
    """Dilation with the 3x3 cross (4-neighbourhood)."""
    grown = region.copy()
    grown[1:] |= region[:-1]
    grown[:-1] |= region[1:]
    grown[:, 1:] |= region[:, :-1]
    grown[:, :-1] |= region[:, 1:]
    return grown


def _grow(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Pixels of `allowed` 4-connected to `seeds`."""
    region = seeds & allowed
    while True:
        grown = _dilate(region) & allowed
        if (grown == region).all():
            return region
        region = grown


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (0 outside `mask`) by max-label propagation."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        new = labels.copy()
        new[1:] = np.maximum(new[1:], labels[:-1])
        new[:-1] = np.maximum(new[:-1], labels[1:])
        new[:, 1:] = np.maximum(new[:, 1:], labels[:, :-1])
        new[:, :-1] = np.maximum(new[:, :-1], labels[:, 1:])
        new = np.where(mask, new, 0)
        if (new == labels).all():
            return labels
        labels = new


def largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    labels = _components(mask)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not connected to the image border become part of the mask."""
    border = np.zeros_like(mask)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    return ~_grow(border, ~mask)


def border_median(rgb: np.ndarray) -> np.ndarray:
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (n, 3) pixels of the 1-px border
    return np.median(ring, axis=0)


def shape_mask(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Boolean (H, W) mask of the shape (steps 2-3 of the module doc); all False when nothing stands out."""
    return _mask_of(to_rgb_array(image))


def _mask_of(rgb: np.ndarray) -> np.ndarray:
    bg = border_median(rgb)
    candidates = largest_component(np.linalg.norm(rgb - bg, axis=-1) > CANDIDATE_DISTANCE)
    if not candidates.any():
        return candidates
    fg = np.median(rgb[candidates], axis=0)
    nearer_fg = ((rgb - fg) ** 2).sum(-1) < ((rgb - bg) ** 2).sum(-1)
    return fill_holes(largest_component(nearer_fg))


# ------------------------------------------------------------------------------------------- geometry
def moments(mask: np.ndarray) -> tuple[float, float, float]:
    """Centroid (x, y) and geometric-mean standard deviation of the mask's pixel squares (pixel units).

    The variance of a uniform unit pixel square, 1/12, is added to that of the pixel centres.
    """
    ys, xs = np.nonzero(mask)
    sigma = ((xs.var() + 1 / 12) * (ys.var() + 1 / 12)) ** 0.25
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5), float(sigma)


def template(shape: str, x: float, y: float, sigma: float) -> tuple[float, float, float]:
    """(box centre x, box centre y, extent s) of the dataset shape with centroid (x, y) and deviation sigma."""
    s = TEMPLATE_EXTENT[shape] * sigma
    return x, y - (s / 6 if shape == "triangle" else 0.0), s  # triangle centroid: 2/3 of the height below the apex


def fit_shape(mask: np.ndarray) -> tuple[str | None, float, tuple[float, float, float]]:
    """(shape, IoU, (box x, box y, extent)) of the best-fitting moment-matched template; shape None below MIN_FIT."""
    x, y, sigma = moments(mask)
    best = (None, -1.0, (0.0, 0.0, 0.0))
    for shape in SHAPES:
        box = template(shape, x, y, sigma)
        ideal = coverage(shape, *box, mask.shape[1]) >= 0.5
        iou = float((ideal & mask).sum() / (ideal | mask).sum())
        best = max(best, (shape, iou, box), key=lambda b: b[1])
    return (best[0] if best[1] >= MIN_FIT else None), best[1], best[2]


def template_iou(mask: np.ndarray, shape: str) -> float:
    """IoU of `mask` with the moment-matched template of `shape` (step 5): how well the drawn shape is that shape."""
    if not mask.any():
        return 0.0
    ideal = coverage(shape, *template(shape, *moments(mask)), mask.shape[1]) >= 0.5
    return float((ideal & mask).sum() / (ideal | mask).sum())


def clean_fraction(image: Image.Image | np.ndarray | torch.Tensor, distance: float = CLEAN_DISTANCE) -> float:
    """Share of pixels within `distance` (RGB, 0-255) of some PALETTE colour: textures, blur and off-palette
    tints lower it. Dataset images score 0.987 on average (0.970 the lowest, anti-aliased edges of large shapes)."""
    rgb = to_rgb_array(image)
    nearest = np.sqrt(((rgb[..., None, :] - _PALETTE_RGB) ** 2).sum(-1)).min(-1)  # (H, W)
    return float((nearest < distance).mean())


def classify_size(extent: float, width: int) -> str:
    return "small" if extent * 64 / width < SMALL_LARGE_EXTENT else "large"


def classify_position(x: float, y: float, width: int, height: int) -> str | None:
    dx, dy = x - width / 2, y - height / 2
    if max(abs(dx) / width, abs(dy) / height) < 1 / 8:
        return "center"
    if min(abs(dx) / width, abs(dy) / height) < 1 / 16:
        return None
    return f"{'top' if dy < 0 else 'bottom'} {'left' if dx < 0 else 'right'}"


# --------------------------------------------------------------------------------------------- public
def analyse(image: Image.Image | np.ndarray | torch.Tensor) -> Analysis:
    """Background, shape colour, shape kind, size and position read from pixels (module doc)."""
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    background = nearest_colour(border_median(rgb))
    mask = _mask_of(rgb)
    area = int(mask.sum())
    if area < MIN_AREA * width * height / 64**2:
        return Analysis(background=background, area=area)
    shape, iou, box = fit_shape(mask)
    if shape is None:  # no template fits: read size and position off the bounding box
        ys, xs = np.nonzero(mask)
        box = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, max(np.ptp(xs), np.ptp(ys)) + 1)
    return Analysis(
        background=background,
        colour=nearest_colour(np.median(rgb[mask], axis=0)),
        shape=shape,
        size=classify_size(box[2], width),
        position=classify_position(box[0], box[1], width, height),
        area=area,
        fit=iou,
    )


def score(analysis: Analysis, wanted: Attributes) -> dict[str, bool]:
    """attribute -> read value equals wanted value, for the attributes `wanted` names (not None)."""
    if not isinstance(analysis, Analysis) or not isinstance(wanted, Attributes):
        raise TypeError(f"score(Analysis, Attributes), got ({type(analysis).__name__}, {type(wanted).__name__})")
    names = [f.name for f in fields(Attributes) if getattr(wanted, f.name) is not None]
    return {name: getattr(analysis, name) == getattr(wanted, name) for name in names}


def accuracy_table(scores: Iterable[dict[str, bool]]) -> dict[str, float]:
    """Per attribute accuracy (over the prompts that name it), "all" (every named attribute right) and "count"."""
    scores = list(scores)
    if not scores:
        raise ValueError("accuracy_table needs at least one score dict")
    table: dict[str, float] = {}
    for name in ATTRIBUTES:
        named = [s[name] for s in scores if name in s]
        if named:
            table[name] = sum(named) / len(named)
    table["all"] = sum(all(s.values()) for s in scores) / len(scores)
    table["count"] = float(len(scores))
    return table
