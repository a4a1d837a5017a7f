"""The robustness view: how each isolation method and defense fares under the attacks built to
beat isolation, beside its mean over the paper's attacks, from records only.

Rows are methods (every registered defense or variant at its defaults and current version);
columns are the paper's
nine attacks at their defaults, averaged (each attack first averaged over its seeds), and each
adaptive attack of ``ADAPTIVE`` at its reference settings. Two tables: isolation TPR / FPR (what
isolates or detects) and CA / ASR (what trains a model, No Defense as the reference). Bold marks
the best method of each column. A column no record fills stays out; a method with no record
on an adaptive attack has an empty cell, never a zero.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from benchmark.reports.records import LEARNED_ASR
from benchmark.reports.render import markdown as table_markdown
from benchmark.reports.tables import Table, build

PAPER_ATTACKS = ("badnets", "trojan", "blended", "dynamic", "wanet", "sig", "cl", "adaptive_patch",
                 "refool")
PAPER_MEAN = "paper attacks (mean)"
INTRO = ("Each method beside its mean over the paper's attacks under the attacks built to beat "
         "isolation, at their reference rates; isolation TPR / FPR for what isolates, CA / ASR for "
         "what trains a model. Bold: the best method of each column.")
# column -> (attack, its settings against the preset: the reference code's, where they are not
# the attack's defaults)
ADAPTIVE: dict[str, tuple[str, dict[str, Any]]] = {
    "adaptive_blend": ("adaptive_blend", {}),
    "adaptive_patch 0.003/0.006": ("adaptive_patch", {"adaptive_patch.rate": 0.003}),
    "tact": ("tact", {}),
    "badnets all-to-all": ("badnets_all2all", {}),
    "narcissus": ("narcissus", {}),
}
COMMAND = ("python run_benchmark.py --grid {grid} --attacks adaptive_blend,tact,badnets_all2all,narcissus "
           "--defenses no_defense,pipd,pipd_q90,abl,<method>; and --attacks adaptive_patch --set "
           "adaptive_patch.rate=0.003 (cover 2x: 0.006)")


def column_of(attack: str, overrides: dict[str, Any]) -> str | None:
    """The robustness column of a record's attack and attack settings (None: not in the view)."""
    if attack in PAPER_ATTACKS and not overrides:
        return PAPER_MEAN
    return next((col for col, (name, settings) in ADAPTIVE.items()
                 if name == attack and overrides == settings), None)


def _per_attack(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean over seeds of every (dataset, method, attack) at the view's settings."""
    ok = df[(df["status"] == "ok") & df["fault_ratio"].isna() & df["current"].astype(bool)
            & df["defense_overrides"].map(lambda o: not o)].copy()
    ok["robust_column"] = [column_of(a, o) for a, o in zip(ok["attack"], ok["attack_overrides"], strict=True)]
    ok = ok[ok["robust_column"].notna()]
    keys = ["dataset", "defense_label", "robust_column", "attack_label"]
    return ok.groupby(keys, as_index=False)[metrics].mean()


def _table(rows: pd.DataFrame, name: str, title: str, metrics: dict[str, str], grid: str) -> Table:
    t = build(rows, name, title, ["dataset", "defense_label"], "robust_column", metrics, grid=grid,
              command=COMMAND.format(grid=grid))
    t.bold_by, t.counted = "column", {PAPER_MEAN: "attacks"}
    if not t.empty:  # columns: the paper's mean first, then the adaptive attacks in ADAPTIVE's order
        order, shown = [PAPER_MEAN, *ADAPTIVE], list(metrics.values())
        ranked = sorted(t.mean.columns, key=lambda c: (shown.index(c.rsplit(" ", 1)[1]),
                                                       order.index(c.rsplit(" ", 1)[0])))
        for part in ("mean", "std", "paper", "seeds"):
            setattr(t, part, getattr(t, part)[ranked])
    return t


def robustness(df: pd.DataFrame, grid: str = "quick") -> list[Table]:
    """The isolation table (TPR / FPR) and the defended-model table (CA / ASR)."""
    metrics = ["tpr", "fpr", "ca", "asr"]
    per = _per_attack(df, metrics) if not df.empty else pd.DataFrame(
        columns=["dataset", "defense_label", "robust_column", "attack_label", *metrics])
    iso = per[per["tpr"].notna()]
    trained = df[df["trains_model"].astype(bool)]["defense_label"].unique() if not df.empty else []
    defended = per[per["defense_label"].isin(trained)]
    tables = [
        _table(iso, "robustness_isolation", "Robustness: isolation TPR and FPR under the attacks "
               "built to beat isolation, %", {"tpr": "TPR", "fpr": "FPR"}, grid),
        _table(defended, "robustness_defense", "Robustness: CA and ASR of the defended model under "
               "the attacks built to beat isolation, %", {"ca": "CA", "asr": "ASR"}, grid)]
    notes = [f"{PAPER_MEAN}: the mean over the paper's attacks the row has records of, each first "
             "averaged over its seeds; the ± is their spread across attacks, and the count how many; "
             "a mean over fewer attacks is not comparable with one over more"]
    base = per[(per["defense_label"] == "no_defense") & (per["robust_column"] != PAPER_MEAN)]
    weak = base.groupby(["dataset", "robust_column"])["asr"].mean()
    weak = [f"{col} on {dataset} (No Defense ASR {100 * v:.2f})" for (dataset, col), v in weak.items()
            if v < LEARNED_ASR]
    if weak:
        notes.append("not learned by No Defense at this scale, so isolating it says little: "
                     + ", ".join(weak))
    for t in tables:
        t.notes += notes
    return tables


def markdown(tables: list[Table]) -> str:
    """The view's tables as Markdown (the report's robustness.md, the findings page's block)."""
    return "\n".join(table_markdown(t) for t in tables)
