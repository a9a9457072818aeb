"""Name -> factory registries, one per component kind (timm's `@register_model` + `create_model`).

Standard library only, so every component module can import it without cycles.

    @UNETS.register("unet-ldm", description="...", tiny={"model_channels": 16})
    def unet_ldm(**overrides) -> UNet: ...

    UNETS.build("unet-ldm", context_dim=64)      # full size, with overrides
    UNETS.build("unet-ldm", tiny=True)          # the tiny variant every entry has, for tests
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class UnknownNameError(LookupError):
    """A name that is not registered; the message lists close matches and every known name."""


class DuplicateNameError(ValueError):
    """A name registered twice in the same registry."""


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    tiny: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Registered factories of one component kind (schedule, sampler, unet, autoencoder, conditioner, pipeline)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, description: str = "", tiny: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register `factory` under `name`. `tiny` holds overrides giving its tiny test variant."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, factory, description=description, tiny=tiny)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any], *, description: str = "", tiny: dict | None = None) -> None:
        if name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is already registered (by {self._entries[name].factory!r})"
            )
        doc = (factory.__doc__ or "").strip().splitlines()
        self._entries[name] = Entry(name, factory, description or (doc[0] if doc else ""), dict(tiny or {}))

    def entry(self, name: str) -> Entry:
        if not isinstance(name, str):  # 123 or ["x"]: say so, rather than "unhashable type" or "not iterable"
            raise TypeError(
                f"a {self.kind} name must be a string, got {name!r} ({type(name).__name__}); "
                f"known {self.kind}s: {', '.join(self.names())}"
            )
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).factory

    def build(self, name: str, *, tiny: bool = False, **overrides: Any) -> Any:
        """Call the factory registered as `name`; `tiny=True` applies its tiny overrides first."""
        entry = self.entry(name)
        kwargs = {**entry.tiny, **overrides} if tiny else overrides
        return entry.factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        return {name: self._entries[name].description for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


SCHEDULES = Registry("schedule")
SAMPLERS = Registry("sampler")
UNETS = Registry("unet")
AUTOENCODERS = Registry("autoencoder")
CONDITIONERS = Registry("conditioner")
PIPELINES = Registry("pipeline")
