"""``python run_benchmark.py report --results DIR --out DIR``: the paper's tables (CSV, Markdown,
LaTeX), figures (PNG, PDF), the leaderboard (Markdown and one self-contained HTML page), the
missing cells with the commands that fill them, and optionally ``--compare NEW --baseline pipd``.
It reads records only: nothing trains."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from benchmark import sources
from benchmark.cliutil import split_csv
from benchmark.reports import (
    cellpages,
    compare,
    figures,
    html,
    leaderboard,
    records,
    render,
    robustness,
    tables,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``report`` command's options."""
    p.add_argument("--results", action="append", default=None, metavar="DIR",
                   help="a results folder (or a folder of record files); repeatable "
                        "(default results/)")
    p.add_argument("--out", required=True, help="folder for the report")
    p.add_argument("--grid", default=None,
                   help="preset named in the fill-in commands (default: the records' most common)")
    p.add_argument("--curves", default=None, metavar="ID,ID",
                   help="also draw the per-epoch curves of these cell ids")
    p.add_argument("--compare", default=None, metavar="NEW",
                   help="compare this defense (its table column name) with --baseline")
    p.add_argument("--baseline", default="pipd", help="the defense --compare compares with")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a plugin defining defenses the records name")


def missing_cells(df: pd.DataFrame, grid: str) -> list[str]:
    """For every dataset, the cells at default settings that the tables and the leaderboard lack,
    grouped into the grid commands that would fill them (a record of an older method version
    fills nothing); failed cells too. The tables want every
    attack x defense of the records at the first seed; the leaderboard wants, on each attack,
    every ranked defense (a default that trains a final model, not marked †) and No Defense at
    every seed that one of them has there, so that its ranks carry intervals."""
    lines: list[str] = []
    if df.empty:
        return lines
    plain = df[~df["attack_label"].str.contains(" ")
               & (df["defense_label"] == df["defense_label"].str.split("[").str[0])]
    caveats = leaderboard.marked_caveats(df)
    for dataset, g in plain.groupby("dataset"):
        ok = g[(g["status"] == "ok") & g["current"].astype(bool)]
        done = set(zip(ok["attack"], ok["defense"], ok["seed"], strict=True))
        first = int(g["seed"].min())
        want = {(a, d, first) for a in g["attack"].unique() for d in g["defense"].unique()}
        judged = g[g["trains_model"].astype(bool) & ~g["detector"].astype(bool) & ~g["variant"].astype(bool)
                   & ~g["defense"].isin(list(caveats))]
        ranked = set(judged["defense"]) | {"no_defense"}
        for a, cells in ok[ok["defense"].isin(list(ranked))].groupby("attack"):
            want |= {(a, d, int(s)) for d in ranked for s in cells["seed"].unique()}
        by_defense: dict[tuple[str, int], list[str]] = {}
        for a, d, s in sorted(want - done):
            by_defense.setdefault((d, s), []).append(a)
        model = g["model"].iloc[0]
        axes = f" --models {model}" if dataset != g["dataset_name"].iloc[0] else ""
        for (d, s), attacks in sorted(by_defense.items()):
            lines.append(f"{dataset}: {d} seed {s} on {', '.join(attacks)}: "
                         f"`python run_benchmark.py --grid {grid}{axes} --attacks {','.join(attacks)} "
                         f"--defenses {d} --seeds {s}`")
    for r in df[df["status"] != "ok"].itertuples():
        lines.append(f"{r.dataset}: {r.attack_label} / {r.defense_label} seed {r.seed} FAILED: "
                     f"{r.error} (a re-run of its grid retries it)")
    return lines


def write_report(folders: list[Path], out: Path, grid: str | None = None, *,
                 curves: list[str] | None = None) -> tuple[Path, dict]:
    """Tables, figures, leaderboard and ``index.html`` of the records in ``folders`` under
    ``out``: (path of index.html, what was built: frame, board, missing, written files)."""
    recs = records.read_records(folders)
    df = records.frame(recs)
    grid = grid or (Counter(df["preset"]).most_common(1)[0][0] if not df.empty else "quick")
    written: list[Path] = []
    built = [f(df, grid) for f in (tables.table1, tables.table2, tables.table3, tables.table4)]
    built += tables.studies(df, grid)
    robust = robustness.robustness(df, grid)
    built += robust
    for t in built:
        written += render.write(t, out / "tables")
    figs = (figures.fig1_isolation(df, out / "figures") + figures.fig4_fpr_vs_rounds(df, out / "figures")
            + figures.fig5_selective_vs_unlearning(df, out / "figures"))
    if curves:
        figs += figures.cell_curves(df, out / "figures", curves)
    written += figs
    board = leaderboard.leaderboard(df)
    (out / "leaderboard.md").write_text(leaderboard.markdown(board))
    (out / "headline.md").write_text(tables.headline(df))
    (out / "robustness.md").write_text("# Robustness\n\n" + robustness.markdown(robust))
    (out / "robustness.html").write_text(html.tables_page(
        robust, "Robustness: the attacks built to beat isolation", [robustness.INTRO]))
    (out / "records.md").write_text("# Records\n\n" + tables.inventory(df))
    missing = missing_cells(df, grid)
    notes = [f"{len(df)} record(s) from {', '.join(map(str, folders))}; "
             f"{int((df['status'] == 'ok').sum()) if not df.empty else 0} ok",
             "the robustness view (the attacks built to beat isolation) is also a page of its own: "
             "robustness.html"]
    changed = sources.changed_note(x for r in recs for x in sources.stale(r))
    if changed:
        notes.append(changed)
    anchors = cellpages.write(recs, df, out / "cells")

    def link(*labels: object) -> str | None:
        name = cellpages.anchor(*labels)
        return f"cells/{cellpages.INDEX}#{name}" if name in anchors else None

    (out / "index.html").write_text(html.page(board, built, figs, "backdoor-defense-bench report", notes,
                                              link))
    (out / "missing.md").write_text("# Missing cells\n\n" + ("\n".join(f"- {m}" for m in missing)
                                                              or "none") + "\n")
    written += [out / "leaderboard.md", out / "headline.md", out / "robustness.md", out / "robustness.html",
                out / "records.md",
                out / "index.html", out / "missing.md"]
    return out / "index.html", {"frame": df, "board": board, "missing": missing,
                                "written": written, "changed_sources": changed}


def main(args: argparse.Namespace) -> int:
    """The ``report`` command, on its parsed options (``add_arguments``)."""
    from benchmark.plugins import load_plugin

    t0 = time.perf_counter()
    for plugin in args.plugin:
        load_plugin(plugin)
    folders = [Path(r) for r in (args.results or ["results"])]
    out = Path(args.out)
    index, built = write_report(folders, out, args.grid,
                                curves=split_csv(args.curves) or [] if args.curves else None)
    written = built["written"]
    if args.compare:
        cmp = compare.compare(built["frame"], args.compare, args.baseline)
        text = compare.markdown(cmp, args.compare, args.baseline)
        (out / "compare.md").write_text(text)
        written.append(out / "compare.md")
        print(text)
    print(leaderboard.markdown(built["board"]))
    if built["changed_sources"]:
        print(built["changed_sources"])
    print(f"{len(built['missing'])} missing or failed cell group(s): {out / 'missing.md'}")
    print(f"report: {len(written)} files under {out} ({time.perf_counter() - t0:.1f} s); "
          f"open {index}")
    return 0
