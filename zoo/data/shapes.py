"""The procedural captioned dataset: one shape on a plain background, with its caption, semantic map and class.

Every sample is a pure function of (seed, index, split), drawn on the fly; nothing is stored.

Sampling one item (all choices uniform, independent, from `np.random.default_rng([seed, split id, index])`):
  1. a (colour, shape) pair allowed by the split: "train" = the 18 pairs not in HELD_OUT_PAIRS,
     "heldout" = the 6 HELD_OUT_PAIRS, "all" = all 24;
  2. a background colour among the 7 palette colours that differ from the shape colour;
  3. a size (SIZES) and a position (POSITIONS), always drawn and always rendered;
  4. the caption form: the size word is named with probability 1/2, the position phrase with probability 1/2,
     independently, so each of the four forms has probability 1/4:
       "a small red circle in the top left on a blue background"   (size and position)
       "a red circle in the top left on a blue background"         (position only)
       "a small red circle on a blue background"                   (size only)
       "a red circle on a blue background"                         (neither)
  5. jitter: the extent (width = height of the shape's box) uniform in [14, 18] px for "small" and [28, 32] px
     for "large"; the box centre uniform within +-2 px of its anchor (W/4 or 3W/4 per axis for a quadrant,
     W/2 for "center"), then moved inward just enough that the box stays inside [1, W - 1] (so the border
     ring is pure background and the box centre stays in its quadrant). Lengths scale with image_size / 64.

Rendering is anti-aliased by 5x5 supersampling: the coverage c in [0, 1] of each pixel by the exact shape
(circle of diameter s; axis-aligned square of side s; upright isosceles triangle with base = height = s) is
the fraction of its 25 sub-pixel centres inside the shape (never exactly 1/2); the pixel is
background * (1 - c) + colour * c, rounded to uint8, and its semantic label is the shape's label where
c > 1/2. So the 50% contour that a nearest-of-two-colours classifier finds is exactly the semantic map
(hard edges would make anti-aliased training images impossible; supersampling keeps both).

Labels: semantic map 0 = background, 1 + SHAPES.index(shape) for the shape (4 labels).
Class label = SHAPES.index(shape) * len(PALETTE) + palette index of the shape colour (24 classes; the
background plays no part). The held-out pairs have class labels too; "train" never produces them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from components.validation import require_int

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
# (colour, shape) pairs never shown in training: compositional generalisation is measured on them.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("green", "triangle"),
    ("white", "circle"),
    ("purple", "square"),
)
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
NUM_CLASSES = len(SHAPES) * len(PALETTE)
NUM_SEG_LABELS = 1 + len(SHAPES)
# Semantic map colours for drawing (label -> RGB): 0 background white (a blank sketchpad), 1 circle red,
# 2 square green, 3 triangle blue. The four are vertices of a regular tetrahedron in RGB (all 255*sqrt(2) apart),
# so a blend of any two lies nearer to those two than to the others: anti-aliased strokes snap to the majority.
SEG_PALETTE: dict[int, tuple[int, int, int]] = {
    0: (255, 255, 255),
    1: (255, 0, 0),
    2: (0, 255, 0),
    3: (0, 0, 255),
}

SUPERSAMPLE = 5  # odd, so a straight edge never covers exactly half a pixel (no ties at the 50% contour)
EXTENT_RANGE = {"small": (14.0, 18.0), "large": (28.0, 32.0)}  # px across at image_size 64
ANCHOR_JITTER = 2.0  # px at image_size 64
ANCHORS = {  # box centre as a fraction of the image size, (x, y); y grows downwards
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}


def _check_choice(name: str, value: object, allowed: tuple[str, ...], optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class Attributes:
    """What a sample shows. None marks a part a caption leaves out (only in parsed or evaluation prompts)."""

    shape: str | None
    colour: str | None
    background: str | None
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, tuple(PALETTE))
        _check_choice("background", self.background, tuple(PALETTE))
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)
        if self.colour is not None and self.colour == self.background:
            raise ValueError(f"shape colour and background must differ, both are {self.colour!r}")

    def is_complete(self) -> bool:
        return None not in (self.shape, self.colour, self.background, self.size, self.position)

    def caption(self, include_size: bool = True, include_position: bool = True) -> str:
        """'a {size} {colour} {shape} in the {position} on a {background} background'; None parts are left out."""
        if None in (self.shape, self.colour, self.background):
            raise ValueError(f"a caption needs shape, colour and background, got {self}")
        size = f"{self.size} " if include_size and self.size is not None else ""
        where = f" in the {self.position}" if include_position and self.position is not None else ""
        return f"a {size}{self.colour} {self.shape}{where} on a {self.background} background"

    @property
    def class_label(self) -> int:
        """SHAPES.index(shape) * len(PALETTE) + palette index of the colour (24 classes)."""
        if self.shape is None or self.colour is None:
            raise ValueError(f"a class label needs shape and colour, got {self}")
        return SHAPES.index(self.shape) * len(PALETTE) + list(PALETTE).index(self.colour)


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    return split


def split_pairs(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a split draws from, in palette x shape order."""
    check_split(split)
    pairs = [(colour, shape) for shape in SHAPES for colour in PALETTE]
    if split == "all":
        return pairs
    held = set(HELD_OUT_PAIRS)
    return [p for p in pairs if (p in held) == (split == "heldout")]


