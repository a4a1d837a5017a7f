"""Name -> component registries, one per kind (attacks, defenses, datasets, models).

A registry maps a lower-case name to a factory. Lookups of unknown names raise
:class:`UsageError` naming the valid choices, which the CLI turns into one line and exit 2.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UsageError(ValueError):
    """Bad user input (unknown name, bad option value). The CLI prints it and exits 2."""


class Registry(Generic[T]):
    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint  # appended to the unknown-name error (where a user's own ones come from)
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits, '_'")

        def add(item: T) -> T:
            if name in self._items and not replace and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
                + (f" ({self.hint})" if self.hint else "")
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def select(self, names: list[str] | None) -> list[str]:
        """``names`` checked against the registry; none given, or ``all`` among them: every name."""
        for name in names or []:
            if name != "all":
                self.get(name)  # unknown names: UsageError naming the valid choices
        if not names or "all" in names:
            return self.names()
        return list(dict.fromkeys(names))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that its ``register`` calls run.

    Lets a new attack/defense be one new file, with no edit to any list.
    """
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


def register_all(registry: Registry[T], items: dict[str, T]) -> None:
    for name, item in items.items():
        registry.register(name, item)


Factory = Callable[..., Any]
