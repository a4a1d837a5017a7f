"""The paper's Tables 1-4 from the records: mean (+- std over seeds), the paper's values and the
differences, rendered as CSV, Markdown and LaTeX (booktabs).

Tables 1 and 2 hold the default cells only (each preset's own settings, current method
versions, the suite's defenses and a user's own, No Defense first and PIPD last, as the paper
orders them); every other record lands in exactly one study table: Table 3 (the poisoned seed's
fault ratio), Table 4 (the number of rounds T), or a table per setting a group of records varies
(older method versions, a registered variant of a defense, an attack's option, a training
option, a defense's option).

Bold marks, in every row, the best value of each metric across the methods (the highest CA /
TPR, the lowest ASR / FPR), as the paper prints its tables. A cell no record fills stays empty,
never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from benchmark.config import label
from benchmark.reports import paper
from benchmark.reports.records import LEARNED_ASR, not_learned

BETTER = {"CA": max, "ASR": min, "TPR": max, "FPR": min}
# column order of the main tables (the paper's); other defenses go before PIPD, alphabetically
ORDER = ["no_defense", "abl", "dbd", "NONE", "asd", "scale_up", "dbalfa", "spectral", "ac", "spectre",
         "scan", "strip"]
LAST = "pipd"
COMMANDS = {
    "study": "the records' own settings (--set / --sweep, see each row's label)",
    "table1": "python run_benchmark.py --grid {grid} --defenses no_defense,abl,dbd,none,asd,pipd",
    "table2": ("python run_benchmark.py --grid {grid} --defenses abl,dbd,none,asd,pipd,scale_up,dbalfa,"
               "spectral,ac,spectre,scan,strip"),
    "table3": ("python run_benchmark.py --grid {grid} --attacks badnets,blended,dynamic,trojan,"
               "adaptive_patch --defenses pipd,pipd_median --set defense.selective_epochs=0 "
               "--sweep 'defense.fault_ratio=[0.2,0.4,0.6,0.8]'"),
    "table4": ("python run_benchmark.py --grid {grid} --attacks badnets,blended,trojan,dynamic "
               "--defenses pipd --set attack.rate=0.2 --sweep 'defense.rounds=[1,2,3,4,5]'"),
}


@dataclass
class Table:
    """Rows of index values and metric columns: ``mean``/``std`` from the records, ``paper``
    the paper's value where it reports the cell. Column names are "<method> <METRIC>"."""

    name: str
    title: str
    index: list[str]
    mean: pd.DataFrame
    std: pd.DataFrame
    paper: pd.DataFrame
    seeds: pd.DataFrame  # how many seeds each cell averages
    command: str = ""
    notes: list[str] = field(default_factory=list)
    marks: dict = field(default_factory=dict)  # row key -> a remark printed beside its label
    # bold marks the best value of each metric in a row (methods are columns) or in a column
    # (methods are rows: the robustness view)
    bold_by: str = "row"
    # column (without its metric) -> what its count counts, shown beside each value ("7 attacks")
    counted: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.mean.empty

    def long(self) -> pd.DataFrame:
        """CSV form: one row per (row, column) with mean, std, seeds, paper, difference."""
        if self.empty:
            return pd.DataFrame(columns=[*self.index, "column", "mean", "std", "seeds", "paper", "diff"])
        out = []
        for key in self.mean.index:
            for col in self.mean.columns:
                m = self.mean.at[key, col]
                if pd.isna(m):
                    continue
                p = self.paper.at[key, col] if col in self.paper else math.nan
                out.append({**dict(zip(self.index, key if isinstance(key, tuple) else (key,), strict=True)),
                            "column": col, "mean": m, "std": self.std.at[key, col],
                            "seeds": int(self.seeds.at[key, col]), "paper": p, "diff": m - p})
        return pd.DataFrame(out)


def column_order(method: str) -> tuple:
    base = method.split("[")[0].split(" ")[0]
    if base == LAST:
        return (len(ORDER) + 1, method)
    return (ORDER.index(base), method) if base in ORDER else (len(ORDER), method)


def metric_of(col: str) -> str:
    """The metric of a "<method> <METRIC>" column."""
    return col.rsplit(" ", 1)[-1]