def _check_image_size(image_size: object) -> int:
    if require_int("image_size", image_size, minimum=32, why="divisible by 4") % 4:
        raise ValueError(f"image_size must be an integer >= 32 divisible by 4, got {image_size!r}")
    return int(image_size)


# ------------------------------------------------------------------------------------------ rendering
def placement(
    attributes: Attributes, image_size: int = 64, jitter: np.random.Generator | None = None
) -> tuple[float, float, float]:
    """(cx, cy, s): box centre and extent in pixels. Nominal (mid-range size, exact anchor) without `jitter`."""
    scale = image_size / 64
    low, high = EXTENT_RANGE[attributes.size]
    ax, ay = ANCHORS[attributes.position]
    if jitter is None:
        s, dx, dy = (low + high) / 2, 0.0, 0.0
    else:
        s, dx, dy = jitter.uniform(low, high), *jitter.uniform(-ANCHOR_JITTER, ANCHOR_JITTER, size=2)
    s *= scale
    lo, hi = 1 + s / 2, image_size - 1 - s / 2  # keep the box inside [1, W - 1]
    cx = float(np.clip(ax * image_size + dx * scale, lo, hi))
    cy = float(np.clip(ay * image_size + dy * scale, lo, hi))
    return cx, cy, float(s)


def coverage(shape: str, cx: float, cy: float, s: float, image_size: int) -> np.ndarray:
    """Fraction of each pixel inside the shape, from SUPERSAMPLE x SUPERSAMPLE sub-pixel centres, (H, W) float32."""
    k = SUPERSAMPLE
    u = (np.arange(image_size * k, dtype=np.float32) + 0.5) / k  # sub-pixel centres, pixel units
    x, y = u[None, :] - cx, u[:, None] - cy
    if shape == "circle":
        inside = x * x + y * y <= (s / 2) ** 2
    elif shape == "square":
        inside = (np.abs(x) <= s / 2) & (np.abs(y) <= s / 2)
    else:  # upright isosceles triangle, apex at (cx, cy - s/2), base s at y = cy + s/2: half-width = depth / 2
        depth = y + s / 2
        inside = (depth >= 0) & (y <= s / 2) & (np.abs(x) <= depth / 2)
    return inside.reshape(image_size, k, image_size, k).mean(axis=(1, 3), dtype=np.float32)


