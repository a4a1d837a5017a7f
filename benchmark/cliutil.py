"""Helpers the subcommands (grid, triggers, report) share."""

from __future__ import annotations

from benchmark.registry import UsageError


def split_csv(text: str | None, option: str = "") -> list[str] | None:
    """Comma-separated names; None when the option was not given. An option given but empty
    (an unset shell variable) is refused rather than read as "everything"."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names and option:
        raise UsageError(f"{option} is empty: give comma-separated names, or all")
    return names or None


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects comma-separated integers, got {text!r}") from None