def build(df: pd.DataFrame, name: str, title: str, index: list[str], column: str,
          metrics: dict[str, str], paper_of=None, grid: str = "quick", command: str | None = None
          ) -> Table:
    """Aggregate ``df`` (records frame, ok rows) into a Table: ``metrics`` maps frame columns
    (``ca``) to display names (``CA``), values in percent; ``paper_of(index_values, column
    value, metric)`` gives the paper's number or NaN; ``command`` what fills the table (default:
    ``COMMANDS[name]``)."""
    cols = list(metrics)
    command = command if command is not None else COMMANDS[name].format(grid=grid)
    if df.empty:
        blank = pd.DataFrame()
        return Table(name, title, index, blank, blank, blank, blank, command)
    g = df.groupby([*index, column], dropna=False)[cols]
    mean, std, count = g.mean() * 100, g.std(ddof=0) * 100, g.count()
    wide = {}
    for stat, frame in (("mean", mean), ("std", std), ("seeds", count)):
        w = frame.unstack(column)  # columns: (metric, method)
        methods = sorted({c for _, c in w.columns}, key=column_order)
        w.columns = [f"{c} {metrics[m]}" for m, c in w.columns]
        wide[stat] = w[[f"{c} {metrics[m]}" for c in methods for m in cols
                        if f"{c} {metrics[m]}" in w.columns]]
    kept = [c for c in wide["mean"].columns if wide["mean"][c].notna().any()]  # e.g. P_p of ABL
    wide = {k: w[kept] for k, w in wide.items()}
    paper_vals = pd.DataFrame(math.nan, index=wide["mean"].index, columns=wide["mean"].columns)
    if paper_of is not None:
        for key in paper_vals.index:
            for col in paper_vals.columns:
                method, metric = col.rsplit(" ", 1)
                paper_vals.at[key, col] = paper_of(key if isinstance(key, tuple) else (key,), method, metric)
    return Table(name, title, index, wide["mean"], wide["std"].fillna(0.0), paper_vals,
                 wide["seeds"].fillna(0), command)


def _paper_defense(method: str) -> str | None:
    """The paper's name for a column that is a defense at its defaults (no overrides)."""
    return {**paper.DEFENSES, "NONE": "NONE"}.get(method)


