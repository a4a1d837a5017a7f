"""The one loader every report reads records through: a tidy frame, one row per cell.

Rows are keyed by the full identity of what ran: ``attack_label`` is the attack plus whatever
the cell overrides upstream of the defense (``badnets badnets.pattern=white``, a poison rate, a
training recipe), ``defense_label`` the defense's table name plus its own overrides and
" (bf16)" when its training steps ran in bf16. Two
variants of an attack are two rows, never averaged as if they were seeds.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.config import label
from benchmark.facts import record_facts
from benchmark.store import read_record

METRICS = ("ca", "asr", "r_acc", "tpr", "fpr", "auroc")
# an attack whose No Defense ASR stays below this was not learned: a defense's low ASR on it
# says nothing (marked in the tables, left out of averages and the leaderboard's score)
LEARNED_ASR = 0.60


def read_records(folders: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Every record under ``folders`` (a results folder or a folder of record files), newest
    copy of an id last; unusable files (not JSON, missing keys) are skipped with a warning, and
    development-run records (``--fast-dev-run``: numbers of a few batches) with a count."""
    by_id: dict[str, dict[str, Any]] = {}
    dev = 0
    for folder in folders:
        folder = Path(folder)
        root = folder / "records" if (folder / "records").is_dir() else folder
        for path in sorted(root.glob("*.json")):
            rec, why = read_record(path)
            if why is not None:
                print(f"warning: skipped record {path} ({why})", file=sys.stderr)
            elif "fast_dev_run" in rec.get("config", {}):
                dev += 1
            else:
                by_id[rec["id"]] = rec
    if dev:
        print(f"note: left out {dev} development-run record(s) (--fast-dev-run): never in tables",
              file=sys.stderr)
    return list(by_id.values())


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and x is not None else math.nan


def _stale_version(kind: str, name: str, config: dict[str, Any]) -> str:
    """" (vN)" when a record was made by another version of the method than the registered one
    (its row must not merge with the current version's); "" otherwise."""
    from benchmark.sources import registered_version

    made = config.get(f"{kind}_version", 1)
    return f" (v{made})" if registered_version(kind, name) not in (None, made) else ""


def cpu_kind(hardware: dict[str, Any]) -> str:
    """The CPU kind a record was made on, as far as it says: fp32 cells are bit-identical on one
    kind and can differ across kinds (records before ``cpu_native_bf16`` say nothing)."""
    if hardware.get("device") not in (None, "cpu"):
        return str(hardware["device"])
    native = hardware.get("cpu_native_bf16")
    kind = "" if native is None else ("AVX-512 BF16" if native else "AVX2")
    return " ".join(filter(None, [hardware.get("cpu_model"), kind]))


def dataset_label(dataset: str, model: str | None) -> str:
    """A table's dataset rows: the dataset, with the model where it is not the dataset's default
    (``cifar10 (preact_resnet18)``), so that every table, the leaderboard and the report keep
    each model apart (and the paper's values, all ResNet-18, only beside the default)."""
    from benchmark.config import default_model

    return dataset if model in (None, default_model(dataset)) else f"{dataset} ({model})"


def row(rec: dict[str, Any]) -> dict[str, Any]:
    c = rec["config"]
    # what the record says of itself (benchmark.facts); records made before it, by today's code
    facts = rec.get("facts") or record_facts(c, rec.get("id"))
    upstream, own = facts["attack_overrides"], facts["defense_overrides"]
    m = rec.get("metrics") or {}
    masks = (rec.get("isolation") or {}).get("masks") or {}
    dp = c.get("defense_params", {})
    rounds = sorted((int(k.split("_")[1]), v) for k, v in masks.items() if k.startswith("round_"))
    # what the training steps ran in: bf16 (CUDA's ``auto``) is marked in the column name, so a
    # bf16 cell never averages with an fp32 one of the same config
    precision = str((rec.get("hardware") or {}).get("precision") or "")
    stale = _stale_version("attack", c["attack"], c), _stale_version("defense", c["defense"], c)
    # PIPD or a variant of it: the records whose seed statistic and post-isolation training mean
    # something (NONE also has ``rounds``)
    pipd = "pipd" in facts["lineage"]
    return {
        "id": rec.get("id"), "status": rec["status"], "error": rec.get("error"),
        "preset": c.get("preset"), "dataset": dataset_label(c["dataset"], c.get("model")),
        "dataset_name": c["dataset"], "model": c.get("model"),
        "attack": c["attack"],
        "attack_label": " ".join(filter(None, [c["attack"], label(upstream)]))
        + stale[0],
        "defense": c["defense"],
        "defense_label": facts["column"] + (f"[{label(own)}]" if own else "")
        + stale[1] + (" (bf16)" if "bf16" in precision else ""),
        "current": not any(stale),  # both methods at their registered versions
        "train_precision": precision,
        "defense_overrides": own,
        "attack_overrides": upstream,
        "seed": c["seed"], "rate": c.get("attack_params", {}).get("rate"),
        "detector": facts["detector"], "trains_model": facts["trains_model"],
        "default": facts["default"], "lineage": facts["lineage"], "column": facts["column"],
        "variant": len(facts["lineage"]) > 1,
        "preset_attack_train": facts["preset_attack_train"], "caveat": facts["caveat"],
        **{k: _num(m.get(k)) for k in METRICS},
        "precision": _num(((rec.get("isolation") or {}).get("isolated") or {}).get("precision")),
        "pp_precision": _num((masks.get("seed_poison") or {}).get("precision")),
        "fault_ratio": dp.get("fault_ratio"), "rounds": dp.get("rounds"),
        # PIPD's seed statistic (Eq. 4's max is the quantile 1; records before the option: 1)
        "seed_quantile": dp.get("seed_quantile", 1.0) if pipd else None,
        "training": dp.get("training", "selective") if pipd else None,
        "round_fpr": [_num(v.get("fpr")) for _, v in rounds],
        "round_tpr": [_num(v.get("tpr")) for _, v in rounds],
        "total_s": _num((rec.get("timings") or {}).get("total_s")),
        "cpu": cpu_kind(rec.get("hardware") or {}),
        "curves": rec.get("curves") or {},
    }


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record (failed ones too, with ``status`` and ``error``)."""
    return pd.DataFrame([row(r) for r in records]) if records else pd.DataFrame(
        columns=["id", "status", "dataset", "attack", "attack_label", "defense", "defense_label",
                 "seed", "detector", "default", "variant", "caveat", *METRICS])


def load(folders: Iterable[Path | str]) -> pd.DataFrame:
    return frame(read_records(folders))


def not_learned(df: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(dataset, attack_label) -> No Defense ASR (mean over its seeds) for every attack whose
    No Defense ASR is below ``LEARNED_ASR`` (the clean baseline aside)."""
    if df.empty:
        return {}
    base = df[(df["status"] == "ok") & (df["defense"] == "no_defense") & (df["attack"] != "clean")
              & df["fault_ratio"].isna()]
    asr = base.groupby(["dataset", "attack_label"])["asr"].mean()
    return {key: float(v) for key, v in asr.items() if v < LEARNED_ASR}