def render(
    attributes: Attributes, *, image_size: int = 64, jitter: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (H, W, 3) image, int64 (H, W) semantic map) of complete `attributes`, anti-aliased (module doc).

    `jitter` (a numpy Generator) draws the exact size and position within their categories; None draws the
    nominal shape.
    """
    if not isinstance(attributes, Attributes) or not attributes.is_complete():
        raise ValueError(f"render needs complete Attributes (no None), got {attributes!r}")
    image_size = _check_image_size(image_size)
    cx, cy, s = placement(attributes, image_size, jitter)
    c = coverage(attributes.shape, cx, cy, s, image_size)[..., None]  # (H, W, 1)
    fg = np.asarray(PALETTE[attributes.colour], dtype=np.float32)
    bg = np.asarray(PALETTE[attributes.background], dtype=np.float32)
    image = np.rint(bg * (1 - c) + fg * c).astype(np.uint8)
    semantic_map = np.where(c[..., 0] >= 0.5, 1 + SHAPES.index(attributes.shape), 0).astype(np.int64)
    return image, semantic_map


# ------------------------------------------------------------------------------------------- sampling
def sample_item(index: int, *, seed: int, split: str, image_size: int = 64) -> dict:
    """Item `index` of the (seed, split) stream: {"image_uint8", "semantic_map", "caption", "attributes"}."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    pairs = split_pairs(split)
    colour, shape = pairs[rng.integers(len(pairs))]
    backgrounds = [c for c in PALETTE if c != colour]
    attributes = Attributes(
        shape=shape,
        colour=colour,
        background=backgrounds[rng.integers(len(backgrounds))],
        size=SIZES[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
    )
    include_size, include_position = rng.random(2) < 0.5
    image, semantic_map = render(attributes, image_size=image_size, jitter=rng)
    caption = attributes.caption(include_size=bool(include_size), include_position=bool(include_position))
    return {"image_uint8": image, "semantic_map": semantic_map, "caption": caption, "attributes": attributes}


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) in [0, 255] -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


def _check_count(num_samples: object) -> int:
    return require_int("num_samples", num_samples, minimum=0)


def _check_seed(seed: object) -> int:
    return require_int("seed", seed, minimum=0)


class ShapesDataset(Dataset):
    """`num_samples` items of the (seed, split) stream, drawn on the fly; item i depends only on (seed, i, split).

    Item: {"image": float (3, H, W) in [-1, 1], "caption": str, "semantic_map": long (H, W),
    "class_label": int, "attributes": Attributes}.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, split: str = "train", image_size: int = 64):
        self.num_samples = _check_count(num_samples)
        self.seed = _check_seed(seed)
        self.split = check_split(split)
        self.image_size = _check_image_size(image_size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        index = require_int("index", index)
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a ShapesDataset of {self.num_samples} samples")
        item = sample_item(int(index) % self.num_samples, seed=self.seed, split=self.split, image_size=self.image_size)
        return {
            "image": to_float_chw(item["image_uint8"]),
            "caption": item["caption"],
            "semantic_map": torch.from_numpy(item["semantic_map"]),
            "class_label": item["attributes"].class_label,
            "attributes": item["attributes"],
        }


def pregenerate(
    num_samples: int, *, seed: int = 0, split: str = "train", image_size: int = 64, uint8: bool = False
) -> dict:
    """The first `num_samples` items of ShapesDataset(seed, split), stacked.

    {"images": float (N, 3, H, W) in [-1, 1] (uint8 [0, 255] with `uint8=True`, 4x smaller),
    "semantic_maps": long (N, H, W), "class_labels": long (N,), "captions": [str], "attributes": [Attributes]}.
    ~0.3 ms per sample on one core (50,000 in well under a minute).
    """
    _check_count(num_samples)
    _check_seed(seed)
    check_split(split)
    _check_image_size(image_size)
    images = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    maps = np.empty((num_samples, image_size, image_size), dtype=np.int64)
    captions, attributes = [], []
    for i in range(num_samples):
        item = sample_item(i, seed=seed, split=split, image_size=image_size)
        images[i], maps[i] = item["image_uint8"], item["semantic_map"]
        captions.append(item["caption"])
        attributes.append(item["attributes"])
    chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    return {
        "images": chw if uint8 else chw.float() / 127.5 - 1.0,
        "semantic_maps": torch.from_numpy(maps),
        "class_labels": torch.tensor([a.class_label for a in attributes], dtype=torch.long),
        "captions": captions,
        "attributes": attributes,
    }


# ------------------------------------------------------------------------------------ captions and prompts
def caption_vocabulary() -> list[str]:
    """Every word a caption can use, sorted."""
    words = {"a", "in", "the", "on", "background", *PALETTE, *SHAPES, *SIZES}
    words.update(w for position in POSITIONS for w in position.split())
    return sorted(words)


_CAPTION = re.compile(
    rf"a (?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{'|'.join(PALETTE)}) (?P<shape>{'|'.join(SHAPES)})"
    rf"(?: in the (?P<position>{'|'.join(POSITIONS)}))? on a (?P<background>{'|'.join(PALETTE)}) background"
)


def parse_caption(text: str) -> Attributes:
    """Attributes a caption names, None for the size / position it leaves out. Case and spacing are forgiven."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a str, got {type(text).__name__}")
    match = _CAPTION.fullmatch(" ".join(text.lower().split()).rstrip("."))
    if match is None:
        raise ValueError(
            f"not a caption: {text!r}; expected 'a [size] <colour> <shape> [in the <position>] on a <colour> "
            f"background' with size in {list(SIZES)}, colour in {list(PALETTE)}, shape in {list(SHAPES)}, "
            f"position in {list(POSITIONS)}"
        )
    return Attributes(**match.groupdict())


