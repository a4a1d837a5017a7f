"""Checks of a resolved cell config against the options' declared types and ranges, so a bad
``--set`` value is one usage error before anything runs, never a failed cell minutes later.

Every option is a dataclass field (or a model builder's parameter) with a type annotation;
``check_fields`` checks each value against it (``int``, ``float``, ``bool``, ``str``, ``None``
unions, ``list[...]``), numbers are non-negative unless the field says ``signed=True``, and a
field's metadata may add a closed range (``at_least(1)``, ``within(0, 1)``), an open one
(``between(0, 1)``: both ends excluded) or a set of choices (``one_of(...)``).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from benchmark.registry import UsageError

MIN, MAX, CHOICES, SIGNED = "min", "max", "choices", "signed"
ABOVE, BELOW = "above", "below"  # exclusive bounds


def at_least(n: float, **more: Any) -> dict[str, Any]:
    """Field metadata: the value (when not None) must be >= n."""
    return {MIN: n, **more}


def within(low: float, high: float, **more: Any) -> dict[str, Any]:
    """Field metadata: low <= value <= high (``signed=True`` in ``more`` allows a negative low)."""
    return {MIN: low, MAX: high, **more}


def between(low: float, high: float, **more: Any) -> dict[str, Any]:
    """Field metadata: low < value < high, both ends excluded (a share that must flag something
    and not everything: ``between(0, 1)``)."""
    return {ABOVE: low, BELOW: high, **more}


def one_of(*choices: Any, **more: Any) -> dict[str, Any]:
    """Field metadata: the value must be one of ``choices``."""
    return {CHOICES: tuple(choices), **more}


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        return f"a list of {_type_name(item)}" if item is not Any else "a list"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as parsed from JSON) fits the annotation ``hint``."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and all(matches(v, args[0]) for v in value) if args \
            else isinstance(value, list)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not model


def check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any] | None = None) -> None:
    meta = meta or {}
    if not matches(value, hint):
        raise UsageError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if CHOICES in meta and value not in meta[CHOICES]:
        raise UsageError(f"{key}: unknown value {value!r}; valid choices: "
                         f"{', '.join(map(str, meta[CHOICES]))}")
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if MIN in meta and v < meta[MIN]:
            raise UsageError(f"{key}: must be >= {meta[MIN]}, got {v!r}")
        if MAX in meta and v > meta[MAX]:
            raise UsageError(f"{key}: must be <= {meta[MAX]}, got {v!r}")
        if ABOVE in meta and not v > meta[ABOVE] or BELOW in meta and not v < meta[BELOW]:
            raise UsageError(f"{key}: must be strictly between {meta.get(ABOVE, '-inf')} and "
                             f"{meta.get(BELOW, 'inf')}, got {v!r}")
        if v < 0 and not meta.get(SIGNED):
            raise UsageError(f"{key}: must not be negative, got {v!r}")


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Every value of ``values`` against the field of dataclass ``cls`` of the same name."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            check_value(f"{where}.{f.name}", values[f.name], hints.get(f.name, Any), f.metadata)


def check_parameters(func: Any, values: Mapping[str, Any], where: str, *,
                     minimum: float | None = None) -> None:
    """``values`` against the annotated parameters of ``func`` (a model builder); numbers must
    be >= ``minimum`` where given."""
    hints = typing.get_type_hints(func)
    meta = at_least(minimum) if minimum is not None else {}
    for name in inspect.signature(func).parameters:
        if name in values:
            check_value(f"{where}.{name}", values[name], hints.get(name, Any), meta)


def check_section(values: Mapping[str, Any], spec: Mapping[str, tuple[Any, float]],
                  where: str) -> None:
    """A plain dict section (data, eval) against ``{key: (type, minimum)}``."""
    for key, value in values.items():
        if key in spec:
            hint, minimum = spec[key]
            check_value(f"{where}.{key}", value, hint, at_least(minimum))
