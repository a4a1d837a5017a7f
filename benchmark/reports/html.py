"""One self-contained HTML page: the leaderboard (sortable columns), the tables and the figures
embedded; inline CSS and JavaScript, no network access needed to view it. With the cell pages
(``benchmark.reports.cellpages``) beside it, every table cell and leaderboard row links to the
cells behind it."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from benchmark.reports import leaderboard
from benchmark.reports.leaderboard import Board
from benchmark.reports.render import cells, metrics, paper_cells
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


Link = Callable[..., str | None]  # the labels of a group of cells -> its address, or None


def _cell(x: str, bold: bool, href: str | None = None) -> str:
    text = f"<b>{html.escape(x)}</b>" if bold and x else html.escape(x)
    return f"<td><a href='{html.escape(href)}'>{text}</a></td>" if href and x else f"<td>{text}</td>"


def _table(header: list[str], rows: list[list[tuple]], table_id: str) -> str:
    """Rows of (text, bold) or (text, bold, href) cells."""
    head = "".join(f'<th onclick="sortBy(this)">{html.escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(_cell(*c) for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _linked(t: Table, header: list[str], rows: list[list[tuple[str, bool]]], link: Link
            ) -> list[list[tuple]]:
    """The rows of a (dataset, attack) table with each value cell linked to its (dataset,
    attack, column) group; the table's own keys name the group, not the rendered labels."""
    if list(t.index) != ["dataset", "attack_label"]:
        return rows
    n = len(t.index)
    return [r[:n] + [(x, b, link(dataset, attack, col))
                     for (x, b), col in zip(r[n:], header[n:], strict=True)]
            for (dataset, attack), r in zip(t.mean.index, rows, strict=True)]


def page(board: Board, tables: list[Table], figures: list[Path], title: str,
         notes: list[str], link: Link | None = None) -> str:
    """The report's page; ``link(dataset, defense)`` and ``link(dataset, attack, defense)`` give
    the address of a leaderboard row's and a table cell's cells (None: no link)."""
    link = link or (lambda *labels: None)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<h2>Leaderboard</h2><p>{html.escape(leaderboard.INTRO)} Click a column to "
                 "sort.</p>")
    if board.empty:
        parts.append("<p>no defense records yet</p>")
    for dataset in sorted(set(board.ranked["dataset"]) | set(board.detectors["dataset"])):
        parts.append(f"<h3>{html.escape(str(dataset))}</h3>")
        for n, (caption, g) in enumerate(leaderboard.sections(board, dataset)):
            header, rows = leaderboard.ranked_cells(g)
            parts += [f"<p>{html.escape(caption)}</p>",
                      _table(header, [[(x, r[0] == "1" and i == 1,
                                        link(dataset, x.removesuffix(" †")) if i == 1 else None)
                                       for i, x in enumerate(r)]
                                      for r in rows], f"leaderboard-{dataset}" + (f"-{n}" if n else ""))]
        dg = board.detectors[board.detectors["dataset"] == dataset]
        if not dg.empty:
            header, rows = leaderboard.detector_cells(dg)
            parts += ["<p>Detectors</p>", _table(header, [[(x, False, link(dataset, x) if i == 0 else None)
                                                           for i, x in enumerate(r)] for r in rows],
                                                 f"detectors-{dataset}")]
    parts += [f"<p>{html.escape(n)}</p>" for n in board.notes]
    parts += tables_html(tables, link)
    for f in figures:
        if f.suffix == ".png":
            data = base64.b64encode(f.read_bytes()).decode()
            parts.append(f'<h3>{html.escape(f.stem)}</h3><img alt="{html.escape(f.stem)}" '
                         f'src="data:image/png;base64,{data}">')
    return _document(title, parts)


def tables_html(tables: list[Table], link: Link | None = None) -> list[str]:
    """Each table's blocks (one per metric, then the paper's values where it has them)."""
    link = link or (lambda *labels: None)
    parts: list[str] = []
    for t in tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2>")
        if t.empty:
            parts.append(f"<p>no records yet; fill with <code>{html.escape(t.command)}</code></p>")
            continue
        for m in metrics(t):
            header, rows = cells(t, m)
            parts += [f"<h4>{html.escape(m)}</h4>",
                      _table(header, _linked(t, header, rows, link), f"{t.name}-{m}")]
        for m in metrics(t):
            paper = paper_cells(t, m)
            if paper is not None:
                parts += [f"<h4>{html.escape(m)}: the paper's values (our difference)</h4>",
                          _table(*paper, f"{t.name}-{m}-paper")]
        parts += [f"<p>{html.escape(n)}</p>" for n in t.notes]
        parts.append(f"<p>filled by <code>{html.escape(t.command)}</code></p>")
    return parts


def tables_page(tables: list[Table], title: str, notes: list[str]) -> str:
    """A page of its own for a group of tables (the robustness view)."""
    return _document(title, [f"<h1>{html.escape(title)}</h1>",
                             *[f"<p>{html.escape(n)}</p>" for n in notes], *tables_html(tables)])


def _document(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{SORT_JS}</script></head><body>{''.join(parts)}</body></html>")
