"""The grid's closing summary: Table 1 and Table 2 of the cells just run, in percent (the full
report, with the paper's values, is ``run_benchmark.py report``)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def summary(recs: list[dict[str, Any]]) -> str:
    from benchmark.reports import records, tables

    df = records.frame(recs)
    parts = []
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        for t, heading in ((tables.table1(df, defaults_only=False), "Table 1 style: clean accuracy "
                            "(CA) and attack success rate (ASR), %"),
                           (tables.table2(df, defaults_only=False), "Table 2 style: isolation "
                            "TPR / FPR, %")):
            if not t.empty:
                shown = t.mean.round(2)
                shown.index.names = ["dataset", "attack"]
                parts.append(f"{heading}\n{shown.to_string()}")
        failed = df[df["status"] != "ok"] if not df.empty else df
        if not failed.empty:
            lines = [f"  {r.attack_label}/{r.defense_label} seed {r.seed}: {r.error}"
                     for r in failed.itertuples()]
            parts.append(f"{len(failed)} failed cell(s):\n" + "\n".join(lines))
    return "\n\n".join(parts) if parts else "no results"
