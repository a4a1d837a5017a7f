"""One self-contained HTML page: the leaderboard (sortable columns), the tables and the figures
embedded; inline CSS and JavaScript, no network access needed to view it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from benchmark.reports.render import cells
from benchmark.reports.tables import Table

CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;
margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0;cursor:pointer}td:first-child,th:first-child{text-align:left}
b{color:#0a4}img{max-width:100%;border:1px solid #eee}code{background:#f6f6f6;padding:1px 3px}"""
SORT_JS = """function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],rows=[...b.rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const v=r=>{const s=r.cells[i].innerText.split(' ')[0];const n=parseFloat(s);
return isNaN(n)?s:n};
rows.sort((x,y)=>{const a=v(x),c=v(y);return (a>c?1:a<c?-1:0)*(asc?1:-1)});
rows.forEach(r=>b.appendChild(r))}"""


def _table(header: list[str], rows: list[list[tuple[str, bool]]], table_id: str) -> str:
    head = "".join(f'<th onclick="sortBy(this)">{html.escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f"<td>{'<b>' if b and x else ''}{html.escape(x)}"
                                    f"{'</b>' if b and x else ''}</td>" for x, b in r) + "</tr>"
                   for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page(board: pd.DataFrame, tables: list[Table], figures: list[Path], title: str,
         notes: list[str]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Leaderboard</h2><p>Score: mean CA - mean ASR over the attacks (percent "
                 "points); DER and isolation F1 beside it; a defense with fewer attacks ranks "
                 "below the complete ones. Click a column to sort.</p>")
    if board.empty:
        parts.append("<p>no defense records yet</p>")
    for dataset, g in board.groupby("dataset"):
        header = ["rank", "defense", "score", "DER", "F1", "CA", "ASR", "attacks", "seeds"]
        fmt = lambda x, d=2: "" if pd.isna(x) else f"{x:.{d}f}"  # noqa: E731
        rows = [[(str(r.rank), False), (r.defense, r.rank == 1), (fmt(r.score), False),
                 (fmt(r.DER, 3), False), (fmt(r.F1, 3), False), (fmt(r.CA), False),
                 (fmt(r.ASR), False), (str(r.attacks), False), (str(r.seeds), False)]
                for r in g.itertuples()]
        parts += [f"<h3>{html.escape(str(dataset))}</h3>", _table(header, rows, f"leaderboard-{dataset}")]
    for t in tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        if t.empty:
            parts.append(f"<p>no records yet; fill with <code>{html.escape(t.command)}</code></p>")
            continue
        header, rows = cells(t)
        parts.append(_table(header, rows, t.name))
        parts.append(f"<p>filled by <code>{html.escape(t.command)}</code></p>")
    for f in figures:
        if f.suffix == ".png":
            data = base64.b64encode(f.read_bytes()).decode()
            parts.append(f'<h3>{html.escape(f.stem)}</h3><img alt="{html.escape(f.stem)}" '
                         f'src="data:image/png;base64,{data}">')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{SORT_JS}</script></head><body>{''.join(parts)}</body></html>")
