"""A new defense against a baseline (PIPD by default), attack by attack, paired by seed.

For every attack (and setting) both ran on, the mean over seeds of the paired differences
NEW - BASELINE in CA, ASR, TPR and FPR, with an exact two-sided sign-flip permutation test on
the paired differences (every sign assignment; n/a with fewer than two seeds; with n seeds the
smallest attainable p is 2 / 2^n), and a one-line verdict: better, worse or mixed on the two
numbers a defense is judged by (ASR down without costing CA). Where either side trains no
defended model (a detector, an isolation-only setting), CA and ASR are not compared (a
detector's are those of the model it inspected) and the verdict reads TPR and FPR instead."""

from __future__ import annotations

import itertools
import math

import pandas as pd

from benchmark.registry import UsageError

METRICS = {"ca": "CA", "asr": "ASR", "tpr": "TPR", "fpr": "FPR"}


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided p-value of mean(diffs) under random signs (paired permutation test)."""
    n = len(diffs)
    if n < 2:
        return math.nan
    observed = abs(sum(diffs))
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=n))
    return hits / 2 ** n


def compare(df: pd.DataFrame, new: str, baseline: str = "pipd", tolerance: float = 1.0
            ) -> pd.DataFrame:
    """One row per (dataset, attack): per metric the mean paired difference (percent points)
    and its p-value, the seeds paired, and the verdict. ``tolerance``: points of ASR / CA within
    which two defenses count as equal."""
    ok = df[(df["status"] == "ok") & df["fault_ratio"].isna() & (df["attack"] != "clean")] \
        if not df.empty else df

    def cells(name: str) -> pd.DataFrame:  # a table column name, else a defense with one variant
        rows = ok[ok["defense_label"] == name]
        if rows.empty:
            rows = ok[ok["defense"] == name]
            if rows["defense_label"].nunique() > 1:
                variants = ", ".join(sorted(set(rows["defense_label"])))
                raise UsageError(f"{name} has several variants here ({variants}): name one of them")
        return rows.set_index(["dataset", "attack_label", "seed"])

    a, b = cells(new), cells(baseline)
    if a.empty or b.empty:  # nothing to pair (no records yet, or a name without any)
        return pd.DataFrame()
    isolation_only = not (a["trains_model"].astype(bool).all() and b["trains_model"].astype(bool).all())
    groups: dict[tuple[str, str], list] = {}
    for key in a.index.intersection(b.index):
        groups.setdefault(key[:2], []).append(key)
    rows = []
    for (dataset, attack), pairs in sorted(groups.items()):
        row: dict = {"dataset": dataset, "attack": attack, "seeds": len(pairs)}
        for m, name in METRICS.items():
            if isolation_only and m in ("ca", "asr"):
                row[f"d{name}"] = row[f"p{name}"] = math.nan
                continue
            d = [100 * (a.at[k, m] - b.at[k, m]) for k in pairs]
            d = [x for x in d if not math.isnan(x)]
            row[f"d{name}"] = sum(d) / len(d) if d else math.nan
            row[f"p{name}"] = sign_flip_p(d) if d else math.nan
        row["verdict"] = (isolation_verdict(row["dTPR"], row["dFPR"], tolerance, new, baseline)
                          if isolation_only else verdict(row["dASR"], row["dCA"], tolerance, new, baseline))
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(d_asr: float, d_ca: float, tol: float, new: str, baseline: str) -> str:
    if math.isnan(d_asr) or math.isnan(d_ca):
        return "n/a"
    asr = "lower" if d_asr < -tol else "higher" if d_asr > tol else "equal"
    ca = "higher" if d_ca > tol else "lower" if d_ca < -tol else "equal"
    if asr in ("lower", "equal") and ca in ("higher", "equal") and (asr, ca) != ("equal", "equal"):
        return f"{new} better than {baseline}: ASR {asr}, CA {ca}"
    if asr in ("higher", "equal") and ca in ("lower", "equal") and (asr, ca) != ("equal", "equal"):
        return f"{new} worse than {baseline}: ASR {asr}, CA {ca}"
    if (asr, ca) == ("equal", "equal"):
        return f"{new} on a par with {baseline} (within {tol:g} points)"
    return f"mixed: ASR {asr}, CA {ca}"


def isolation_verdict(d_tpr: float, d_fpr: float, tol: float, new: str, baseline: str) -> str:
    """The verdict on isolation alone: more poisoned samples caught (TPR) for fewer clean ones
    flagged (FPR) is better."""
    if math.isnan(d_tpr) or math.isnan(d_fpr):
        return "n/a (isolation only, and a side isolates nothing)"
    tpr = "higher" if d_tpr > tol else "lower" if d_tpr < -tol else "equal"
    fpr = "lower" if d_fpr < -tol else "higher" if d_fpr > tol else "equal"
    head = "isolation only (CA / ASR not compared): "
    if (tpr, fpr) == ("equal", "equal"):
        return head + f"{new} on a par with {baseline} (within {tol:g} points)"
    if tpr in ("higher", "equal") and fpr in ("lower", "equal"):
        return head + f"{new} better than {baseline}: TPR {tpr}, FPR {fpr}"
    if tpr in ("lower", "equal") and fpr in ("higher", "equal"):
        return head + f"{new} worse than {baseline}: TPR {tpr}, FPR {fpr}"
    return head + f"mixed: TPR {tpr}, FPR {fpr}"


def markdown(table: pd.DataFrame, new: str, baseline: str) -> str:
    if table.empty:
        return (f"no attack has records of both {new} and {baseline} (same seeds, default attack "
                f"settings): run both on the same grid first\n")
    f = lambda x: "" if pd.isna(x) else f"{x:+.2f}"  # noqa: E731
    p = lambda x: "n/a" if pd.isna(x) else f"{x:.3f}"  # noqa: E731
    lines = [f"## {new} vs {baseline} (paired by seed; differences in points, p: sign-flip test)", "",
             "| dataset | attack | seeds | dCA (p) | dASR (p) | dTPR (p) | dFPR (p) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.dataset} | {r.attack} | {r.seeds} | {f(r.dCA)} ({p(r.pCA)}) | "
                     f"{f(r.dASR)} ({p(r.pASR)}) | {f(r.dTPR)} ({p(r.pTPR)}) | {f(r.dFPR)} ({p(r.pFPR)}) | "
                     f"{r.verdict} |")
    return "\n".join(lines) + "\n"
