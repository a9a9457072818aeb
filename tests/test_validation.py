"""The one vocabulary of argument checks (components/validation.py) and the one image-grid maker."""

import numpy as np
import pytest
from PIL import Image

from components.validation import ArgumentTypeError, require_bool, require_choice, require_int, require_number
from zoo.pipelines.base import image_grid


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3), np.int32(3)])
def test_require_int_accepts_python_and_numpy_integers_and_returns_a_python_int(value):
    got = require_int("steps", value, minimum=1, maximum=5)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, ArgumentTypeError, r"steps must be an integer in \[1, 5\] \(T\), got True \(bool\)"),
        (2.0, ArgumentTypeError, r"steps must be an integer in \[1, 5\] \(T\), got 2.0 \(float\)"),
        ("2", ArgumentTypeError, r"got '2' \(str\)"),
        (None, ArgumentTypeError, r"got None \(NoneType\)"),
        (0, ValueError, r"steps must be an integer in \[1, 5\] \(T\), got 0$"),
        (np.int64(6), ValueError, r"steps must be an integer in \[1, 5\] \(T\), got"),
    ],
)
def test_require_int_rejects_with_a_message_naming_the_argument_range_and_value(value, error, message):
    with pytest.raises(error, match=message):
        require_int("steps", value, minimum=1, maximum=5, why="T")


def test_a_wrong_type_is_both_a_type_error_and_a_value_error():
    """Callers that catch either keep working: the checks replaced some that raised one, some the other."""
    for caught in (TypeError, ValueError):
        with pytest.raises(caught):
            require_int("seed", 1.5)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        require_int("seed", -1, minimum=0)
    with pytest.raises(ValueError, match=r"gap must be an integer <= 4, got 5"):
        require_int("gap", 5, maximum=4)
    assert require_int("anything", -(10**30)) == -(10**30)  # no bounds, no limit


@pytest.mark.parametrize("value", [1, 2.5, np.float32(2.5), np.int64(1)])
def test_require_number_accepts_finite_reals(value):
    assert require_number("eta", value, minimum=0, maximum=3) == float(value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, ArgumentTypeError, r"eta must be a finite number >= 0, got True \(bool\)"),
        (float("nan"), ArgumentTypeError, r"eta must be a finite number >= 0, got nan"),
        (float("inf"), ArgumentTypeError, r"got inf"),
        ("1", ArgumentTypeError, r"got '1' \(str\)"),
        (-0.5, ValueError, r"eta must be a number >= 0, got -0.5"),
    ],
)
def test_require_number_rejects_with_a_clear_message(value, error, message):
    with pytest.raises(error, match=message):
        require_number("eta", value, minimum=0)


def test_require_choice_lists_what_is_allowed():
    assert require_choice("sampler", "ddim", ("ddpm", "ddim")) == "ddim"
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; allowed: ddpm, ddim"):
        require_choice("sampler", "dpm", ("ddpm", "ddim"))


@pytest.mark.parametrize("value", [0, 1, "true", None, np.bool_(True)])
def test_require_bool_takes_only_true_or_false(value):
    assert require_bool("flag", True) is True and require_bool("flag", False) is False
    with pytest.raises(ArgumentTypeError, match=r"flag must be true or false \(why\), got"):
        require_bool("flag", value, why="why")


def test_image_grid_places_each_image_in_its_cell():
    red, blue, green = (
        Image.new("RGB", size, colour) for size, colour in [((4, 3), "red"), ((2, 5), "blue"), ((4, 3), "green")]
    )
    one_row = image_grid([red, blue, green], gap=1)
    assert one_row.size == (4 + 1 + 2 + 1 + 4, 5)
    assert one_row.getpixel((0, 0)) == (255, 0, 0) and one_row.getpixel((5, 4)) == (0, 0, 255)
    assert one_row.getpixel((4, 0)) == (128, 128, 128)  # the gap shows the background
    stacked = image_grid([red, blue], columns=1, background="white")
    assert stacked.size == (4, 8) and stacked.getpixel((3, 7)) == (255, 255, 255)  # blue is 2 wide: white beside it
    two_columns = image_grid([red, blue, green], columns=2)
    assert two_columns.size == (6, 8) and two_columns.getpixel((0, 5)) == (0, 128, 0)
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
    with pytest.raises(ValueError, match=r"columns must be an integer >= 1, got 0"):
        image_grid([red], columns=0)
