"""What is registered: the datasets, attacks, models and defenses ``--list`` prints."""

from __future__ import annotations

from typing import Any


def _own(cls: type, package: str) -> bool:
    return cls.__module__.split(".")[0] == package


def catalog(builtin: bool = False) -> dict[str, Any]:
    """The registries' names (each defense with its title and whether it is a detector);
    ``builtin``: the suite's own methods only, without those a plugin registered."""
    from attacks import ATTACKS
    from benchmark.data import DATASETS
    from benchmark.models import MODELS
    from defenses import DEFENSES

    attacks = [n for n in ATTACKS.names() if not builtin or _own(ATTACKS.get(n), "attacks")]
    defenses = [n for n in DEFENSES.names() if not builtin or _own(DEFENSES.get(n), "defenses")]
    return {"datasets": DATASETS.names(), "attacks": attacks, "models": MODELS.names(),
            "defenses": {n: {"title": DEFENSES.get(n).title, "is_detector": DEFENSES.get(n).is_detector}
                         for n in defenses}}


def listing(cat: dict[str, Any]) -> str:
    """The ``--list`` text."""
    lines = [f"{kind}: {', '.join(cat[kind])}" for kind in ("datasets", "attacks", "models")]
    lines.append("defenses:")
    width = max(map(len, cat["defenses"]), default=0)
    for name, d in cat["defenses"].items():
        kind = " [detector: isolation only]" if d["is_detector"] else ""
        lines.append(f"  {name:{width}s} {d['title'] or ''}{kind}")
    return "\n".join(lines)