def eval_prompts(split: str = "seen", n: int = 24, seed: int = 0) -> list[tuple[str, Attributes]]:
    """The evaluation prompts: (caption, Attributes with None for what the caption leaves out).

    "seen" cycles through the 18 training pairs, "heldout" through the 6 HELD_OUT_PAIRS, in an order shuffled
    once per cycle, so every pair appears floor(n / pairs) or one more times. Background, size and position
    are drawn like the dataset's (size and position each named with probability 1/2). Fixed by (split, n, seed).
    """
    if split not in ("seen", "heldout"):
        raise ValueError(f"eval_prompts split must be 'seen' or 'heldout', got {split!r}")
    _check_count(n)
    _check_seed(seed)
    pairs = split_pairs("train" if split == "seen" else "heldout")
    rng = np.random.default_rng([seed, 1000 + (split == "heldout")])
    prompts = []
    for k in range(n):
        if k % len(pairs) == 0:
            order = rng.permutation(len(pairs))
        colour, shape = pairs[order[k % len(pairs)]]
        backgrounds = [c for c in PALETTE if c != colour]
        background = backgrounds[rng.integers(len(backgrounds))]
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.5 else None
        position = POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < 0.5 else None
        wanted = Attributes(shape, colour, background, size, position)
        prompts.append((wanted.caption(), wanted))
    return prompts


# ------------------------------------------------------------------------------- semantic maps as colours
_SEG_RGB = np.asarray([SEG_PALETTE[k] for k in range(NUM_SEG_LABELS)], dtype=np.float32)  # (L, 3)


def map_to_rgb(semantic_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """Integer (H, W) labels -> uint8 (H, W, 3) colours from SEG_PALETTE."""
    labels = semantic_map.detach().cpu().numpy() if isinstance(semantic_map, torch.Tensor) else semantic_map
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise TypeError(f"semantic_map must be an integer (H, W) tensor or array, got {semantic_map!r:.80}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_SEG_LABELS):
        low, high = labels.min(), labels.max()
        raise ValueError(f"semantic map labels must lie in [0, {NUM_SEG_LABELS - 1}], got {low}..{high}")
    return _SEG_RGB.astype(np.uint8)[labels]


def rgb_to_map(image: Image.Image | np.ndarray) -> torch.Tensor:
    """Colours -> long (H, W) labels of the nearest SEG_PALETTE colour (anti-aliased strokes snap back).

    RGBA input (a sketchpad layer) is first composited over the background colour, so transparent = background.
    """
    rgb = _seg_rgb_array(image)
    distance = ((rgb[:, :, None, :] - _SEG_RGB[None, None]) ** 2).sum(-1)  # (H, W, L)
    return torch.from_numpy(distance.argmin(-1)).long()


def _seg_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "PA") else image.convert("RGB"))
    is_array = isinstance(image, np.ndarray) and image.dtype == np.uint8
    if not is_array or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise TypeError(f"expected a PIL image or a uint8 (H, W, 3|4) array, got {_describe(image)}")
    rgb = image[..., :3].astype(np.float32)
    if image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        rgb = rgb * alpha + _SEG_RGB[0] * (1 - alpha)
    return rgb


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray | torch.Tensor):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__
