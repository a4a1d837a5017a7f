"""Summary tables in the paper's layout (Table 1: CA/ASR; Table 2: TPR/FPR), in percent."""

from __future__ import annotations

import pandas as pd


def _pivot(df: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    cols = [f"metrics.{m}" for m in metrics if f"metrics.{m}" in ok]
    if ok.empty or not cols:
        return pd.DataFrame()
    # rows: the attack and what a cell overrides upstream of the defense; columns: the defense
    # and its own overrides (a --sweep shows as separate rows/columns, never averaged)
    table = ok.pivot_table(index=["config.dataset", "row"], columns="column",
                           values=cols, aggfunc="mean", dropna=True) * 100
    defenses = sorted({d for _, d in table.columns}, key=lambda d: (d != "no_defense", d))
    table = table[[(m, d) for d in defenses for m in cols if (m, d) in table.columns]]
    table.columns = [f"{d} {m.split('.', 1)[1].upper()}" for m, d in table.columns]
    table.index.names = ["dataset", "attack"]
    return table.round(2)


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """CA and ASR (%) per attack and defense, mean over seeds. Detectors train no model (their
    records carry the inspected model's CA/ASR), so they appear in Table 2 only."""
    from defenses import DEFENSES

    detectors = [d for d in DEFENSES.names() if DEFENSES.get(d).is_detector]
    if "config.defense" in df:
        df = df[~df["config.defense"].isin(detectors)]
    return _pivot(df, ("ca", "asr"))


def table2(df: pd.DataFrame) -> pd.DataFrame:
    """Isolation TPR and FPR (%) per attack and defense, mean over seeds."""
    return _pivot(df, ("tpr", "fpr"))


def summary(df: pd.DataFrame) -> str:
    parts = []
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        t1, t2 = table1(df), table2(df)
        if not t1.empty:
            parts.append("Table 1 style: clean accuracy (CA) and attack success rate (ASR), %\n"
                         + t1.to_string())
        if not t2.empty:
            parts.append("Table 2 style: isolation TPR / FPR, %\n" + t2.to_string())
        failed = df[df["status"] == "failed"] if "status" in df else df.iloc[0:0]
        if not failed.empty:
            lines = [f"  {r['config.attack']}/{r['config.defense']} seed {r['config.seed']}: "
                     f"{r['error']}" for _, r in failed.iterrows()]
            parts.append(f"{len(failed)} failed cell(s):\n" + "\n".join(lines))
    return "\n\n".join(parts) if parts else "no results"
