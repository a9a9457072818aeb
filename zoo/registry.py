"""The registries, as the zoo's users know them: `from zoo.registry import UNETS`.

They are defined in components/registry.py (standard library only), the ground floor that every component
imports without pulling in the zoo; this module is the same objects under the zoo's name.
"""

from components.registry import (
    AUTOENCODERS,
    CONDITIONERS,
    PIPELINES,
    SAMPLERS,
    SCHEDULES,
    UNETS,
    DuplicateNameError,
    Entry,
    Registry,
    UnknownNameError,
)

__all__ = [
    "AUTOENCODERS",
    "CONDITIONERS",
    "PIPELINES",
    "SAMPLERS",
    "SCHEDULES",
    "UNETS",
    "DuplicateNameError",
    "Entry",
    "Registry",
    "UnknownNameError",
]
