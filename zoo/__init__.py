"""Diffusion Zoo: registries of interchangeable parts, and the recipes that assemble them into pipelines.

import zoo
zoo.available()                                   # {name: one-line description}
pipe = zoo.build("ldm-clip-kl")                   # embedded weights, offline
pipe.generate("a red circle on a blue background", seed=0)[0].save("x.png")
"""

from zoo.assembly import IncompatiblePartsError
from zoo.build import available, build, load_pipeline, recipe
from zoo.recipes import Part, Recipe
from zoo.registry import DuplicateNameError, UnknownNameError

__all__ = [
    "DuplicateNameError",
    "IncompatiblePartsError",
    "Part",
    "Recipe",
    "UnknownNameError",
    "available",
    "build",
    "load_pipeline",
    "recipe",
]
