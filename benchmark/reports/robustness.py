"""The robustness view: how each isolation method and defense fares under the attacks built to
beat isolation, beside its mean over the paper's attacks, from records only.

Rows are methods (every registered defense or variant at its defaults and current version);
columns are the paper's
nine attacks at their defaults, averaged (each attack first averaged over its seeds), and each
adaptive attack of ``ADAPTIVE`` at its reference settings. Two tables: isolation TPR / FPR (what
isolates or detects) and CA / ASR (what trains a model, No Defense as the reference). Bold marks
the best method of each column. A column no record fills stays out; a method with no record
on an adaptive attack has an empty cell, never a zero.

Where No Defense does not learn an adaptive attack at its reference settings (ASR below
``LEARNED_ASR``), an isolation score there says little; the lowest poison rate at which No
Defense's records do learn it (records whose one attack setting is ``<attack>.rate``: a rate
sweep) gets a column of its own beside the reference's, so every method can be read where the
backdoor exists.
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
           "adaptive_patch.rate=0.003 (cover 2x: 0.006); where No Defense does not learn one, "
           "--defenses no_defense --set <attack>.rate=<higher rate>")
Columns = dict[str, tuple[str, dict[str, Any]]]  # column -> (attack, its settings)


def lowest_learned(ok: pd.DataFrame) -> tuple[Columns, dict[str, set[str]]]:
    """A column for each adaptive attack that No Defense does not learn at its reference settings
    on some dataset (mean ASR over seeds below ``LEARNED_ASR``): the lowest poison rate at which
    No Defense's records there learn it, among the records whose one attack setting is the
    rate; no column where none of them learns it. With each column, the datasets it was chosen
    for: another dataset's cells at that rate are not its lowest learned rate."""
    base = ok[ok["defense_label"] == "no_defense"]
    extra: Columns = {}
    chosen: dict[str, set[str]] = {}
    for attack, settings in ADAPTIVE.values():
        key, mine = f"{attack}.rate", base[base["attack"] == attack]
        # (astype: an empty frame's map is not boolean, and would select columns)
        at_ref = mine[mine["attack_overrides"].map(lambda o, s=settings: o == s).astype(bool)]
        swept = mine[mine["attack_overrides"].map(lambda o, k=key: list(o) == [k]).astype(bool)]
        for dataset, asr in at_ref.groupby("dataset")["asr"].mean().items():
            if asr >= LEARNED_ASR:
                continue
            here = swept[swept["dataset"] == dataset]
            by_rate = here.groupby(here["attack_overrides"].map(lambda o, k=key: float(o[k])))["asr"].mean()
            learned = by_rate[by_rate >= LEARNED_ASR]
            if len(learned):
                rate = float(learned.index.min())
                col = f"{attack} at {rate:g} (lowest learned)"
                extra[col] = (attack, {key: rate})
                chosen.setdefault(col, set()).add(dataset)
    return extra, chosen


def column_of(attack: str, overrides: dict[str, Any], extra: Columns | None = None) -> str | None:
    """The robustness column of a record's attack and attack settings (None: not in the view);
    ``extra``: the lowest-learned-rate columns (``lowest_learned``)."""
    if attack in PAPER_ATTACKS and not overrides:
        return PAPER_MEAN
    return next((col for col, (name, settings) in {**ADAPTIVE, **(extra or {})}.items()
                 if name == attack and overrides == settings), None)


def column_order(extra: Columns) -> list[str]:
    """The paper's mean, then each adaptive attack in ``ADAPTIVE``'s order, its lowest learned
    rate (if any) beside it."""
    order = [PAPER_MEAN]
    for col, (attack, _) in ADAPTIVE.items():
        order += [col, *sorted((c for c, (a, _) in extra.items() if a == attack),
                               key=lambda c: next(iter(extra[c][1].values())))]
    return order


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    """Records the view reads: ok, no fault injection, current versions, the defense at its
    defaults."""
    return df[(df["status"] == "ok") & df["fault_ratio"].isna() & df["current"].astype(bool)
              & df["defense_overrides"].map(lambda o: not o)]


def _per_attack(ok: pd.DataFrame, metrics: list[str], extra: Columns,
                chosen: dict[str, set[str]]) -> pd.DataFrame:
    """Mean over seeds of every (dataset, method, attack) at the view's settings; a lowest
    learned column holds the datasets it was chosen for only."""
    ok = ok.copy()
    ok["robust_column"] = [column_of(a, o, extra)
                           for a, o in zip(ok["attack"], ok["attack_overrides"], strict=True)]
    ok = ok[ok["robust_column"].notna()]
    held = [col not in chosen or d in chosen[col] for col, d in zip(ok["robust_column"], ok["dataset"],
                                                                    strict=True)]
    ok = ok[pd.Series(held, index=ok.index, dtype=bool)]  # (a list would select columns when empty)
    keys = ["dataset", "defense_label", "robust_column", "attack_label"]
    return ok.groupby(keys, as_index=False)[metrics].mean()


def _table(rows: pd.DataFrame, name: str, title: str, metrics: dict[str, str], grid: str,
           order: list[str]) -> Table:
    t = build(rows, name, title, ["dataset", "defense_label"], "robust_column", metrics, grid=grid,
              command=COMMAND.format(grid=grid))
    t.bold_by, t.counted = "column", {PAPER_MEAN: "attacks"}
    if not t.empty:  # columns in ``order``, metric by metric
        shown = list(metrics.values())
        ranked = sorted(t.mean.columns, key=lambda c: (shown.index(c.rsplit(" ", 1)[1]),
                                                       order.index(c.rsplit(" ", 1)[0])))
        for part in ("mean", "std", "paper", "seeds"):
            setattr(t, part, getattr(t, part)[ranked])
    return t


def robustness(df: pd.DataFrame, grid: str = "quick") -> list[Table]:
    """The isolation table (TPR / FPR) and the defended-model table (CA / ASR)."""
    metrics = ["tpr", "fpr", "ca", "asr"]
    if df.empty:
        extra: Columns = {}
        per = pd.DataFrame(columns=["dataset", "defense_label", "robust_column", "attack_label", *metrics])
        trained = []
    else:
        ok = _usable(df)
        extra, chosen = lowest_learned(ok)
        per = _per_attack(ok, metrics, extra, chosen)
        trained = df[df["trains_model"].astype(bool)]["defense_label"].unique()
    order = column_order(extra)
    iso = per[per["tpr"].notna()]
    defended = per[per["defense_label"].isin(trained)]
    tables = [
        _table(iso, "robustness_isolation", "Robustness: isolation TPR and FPR under the attacks "
               "built to beat isolation, %", {"tpr": "TPR", "fpr": "FPR"}, grid, order),
        _table(defended, "robustness_defense", "Robustness: CA and ASR of the defended model under "
               "the attacks built to beat isolation, %", {"ca": "CA", "asr": "ASR"}, grid, order)]
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
    if extra:
        notes.append("lowest learned: the lowest poison rate at which No Defense's records learn an "
                     "attack it does not learn at its reference rate (ASR at least "
                     f"{100 * LEARNED_ASR:.0f}%; cover rates stay the attack's): "
                     + ", ".join(extra))
    for t in tables:
        t.notes += notes
    return tables


def markdown(tables: list[Table]) -> str:
    """The view's tables as Markdown (the report's robustness.md, the findings page's block)."""
    return "\n".join(table_markdown(t) for t in tables)