def main_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The default cells of the suite's defenses and a user's own (not a registered variant of
    another)."""
    if df.empty:
        return df
    return df[(df["status"] == "ok") & df["default"].astype(bool) & ~df["variant"].astype(bool)]


def _preset_notes(rows: pd.DataFrame) -> list[str]:
    """What a preset sets per attack (its ``attack_train``), said once under the table."""
    notes = sorted({f"{a}: {label({f'train.{k}': v for k, v in train.items()})}"
                    for a, train in zip(rows["attack"], rows["preset_attack_train"], strict=True)
                    if train})
    return [f"the preset's per-attack training: {'; '.join(notes)}"] if notes else []


def _rows(df: pd.DataFrame, defaults_only: bool) -> pd.DataFrame:
    if defaults_only or df.empty:
        return main_rows(df)
    return df[(df["status"] == "ok") & df["fault_ratio"].isna()]


def table1(df: pd.DataFrame, grid: str = "quick", defaults_only: bool = True) -> Table:
    """CA and ASR per (dataset, attack) x defense at the defaults (every ok cell but the
    fault-ratio analyses with ``defaults_only=False``: a grid's closing summary); detectors left
    out."""
    ok = _rows(df, defaults_only)
    ok = ok[~ok["detector"].astype(bool)] if not ok.empty else ok

    def paper_of(key, method, metric):  # noqa: ANN001, ANN202
        dataset, attack_label = key
        d, a = _paper_defense(method), paper.paper_attack(dataset, attack_label)
        if d is None or a is None:
            return math.nan
        v = paper.lookup("table1_defense", dataset=paper.DATASETS.get(dataset), attack=a, defense=d)
        return float(v.get(metric.lower(), math.nan)) if v else math.nan

    t = build(ok, "table1", "Table 1: clean accuracy (CA) and attack success rate (ASR), %",
              ["dataset", "attack_label"], "defense_label", {"ca": "CA", "asr": "ASR"}, paper_of, grid)
    t.notes += _preset_notes(ok) if not ok.empty else []
    return with_averages(mark_not_learned(t, _rows(df, defaults_only)))


def table2(df: pd.DataFrame, grid: str = "quick", defaults_only: bool = True) -> Table:
    """Isolation TPR and FPR per (dataset, attack) x isolating method (defenses and detectors) at
    the defaults (see table1 for ``defaults_only``), with PIPD's poisoned-seed precision."""
    ok = _rows(df, defaults_only)
    ok = ok[ok["tpr"].notna()] if not ok.empty else ok

    def paper_of(key, method, metric):  # noqa: ANN001, ANN202
        dataset, attack_label = key
        d, a = _paper_defense(method), paper.paper_attack(dataset, attack_label)
        if d is None or a is None:
            return math.nan
        v = paper.lookup("table2_isolation", dataset=paper.DATASETS.get(dataset), attack=a, method=d)
        return float(v.get(metric.lower(), math.nan)) if v else math.nan

    t = build(ok, "table2", "Table 2: isolation TPR and FPR (and PIPD's poisoned-seed precision), %",
              ["dataset", "attack_label"], "defense_label",
              {"tpr": "TPR", "fpr": "FPR", "pp_precision": "P_p-precision"}, paper_of, grid)
    t.notes += _preset_notes(ok) if not ok.empty else []
    return with_averages(mark_not_learned(t, _rows(df, defaults_only)))


def mark_not_learned(t: Table, df: pd.DataFrame) -> Table:
    """Mark the rows of attacks No Defense did not learn (ASR below ``LEARNED_ASR``)."""
    if t.empty:
        return t
    weak = not_learned(df)
    for key in t.mean.index:
        if key in weak:
            t.marks[key] = f"not learned: {100 * weak[key]:.2f}"
    if t.marks:
        t.notes.append(f"(not learned: X): No Defense's ASR on that attack is X%, below "
                       f"{100 * LEARNED_ASR:.0f}%, so a defense's low ASR there says nothing; such "
                       "rows stay out of the average rows and the leaderboard's score")
    return t


def _without(own: dict, *keys: str) -> str:
    rest = {k: v for k, v in own.items() if k not in keys}
    return label(rest)


def table3(df: pd.DataFrame, grid: str = "quick") -> Table:
    """PIPD's TPR / FPR against the share of benign samples in its poisoned seed."""
    rows = df[(df["status"] == "ok") & df["fault_ratio"].notna()].copy() if not df.empty else df
    if not rows.empty:
        rows["fault"] = (rows["fault_ratio"].astype(float) * 100).round().astype(int)
        rows["method"] = [d + (f"[{x}]" if (x := _without(o, "fault_ratio", "selective_epochs")) else "")
                          for d, o in zip(rows["defense"], rows["defense_overrides"], strict=True)]

    def paper_of(key, method, metric):  # noqa: ANN001, ANN202
        _, attack_label, fault = key
        if method != "pipd":
            return math.nan
        v = paper.lookup("table3_fault_ratio", attack=paper.paper_attack("cifar10", attack_label),
                         fault_ratio=fault)
        return float(v.get(metric.lower(), math.nan)) if v else math.nan

    return build(rows, "table3", "Table 3: PIPD isolation against the poisoned seed's fault ratio "
                 "(% benign samples in P_p), %", ["dataset", "attack_label", "fault"], "method",
                 {"pp_precision": "P_p-precision", "tpr": "TPR", "fpr": "FPR"}, paper_of, grid)


def table4_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The records of the T sweep: PIPD cells that set ``rounds`` and train selectively."""
    rows = df[(df["status"] == "ok") & df["rounds"].notna() & df["fault_ratio"].isna()
              & (df["training"] == "selective")].copy() if not df.empty else df
    if rows.empty:
        return rows
    keep = pd.Series([o.get("selective_epochs", 1) != 0 and "rounds" in o
                      for o in rows["defense_overrides"]], index=rows.index, dtype=bool)
    return rows[keep].copy()


def table4(df: pd.DataFrame, grid: str = "quick") -> Table:
    """CA / ASR (and isolation) against the number of progressive rounds T."""
    rows = table4_rows(df)
    if not rows.empty:
        rows["T"] = rows["rounds"].astype(int)
        rows["method"] = [d + (f"[{x}]" if (x := _without(o, "rounds")) else "")
                          for d, o in zip(rows["defense"], rows["defense_overrides"], strict=True)]

    def paper_of(key, method, metric):  # noqa: ANN001, ANN202
        _, attack_label, t = key
        if not method.startswith("pipd") or "[" in method or "rate=0.2" not in attack_label \
                or metric not in ("CA", "ASR"):
            return math.nan
        v = paper.lookup("table4_iterations", T=t, attack=paper.paper_attack("cifar10",
                                                                              attack_label.split()[0]))
        return float(v.get(metric.lower(), math.nan)) if v else math.nan

    return build(rows, "table4", "Table 4: PIPD against the number of progressive rounds T, %",
                 ["dataset", "attack_label", "T"], "method",
                 {"ca": "CA", "asr": "ASR", "tpr": "TPR", "fpr": "FPR"}, paper_of, grid)


def _study(row) -> str:  # noqa: ANN001 - a frame row
    """What a non-default record varies: older versions, a registered variant, or its keys."""
    if not row.current:
        return "older method versions"
    family = row.lineage[0]
    keys = sorted({("attack." + k.split(".", 1)[1]) if k.split(".", 1)[0] == row.attack else k
                   for k in row.attack_overrides}
                  | {f"{family}.{k}" for k in row.defense_overrides})
    if keys:
        return "varies " + ", ".join(keys)
    return f"variants of {family}" if row.variant else "other settings"


def studies(df: pd.DataFrame, grid: str = "quick") -> list[Table]:
    """One table per study for every ok record outside Tables 1-4's own rows, titled by what it
    varies; each record is in exactly one."""
    if df.empty:
        return []
    ok = df[df["status"] == "ok"]
    used = set(main_rows(df).index) | set(ok[ok["fault_ratio"].notna()].index) \
        | set(table4_rows(df).index)
    rest = ok[~ok.index.isin(used)].copy()
    if rest.empty:
        return []
    rest["study"] = [_study(r) for r in rest.itertuples()]
    out = []
    for i, (study, rows) in enumerate(sorted(rest.groupby("study"), key=lambda kv: kv[0]), 1):
        metrics = {k: v for k, v in {"ca": "CA", "asr": "ASR", "tpr": "TPR", "fpr": "FPR"}.items()
                   if rows[k].notna().any()}
        slug = "".join(ch if ch.isalnum() else "_" for ch in study)[:40].strip("_")
        t = build(rows, "study", f"Study {i}: {study}, %", ["dataset", "attack_label"],
                  "defense_label", metrics, None, grid)
        t.name = f"study{i:02d}_{slug}"
        out.append(t)
    return out


def with_averages(t: Table) -> Table:
    """Append one average row per dataset (over its attacks, the clean baseline left out)."""
    if t.empty:
        return t
    rows_mean, rows_std, rows_paper, rows_n = [], [], [], []
    for dataset in dict.fromkeys(k[0] for k in t.mean.index):
        # attacks at their defaults only: a variant row (an override) would count an attack twice
        keys = [k for k in t.mean.index if k[0] == dataset and k[1] != "clean" and " " not in k[1]
                and k not in t.marks]
        if len(keys) < 2:
            continue
        rows_mean.append(t.mean.loc[keys].mean().rename((dataset, "average")))
        rows_std.append(pd.Series(0.0, index=t.mean.columns, name=(dataset, "average")))
        # the paper's average over the same attacks the method has here
        ours, theirs = t.mean.loc[keys], t.paper.loc[keys]
        rows_paper.append(pd.Series({c: theirs[c][ours[c].notna()].mean(skipna=False)
                                     if ours[c].notna().any() else math.nan for c in t.mean.columns},
                                    name=(dataset, "average")))
        rows_n.append(t.mean.loc[keys].notna().sum().rename((dataset, "average")))
    if not rows_mean:
        return t
    t.mean = pd.concat([t.mean, pd.DataFrame(rows_mean)])
    t.std = pd.concat([t.std, pd.DataFrame(rows_std)])
    t.paper = pd.concat([t.paper, pd.DataFrame(rows_paper)])
    t.seeds = pd.concat([t.seeds, pd.DataFrame(rows_n)])
    t.notes.append("average rows: the mean over the dataset's attacks at their defaults (variant "
                   "rows, attacks not learned and the clean baseline left out); a method missing "
                   "an attack averages what it has, and its count says how many")
    return t


def _default_means(df: pd.DataFrame, older: bool = False
                   ) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """The default cells' metrics in percent, averaged over seeds, by (attack_label,
    defense_label); the seeds behind each; the defenses in the tables' column order. ``older``:
    also the records of older method versions, each version its own column ("dbr (v1)")."""
    if df.empty:
        rows = df
    else:
        keep = df["default"].astype(bool)
        if older:  # an older defense version on a default attack at its current version
            keep = keep | (~df["current"].astype(bool) & ~df["attack_label"].str.contains(" "))
        rows = df[(df["status"] == "ok") & keep]
    keys = ["attack_label", "defense_label"]
    mean = rows.groupby(keys)[["ca", "asr", "tpr", "fpr", "auroc"]].mean() * 100
    seeds = rows.groupby(keys)["seed"].nunique()
    return mean, seeds, sorted(rows["defense_label"].unique(), key=column_order)


def _markdown_grid(mean: pd.DataFrame, seeds: pd.Series,
                   columns: list[tuple[str, str, list[str], str]]) -> str:
    """One row per attack; ``columns`` are (heading, defense, metrics, format) and a cell is the
    format filled with the defense's metrics (empty where the first is missing)."""
    if mean.empty:
        return "no default cells\n"
    lines = ["| " + " | ".join(["attack"] + [c[0] for c in columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for attack in sorted(mean.index.get_level_values(0).unique()):
        cells = [attack]
        for _, defense, metrics, fmt in columns:
            key = (attack, defense)
            ok = key in mean.index and not pd.isna(mean.at[key, metrics[0]])
            text = fmt.format(*(mean.at[key, m] for m in metrics)) if ok else ""
            cells.append(text.replace("nan", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    low, high = int(seeds.min()), int(seeds.max())
    note = "one seed" if high == 1 else f"mean of {low if low == high else f'{low}-{high}'} seeds"
    return "\n".join(lines) + f"\n\n({note} per cell; %)\n"


def headline(df: pd.DataFrame, older: bool = False) -> str:
    """One compact Markdown table of the default cells, registered variants included (the
    demo's pipd beside pipd_median): per attack, each defense's CA / ASR and, where it isolates,
    TPR / FPR, in percent, averaged over seeds (the README's first table). ``older``: older
    method versions as columns of their own beside the current ones."""
    mean, seeds, defenses = _default_means(df, older)
    columns = []
    for d in defenses:
        columns.append((f"{d} CA / ASR", d, ["ca", "asr"], "{:.2f} / {:.2f}"))
        if mean.xs(d, level=1)["tpr"].notna().any():
            columns.append((f"{d} TPR / FPR", d, ["tpr", "fpr"], "{:.2f} / {:.2f}"))
    return _markdown_grid(mean, seeds, columns)


def isolation(df: pd.DataFrame, older: bool = False) -> str:
    """Per attack, each isolating method's TPR / FPR at its own rule and its AUROC, in percent,
    averaged over seeds (default cells; defenses that isolate nothing are left out; ``older``
    as in ``headline``)."""
    mean, seeds, defenses = _default_means(df, older)
    columns = [(f"{d} TPR / FPR (AUROC)", d, ["tpr", "fpr", "auroc"], "{:.2f} / {:.2f} ({:.2f})")
               for d in defenses if mean.xs(d, level=1)["tpr"].notna().any()]
    return _markdown_grid(mean, seeds, columns)


def inventory(df: pd.DataFrame) -> str:
    """Every record as one Markdown row (the evidence index of a records folder): what ran, its
    metrics in percent (AUROC: of the method's isolation score), the poisoned seed's precision
    (P_p) where PIPD ran, its seconds and the
    CPU kind that made it, and the file it lives in (``<id>.json``)."""
    if df.empty:
        return "no records\n"
    rows = df.sort_values(["dataset", "attack_label", "defense_label", "seed", "id"],
                          key=lambda c: c.map(column_order) if c.name == "defense_label" else c)

    def pct(x: float) -> str:
        return "" if pd.isna(x) else f"{x * 100:.2f}"

    head = ["attack", "defense", "seed", "CA", "ASR", "TPR", "FPR", "AUROC", "P_p", "s", "CPU", "record"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.itertuples():
        status = "" if r.status == "ok" else f" FAILED: {r.error}"
        lines.append("| " + " | ".join([
            r.attack_label + ("" if r.dataset == "cifar10" else f" ({r.dataset})"),
            r.defense_label + status, str(r.seed), pct(r.ca), pct(r.asr), pct(r.tpr), pct(r.fpr),
            pct(r.auroc), pct(r.pp_precision), "" if pd.isna(r.total_s) else f"{r.total_s:.0f}", r.cpu,
            f"{r.id}.json"]) + " |")
    return "\n".join(lines) + "\n"


ISOLATION_TARGET = (0.95, 0.02)  # issue 24's bar for an isolation: TPR >= 95%, FPR <= 2%


def seed_quantiles(df: pd.DataFrame) -> str:
    """PIPD's isolation by seed statistic (``seed_quantile``, 1 = Eq. 4's max): one row per
    (preset, attack, fault ratio, seed), since a statistic is judged on every seed's own
    poisoned seed P_p; one column per quantile with TPR / FPR, **x** where it misses
    ``ISOLATION_TARGET``; a last row saying whether a quantile meets it on every row: "no" where
    it misses one, how many rows it was not run on where it misses none but lacks some. Current
    method versions only (an older PIPD's isolation differs)."""
    rows = (df[(df["status"] == "ok") & df["seed_quantile"].notna() & df["current"].astype(bool)]
            if not df.empty else df)
    if rows.empty:
        return "no PIPD records\n"
    rows = rows.assign(fault=rows["fault_ratio"].map(lambda f: "-" if pd.isna(f) else f"{f:.1f}"))
    keys = ["preset", "attack_label", "fault", "seed"]
    # several records of one cell (re-runs on other hosts) are averaged
    mean = rows.groupby([*keys, "seed_quantile"])[["tpr", "fpr", "pp_precision"]].mean()
    quantiles = sorted(rows["seed_quantile"].unique())
    tpr_min, fpr_max = ISOLATION_TARGET
    missed, absent = dict.fromkeys(quantiles, 0), dict.fromkeys(quantiles, 0)
    lines = ["| preset | attack | fault ratio | seed | P_p precision | "
             + " | ".join(f"q = {q:g}" + (" (max)" if q == 1 else "") for q in quantiles) + " |",
             "|" + "---|" * (5 + len(quantiles))]
    for key in mean.index.droplevel("seed_quantile").unique().sort_values():
        cells, pp = [], set()
        for q in quantiles:
            if (*key, q) not in mean.index:
                absent[q] += 1
                cells.append("")
                continue
            m = mean.loc[(*key, q)]
            ok = m["tpr"] >= tpr_min and m["fpr"] <= fpr_max
            missed[q] += not ok
            pp.add(f"{100 * m['pp_precision']:.1f}")
            cells.append(f"{100 * m['tpr']:.2f} / {100 * m['fpr']:.2f}" + ("" if ok else " **x**"))
        lines.append("| " + " | ".join([*map(str, key), " / ".join(sorted(pp)), *cells]) + " |")
    verdicts = ["no" if missed[q] else f"not run on {absent[q]}" if absent[q] else "yes" for q in quantiles]
    lines.append(f"| meets TPR >= {100 * tpr_min:.0f} / FPR <= {100 * fpr_max:.0f} on every row | | | | | "
                 + " | ".join(verdicts) + " |")
    return "\n".join(lines) + "\n\n(TPR / FPR, %; P_p: the poisoned seed's precision)\n"
