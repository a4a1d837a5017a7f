"""Helpers the subcommands (grid, triggers, report) share."""

from __future__ import annotations

import os
from pathlib import Path

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
    """Comma-separated non-negative integers, at least one; duplicates dropped."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty: give comma-separated integers, e.g. 0,1,2")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be non-negative integers, got {text!r}")
    return list(dict.fromkeys(seeds))


def writable_folder(path: Path, option: str) -> None:
    """``path`` is a folder this process can write, or can be created: else ``UsageError``
    (checked before anything is written)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} is not writable (by this user, at {probe})")


def probe_address(address: str, timeout: float = 3.0) -> None:
    """Refuse a Ray ``host:port`` where nothing answers, at once (Ray itself retries for ~20 s
    and prints pages of warnings): a TCP connect, no Ray or torch import."""
    import socket

    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if address != "auto" and host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            raise UsageError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                             f"start one with `ray start --head --port {port}` or use --address auto"
                             ) from None
