"""The PIPD paper's reported numbers (Tables 1-4), shipped with the package, keyed by the
suite's names."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent / "paper"
DATASETS = {"cifar10": "CIFAR-10", "imagefolder": "ImageNet"}
ATTACKS = {"badnets": "BadNets", "trojan": "Trojan", "blended": "Blended", "sig": "SIG", "cl": "CL",
           "dynamic": "Dynamic", "wanet": "WaNet", "adaptive_patch": "A-Patch", "refool": "Refool"}
# the paper's ImageNet rows name their trigger variants
IMAGENET_ATTACKS = {"badnets": "BadNets-Grid", "trojan": "Trojan-WM"}
DEFENSES = {"no_defense": "No Defense", "abl": "ABL", "dbd": "DBD", "none": "NONE", "asd": "ASD",
            "pipd": "PIPD", "scale_up": "SCALE-UP", "dbalfa": "DBALFA"}


@cache
def table(name: str) -> pd.DataFrame:
    """``table1_defense``, ``table2_isolation``, ``table3_fault_ratio`` or ``table4_iterations``."""
    return pd.read_csv(HERE / f"{name}.csv")


def paper_attack(dataset: str, attack: str) -> str | None:
    if dataset == "imagefolder" and attack in IMAGENET_ATTACKS:
        return IMAGENET_ATTACKS[attack]
    return ATTACKS.get(attack)


def lookup(name: str, **keys: object) -> dict[str, float]:
    """The paper's row of ``name`` matching ``keys`` (its column names), or {}."""
    t = table(name)
    mask = pd.Series(True, index=t.index)
    for k, v in keys.items():
        mask &= t[k].astype(str) == str(v)
    rows = t[mask]
    return rows.iloc[0].to_dict() if len(rows) else {}
