"""Tables as CSV, Markdown and LaTeX (booktabs): each metric column followed by the paper's
value and the difference where the paper reports any; the best method per row and metric in
bold (highest CA/TPR, lowest ASR/FPR)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.reports.tables import BETTER, Table


def _fmt(x: float, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _best(t: Table, key) -> set[str]:  # noqa: ANN001
    """The columns holding the best value of their metric in row ``key``."""
    best: set[str] = set()
    row = t.mean.loc[key]
    for metric, pick in BETTER.items():
        cols = [c for c in row.index if c.endswith(" " + metric) and not pd.isna(row[c])]
        if len(cols) > 1:
            top = pick(row[c] for c in cols)
            best |= {c for c in cols if row[c] == top}
    return best


def cells(t: Table) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of (text, bold) cells: index values, then per column the value (+- std
    when several seeds), the paper's value and the difference where the paper has the column."""
    has_paper = {c for c in t.mean.columns if t.paper[c].notna().any()}
    header = [*t.index]
    for c in t.mean.columns:
        header.append(c)
        if c in has_paper:
            header += [f"{c} paper", f"{c} diff"]
    body = []
    for key in t.mean.index:
        best = _best(t, key)
        row = [(str(v), False) for v in (key if isinstance(key, tuple) else (key,))]
        if key in t.marks:  # beside the row's last label: "wanet (not learned: ...)"
            row[-1] = (f"{row[-1][0]} ({t.marks[key]})", False)
        for c in t.mean.columns:
            m, sd, n = t.mean.at[key, c], t.std.at[key, c], t.seeds.at[key, c]
            text = _fmt(m) + (f" ± {_fmt(sd)}" if n > 1 and key[-1] != "average" and _fmt(m) else "")
            row.append((text, c in best))
            if c in has_paper:
                p = t.paper.at[key, c]
                row += [(_fmt(p), False), (_fmt(m - p) if not pd.isna(m) else "", False)]
        body.append(row)
    return header, body


def markdown(t: Table) -> str:
    if t.empty:
        return f"### {t.title}\n\nno records yet; fill with:\n\n    {t.command}\n"
    header, body = cells(t)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"### {t.title}", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    for row in body:
        lines.append("| " + " | ".join(f"**{esc(x)}**" if b and x else esc(x) for x, b in row) + " |")
    lines += ["", *[f"- {n}" for n in t.notes], f"- filled by: `{t.command}`", ""]
    return "\n".join(lines)


def latex(t: Table) -> str:
    if t.empty:
        return f"% {t.title}: no records yet; fill with: {t.command}\n"
    header, body = cells(t)
    esc = lambda s: (s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%")  # noqa: E731
                     .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$"))
    lines = ["\\begin{table}", "\\centering", f"\\caption{{{esc(t.title)}}}",
             "\\begin{tabular}{" + "l" * len(t.index) + "r" * (len(header) - len(t.index)) + "}",
             "\\toprule", " & ".join(esc(h) for h in header) + " \\\\", "\\midrule"]
    for row in body:
        lines.append(" & ".join(f"\\textbf{{{esc(x)}}}" if b and x else esc(x) for x, b in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def write(t: Table, out: Path) -> list[Path]:
    """``<name>.csv`` (long form), ``<name>.md`` and ``<name>.tex`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{t.name}.{ext}" for ext in ("csv", "md", "tex")]
    t.long().to_csv(paths[0], index=False)
    paths[1].write_text(markdown(t))
    paths[2].write_text(latex(t))
    return paths
