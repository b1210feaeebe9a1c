"""One small registry used by every pluggable part: datasets, objectives, strategies, pretrainers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ssal.errors import ConfigError, did_you_mean


class Registry:
    """Maps a name to a class (or factory). ``@REG.register("name")`` adds one.

    ``get`` of an unknown name raises :class:`ConfigError` listing the valid names and the
    closest match, which the CLI shows as one line.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            obj.registry_name = name
            return obj

        return add

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                f"choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, Any]]:
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
