"""One HTML page per cell (``cells/<id>.html``) and their index (``cells/index.html``): what a
record holds beyond the tables' numbers. A page shows the cell's settings (what differs from its
preset, then the whole resolved config), its metrics, every phase's per-epoch curves (CA, ASR,
training loss) as a figure, its isolation per round, its timings and the machine that made it.
Self-contained like the report's index: figures embedded, no network needed."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reports.html import CSS as REPORT_CSS
from benchmark.reports.render import dotted

CSS = REPORT_CSS + "table.kv td:last-child{text-align:left}"

INDEX = "index.html"


def anchor(*parts: object) -> str:
    """The id of a group of cells in the index: ``dataset``, ``attack`` and ``defense`` labels."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "--".join(str(p) for p in parts)).strip("-")


def _rows(values: dict[str, Any]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_text(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table class='kv'><tbody>{body}</tbody></table>"


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def _percent(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, int | float) and v == v else ""


def curves_png(curves: dict[str, list[dict]]) -> bytes | None:
    """Every phase's per-epoch CA and ASR (left) and training loss (right), epochs numbered
    across phases in the order they ran; None where no phase has a per-epoch point."""
    phases = [(name, pts) for name, pts in curves.items() if isinstance(pts, list) and pts]
    if not phases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.4))
    start = 0
    for name, pts in phases:
        x = [start + i + 1 for i in range(len(pts))]
        for key, style in (("ca", "-"), ("asr", "--")):
            ys = [100 * p[key] if key in p else float("nan") for p in pts]
            if any(y == y for y in ys):
                acc.plot(x, ys, style, marker=".", label=f"{name} {key.upper()}")
        ys = [p.get("train_loss", float("nan")) for p in pts]
        if any(y == y for y in ys):
            loss.plot(x, ys, marker=".", label=name)
        start += len(pts)
    acc.set(xlabel="epoch (all phases)", ylabel="%", ylim=(0, 100), title="CA (solid) / ASR (dashed)")
    loss.set(xlabel="epoch (all phases)", title="training loss")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()


def page(rec: dict[str, Any], row: pd.Series | None) -> str:
    """The HTML page of one record (``row``: its row of the report's frame, for its labels)."""
    c = rec.get("config", {})
    title = (f"{row['attack_label']} / {row['defense_label']} seed {row['seed']}" if row is not None
             else f"{c.get('attack')} / {c.get('defense')} seed {c.get('seed')}")
    facts = rec.get("facts") or {}
    parts = [f"<p><a href='{INDEX}'>all cells</a> · <a href='../index.html'>report</a></p>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>cell <code>{html.escape(str(rec.get('id')))}</code>, {html.escape(rec.get('status', ''))}"
             f", preset {html.escape(str(c.get('preset')))}, finished "
             f"{html.escape(str(rec.get('finished_at', '')))}</p>"]
    if rec.get("status") != "ok":
        parts.append(f"<pre>{html.escape(str(rec.get('error', '')))}</pre>")
    m = rec.get("metrics") or {}
    parts += ["<h2>Metrics (%)</h2>", _rows({k.upper(): _percent(v) for k, v in m.items()})]
    overrides = {**dotted(facts.get("attack_overrides") or {}, "attack."),
                 **dotted(facts.get("defense_overrides") or {}, "defense.")}
    parts += ["<h2>Settings</h2>", "<p>Off the preset's defaults: "
              + (html.escape(", ".join(f"{k}={_text(v)}" for k, v in overrides.items())) or "none") + "</p>",
              "<details><summary>the whole resolved config</summary>", _rows(dotted(c)), "</details>"]
    png = curves_png(rec.get("curves") or {})
    if png is not None:
        data = base64.b64encode(png).decode()
        parts += ["<h2>Curves</h2>", f'<img alt="curves" src="data:image/png;base64,{data}">']
    iso = rec.get("isolation") or {}
    steps = [("final", iso["isolated"])] if iso.get("isolated") else []
    steps += [(k, v) for k, v in (iso.get("masks") or {}).items() if isinstance(v, dict)]
    if steps:
        header = "<tr>" + "".join(f"<th>{h}</th>" for h in ("set", "TPR", "FPR", "precision",
                                                             "isolated", "poisoned")) + "</tr>"
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_percent(v.get('tpr'))}</td>"
                       f"<td>{_percent(v.get('fpr'))}</td><td>{_percent(v.get('precision'))}</td>"
                       f"<td>{v.get('n_isolated', '')}</td><td>{v.get('n_poisoned', '')}</td></tr>"
                       for k, v in steps)
        parts += ["<h2>Isolation (per round where the method has rounds)</h2>",
                  f"<table><thead>{header}</thead><tbody>{body}</tbody></table>"]
    for key, heading in (("defense_info", "What the defense reported"),
                         ("attack_info", "What the attack reported")):
        if rec.get(key):
            parts += [f"<h2>{heading}</h2>", _rows(dotted(rec[key]))]
    parts += ["<h2>Timings (s)</h2>", _rows(dotted(rec.get("timings") or {})),
              "<h2>Machine</h2>", _rows(dotted(rec.get("hardware") or {})),
              "<h2>Versions</h2>", _rows(dotted(rec.get("versions") or {}))]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def index(df: pd.DataFrame) -> str:
    """Every cell by dataset, defense and attack, each group under the id ``anchor`` gives it
    (the report's table cells and leaderboard rows link there)."""
    parts = ["<p><a href='../index.html'>report</a></p>", "<h1>Cells</h1>"]
    ids: set[str] = set()
    for (dataset, defense), g in df.sort_values(["dataset", "defense_label", "attack_label", "seed"]) \
            .groupby(["dataset", "defense_label"], sort=False):
        group = anchor(dataset, defense)
        ids.add(group)
        parts.append(f"<h2 id='{group}'>{html.escape(f'{dataset}: {defense}')}</h2>")
        rows = []
        for r in g.itertuples():
            cell = anchor(dataset, r.attack_label, defense)
            first = cell not in ids
            ids.add(cell)
            row_id = f" id='{cell}'" if first else ""
            rows.append(f"<tr{row_id}><td><a href='{html.escape(str(r.id))}.html'>"
                        f"{html.escape(str(r.attack_label))}</a></td>"
                        f"<td>{r.seed}</td><td>{html.escape(str(r.status))}</td>"
                        + "".join(f"<td>{_percent(getattr(r, k))}</td>" for k in ("ca", "asr", "tpr", "fpr"))
                        + "</tr>")
        parts.append("<table><thead><tr><th>attack</th><th>seed</th><th>status</th><th>CA</th>"
                     "<th>ASR</th><th>TPR</th><th>FPR</th></tr></thead><tbody>" + "".join(rows)
                     + "</tbody></table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Cells</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def write(recs: list[dict[str, Any]], df: pd.DataFrame, out: Path) -> set[str]:
    """``out/<id>.html`` for every record and ``out/index.html``; returns the anchors the index
    holds (what the report may link to)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {r["id"]: r for _, r in df.iterrows()} if not df.empty else {}
    for rec in recs:
        (out / f"{rec['id']}.html").write_text(page(rec, rows.get(rec["id"])))
    (out / INDEX).write_text(index(df))
    return set(re.findall(r"id='([^']+)'", (out / INDEX).read_text()))
