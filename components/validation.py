"""The one vocabulary of argument checks, used across components/ and zoo/ (standard library only).

Each check returns the value it accepted (as a plain Python int or float) or raises with a message that names
the argument, the range and what it got:

    steps = require_int("steps", steps, minimum=1, maximum=T, why="the schedule's T")
    eta = require_number("eta", eta, minimum=0.0)
    spacing = require_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)

numpy integers are integers (they register as numbers.Integral); bools are not, though Python counts them
as ints. A value of the wrong type raises `ArgumentTypeError`, which is both a TypeError and a ValueError,
so callers that catch either see it; a value out of range raises ValueError.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a float where an integer is needed, a bool where a number is)."""


# Sane maxima for configuration values, checked before anything is allocated (README, "Limits"). Each lies well
# above the largest public model of its kind, so no real checkpoint is refused, and far below what exhausts memory.
MAX_CHANNELS = 8192  # any width (channels, context, hidden size): SD's widest U-Net level is 1280, SDXL's context 2048
MAX_LEVELS = 8  # channel_mult entries (resolutions): SD has 4; each halves the side
MAX_CHANNEL_MULT = 64  # one channel_mult entry: SD's largest is 4
MAX_BLOCKS = 16  # num_res_blocks: DDPM and SD use 2, ADM 3
MAX_DEPTH = 32  # transformer_depth, text encoder layers: SDXL's deepest transformer is 10, CLIP-L has 12 layers
MAX_TIMESTEPS = 100_000  # the schedule's T: DDPM uses 1000; T float64 coefficients in ten arrays
MAX_IMAGE_SIZE = 4096  # a recipe's image side in pixels: SD's is 512 or 768
MAX_PARAMETERS = 5 * 10**9  # a network's estimated parameters (20 GB in float32): SDXL's U-Net has 2.6e9
MAX_CLASSES = 100_000  # class labels, palette labels: ImageNet-21k has 21,841
MAX_TOKENS = 4096  # a text encoder's max_length: CLIP's is 77
MAX_VOCAB = 1_000_000  # a tokenizer's vocabulary: CLIP's has 49,408


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""


def _check_range(name: str, kind: str, value: Any, minimum: Any, maximum: Any, why: str | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be {kind}{_bounds(minimum, maximum)}{reason}, got {value!r}")


def require_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, why: str | None = None
) -> int:
    """`value` as an int when it is an integer (Python or numpy, not bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        reason = f" ({why})" if why else ""
        raise ArgumentTypeError(
            f"{name} must be an integer{_bounds(minimum, maximum)}{reason}, got {value!r} ({type(value).__name__})"
        )
    _check_range(name, "an integer", value, minimum, maximum, why)
    return int(value)


def require_number(
    name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None, why: str | None = None
) -> float:
    """`value` as a float when it is a finite real number (not bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        reason = f" ({why})" if why else ""
        raise ArgumentTypeError(
            f"{name} must be a finite number{_bounds(minimum, maximum)}{reason}, got {value!r} "
            f"({type(value).__name__})"
        )
    _check_range(name, "a number", value, minimum, maximum, why)
    return float(value)


def require_bool(name: str, value: Any, *, why: str | None = None) -> bool:
    """`value` when it is a bool (True or False; not 0, 1 or "true", which JSON would not give for a flag)."""
    if not isinstance(value, bool):
        reason = f" ({why})" if why else ""
        raise ArgumentTypeError(f"{name} must be true or false{reason}, got {value!r} ({type(value).__name__})")
    return value


def require_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` when it is one of `choices`; the message lists them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, choices))}")
    return value


def require_int_sequence(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    max_length: int | None = None,
    why: str | None = None,
) -> tuple[int, ...]:
    """`value` as a tuple of ints when it is a non-empty list or tuple of at most max_length integers, each in
    [minimum, maximum]; the message names the argument and the entry."""
    if not isinstance(value, list | tuple) or not value:
        got = f"{value!r} ({type(value).__name__})"
        raise ArgumentTypeError(f"{name} must be a non-empty tuple of integers, got {got}")
    if max_length is not None and len(value) > max_length:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} may have at most {max_length} entries{reason}, got {len(value)}")
    checked = (require_int(f"{name}[{i}]", v, minimum=minimum, maximum=maximum, why=why) for i, v in enumerate(value))
    return tuple(checked)


def require_text(name: str, value: Any) -> str:
    """`value` when it is a str that UTF-8 can encode (a lone surrogate, e.g. "\\ud800", cannot); the message
    names the character's position."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} holds a character UTF-8 cannot encode, {value[err.start]!r} at position {err.start} "
            "(a lone surrogate): pass valid Unicode text"
        ) from None
    return value
