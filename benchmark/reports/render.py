"""Tables as CSV, Markdown and LaTeX (booktabs): our values, the best method per row and metric
in bold (highest CA/TPR, lowest ASR/FPR); where the paper reports any column, a second table
of the paper's values with our difference beside each (``94.12 (-13.12)``). The CSV long form
holds mean, std, seeds, paper and difference per cell."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reports.tables import BETTER, Table, metric_of


def dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys (``{"train": {"lr": 0.1}}`` -> ``train.lr``); an
    empty dict stays a value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _best(t: Table, key) -> set[str]:  # noqa: ANN001
    """The columns of row ``key`` holding the best value of their metric: across the row (methods
    are columns), or down each column (``bold_by="column"``: methods are rows)."""
    best: set[str] = set()
    row = t.mean.loc[key]
    for metric, pick in BETTER.items():
        cols = [c for c in row.index if c.endswith(" " + metric) and not pd.isna(row[c])]
        if t.bold_by == "column":  # a counted column compares the rows of the largest count only
            for c in cols:
                peers = t.mean[c].dropna()
                if c.rsplit(" ", 1)[0] in t.counted:
                    peers = peers[t.seeds.loc[peers.index, c] == t.seeds[c].max()]
                if len(peers) > 1 and key in peers.index and row[c] == pick(peers):
                    best.add(c)
        elif len(cols) > 1:
            top = pick(row[c] for c in cols)
            best |= {c for c in cols if row[c] == top}
    return best


INDEX_NAMES = {"attack_label": "attack", "defense_label": "method"}


def metrics(t: Table) -> list[str]:
    """The table's metrics in column order (each rendered as its own block: narrow tables)."""
    return list(dict.fromkeys(metric_of(c) for c in t.mean.columns))


def _header(t: Table, cols: list[str]) -> list[str]:
    return [INDEX_NAMES.get(i, i) for i in t.index] + [c.rsplit(" ", 1)[0] for c in cols]


def cells(t: Table, metric: str) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of (text, bold) cells of one metric's columns: index values (with a
    row's mark), then per column the value (+- std when several seeds)."""
    cols = [c for c in t.mean.columns if metric_of(c) == metric]
    body = []
    for key in t.mean.index:
        best = _best(t, key)
        row = _labels(t, key)
        for c in cols:
            m, sd, n = t.mean.at[key, c], t.std.at[key, c], t.seeds.at[key, c]
            text = _fmt(m) + (f" ± {_fmt(sd)}" if n > 1 and key[-1] != "average" and _fmt(m) else "")
            what = t.counted.get(c.rsplit(" ", 1)[0])
            text += f" ({int(n)} {what if n > 1 else what.rstrip('s')})" if what and _fmt(m) else ""
            row.append((text, c in best))
        body.append(row)
    return _header(t, cols), body


def paper_cells(t: Table, metric: str) -> tuple[list[str], list[list[tuple[str, bool]]]] | None:
    """The paper's values of one metric's columns it reports, each with our difference: None
    if none."""
    cols = [c for c in t.mean.columns if t.paper[c].notna().any() and metric_of(c) == metric]
    if not cols:
        return None
    body = []
    for key in t.mean.index:
        row = _labels(t, key)
        for c in cols:
            p, m = t.paper.at[key, c], t.mean.at[key, c]
            row.append((_fmt(p) + (f" ({m - p:+.2f})" if not pd.isna(p) and not pd.isna(m) else ""),
                        False))
        body.append(row)
    return _header(t, cols), body


def _labels(t: Table, key) -> list[tuple[str, bool]]:  # noqa: ANN001
    row = [(str(v), False) for v in (key if isinstance(key, tuple) else (key,))]
    if key in t.marks:  # beside the row's last label: "wanet (not learned: 12.82)"
        row[-1] = (f"{row[-1][0]} ({t.marks[key]})", False)
    return row


def _md(header: list[str], body: list[list[tuple[str, bool]]]) -> list[str]:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(f"**{esc(x)}**" if b and x else esc(x) for x, b in row) + " |"
              for row in body]]


def markdown(t: Table) -> str:
    if t.empty:
        return f"### {t.title}\n\nno records yet; fill with:\n\n    {t.command}\n"
    lines = [f"### {t.title}", ""]
    for m in metrics(t):
        lines += [f"**{m}**", "", *_md(*cells(t, m)), ""]
    for m in metrics(t):
        paper = paper_cells(t, m)
        if paper is not None:
            lines += [f"**{m}: the paper's values (our difference)**", "", *_md(*paper), ""]
    lines += [*[f"- {n}" for n in t.notes], f"- filled by: `{t.command}`", ""]
    return "\n".join(lines)


def _tex(t: Table, caption: str, header: list[str], body: list[list[tuple[str, bool]]]) -> list[str]:
    esc = lambda s: (s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%")  # noqa: E731
                     .replace("&", "\\&").replace("#", "\\#").replace("±", "$\\pm$"))
    lines = ["\\begin{table}", "\\centering", f"\\caption{{{esc(caption)}}}",
             "\\begin{tabular}{" + "l" * len(t.index) + "r" * (len(header) - len(t.index)) + "}",
             "\\toprule", " & ".join(esc(h) for h in header) + " \\\\", "\\midrule"]
    for row in body:
        lines.append(" & ".join(f"\\textbf{{{esc(x)}}}" if b and x else esc(x) for x, b in row) + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]


def latex(t: Table) -> str:
    if t.empty:
        return f"% {t.title}: no records yet; fill with: {t.command}\n"
    lines: list[str] = []
    for m in metrics(t):
        lines += _tex(t, f"{t.title}: {m}", *cells(t, m))
    for m in metrics(t):
        paper = paper_cells(t, m)
        if paper is not None:
            lines += _tex(t, f"{t.title}: {m}, the paper's values (our difference)", *paper)
    return "\n".join(lines)


def write(t: Table, out: Path) -> list[Path]:
    """``<name>.csv`` (long form), ``<name>.md`` and ``<name>.tex`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{t.name}.{ext}" for ext in ("csv", "md", "tex")]
    t.long().to_csv(paths[0], index=False)
    paths[1].write_text(markdown(t))
    paths[2].write_text(latex(t))
    return paths
