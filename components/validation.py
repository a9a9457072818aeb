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


def require_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` when it is one of `choices`; the message lists them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, choices))}")
    return value
