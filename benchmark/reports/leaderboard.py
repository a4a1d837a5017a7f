"""The leaderboard: defenses ranked per dataset on the attacks they all share.

- Ranked: the defenses whose cells train a final model (``Defense.trains_final_model``: not the
  detectors, not isolation-only settings such as ``pipd.selective_epochs=0``), at their current
  versions. No Defense is the reference row, shown and never ranked.
- The score is mean CA minus mean ASR (percent points) over the attacks every ranked defense of
  the dataset has, at their defaults (variant rows, the clean baseline and attacks No Defense did
  not learn left out), per seed, then mean +- sd over seeds with a 95% interval (Student's t).
  Each row shows its coverage (the attacks it has of all the dataset's attacks); the shared set
  is named. The shared set is what the defaults have in common: a variant (a registered one such
  as ``pipd_median``, or a row with its own ``--set``) does not shrink it; one that lacks an
  attack of it is named in a note, not ranked. So does a default being re-run at a new version
  (it has some attacks at an older version only): it is ranked where it covers the set, and
  named in a note. Beside the score: DER, BackdoorBench's defense
  effectiveness rating [max(0, ASR drop) - max(0, CA drop) + 1] / 2 against No Defense on the
  same attack and seed (1 = perfect, 0.5 = no change), and the isolation F1 where the defense isolates.
- Neighbouring ranks are within noise where the 95% interval of their score difference, paired
  by seed (the same seed poisons the same samples and starts from the same weights), includes 0;
  the notes say so. Ranks from one seed are not tested against noise: a row with seeds is
  compared with the next row below it that has seeds, stepping over single-seed rows.
- Where some shared attacks have fewer seeds than others, a second ranking, the headline, runs
  on the shared attacks where every ranked defense not marked † has at least two seeds in
  common, over those common seeds (``Board.seeded``; e.g. BadNets and Blended at seeds 0-2 while
  SIG and Trojan have seed 0): its ranks carry intervals. A variant or a re-run with fewer of
  those seeds is named, not ranked there. The ranking over every shared attack follows it,
  with the seeds each row has.
- A preset may mark a defense whose own training does not converge at its scale (``caveats``
  in ``benchmark.config.PRESETS``): its row carries a dagger and the note links the diagnosis.
- Detectors have their own table: TPR, FPR, AUROC and F1 over the attacks they ran on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from benchmark.reports.records import LEARNED_ASR, not_learned

# Student's t, two-sided 95%, by degrees of freedom (normal beyond the table)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
STALE_MARK = r" \(v\d+\)"  # what records.row appends to an older method version's label
RANKED_COLUMNS = ["dataset", "rank", "defense", "score", "score_sd", "ci_low", "ci_high", "DER", "F1",
                  "CA", "ASR", "coverage", "seeds", "seed_scores"]
DETECTOR_COLUMNS = ["dataset", "detector", "TPR", "FPR", "AUROC", "F1", "attacks", "seeds"]


@dataclass
class Board:
    ranked: pd.DataFrame  # RANKED_COLUMNS; No Defense with rank "ref"
    detectors: pd.DataFrame  # DETECTOR_COLUMNS
    shared: dict[str, list[str]] = field(default_factory=dict)  # dataset -> the ranking's attacks
    notes: list[str] = field(default_factory=list)
    # the headline where seeds differ across the shared attacks: RANKED_COLUMNS, on the attacks
    # and seeds of ``seeded_on`` (dataset -> {"attacks": [...], "seeds": [...]})
    seeded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANKED_COLUMNS))
    seeded_on: dict[str, dict[str, list]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.ranked.empty and self.detectors.empty


def _t95(df: int) -> float:
    return next((v for k, v in sorted(T95.items()) if k >= df), 1.96)


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        return math.nan
    return 2 * precision * recall / (precision + recall)


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cells a ranking may read: ok, default attacks that No Defense learned, no analysis
    settings, no older method versions."""
    weak = not_learned(df)
    ok = df[(df["status"] == "ok") & df["fault_ratio"].isna() & (df["attack"] != "clean")
            & ~df["attack_label"].str.contains(" ") & df["current"].astype(bool)]
    learned = pd.Series([(d, a) not in weak for d, a in zip(ok["dataset"], ok["attack_label"],
                                                            strict=True)], index=ok.index, dtype=bool)
    return ok[learned].copy()


def marked_caveats(df: pd.DataFrame) -> dict[str, str]:
    """defense -> where the diagnosis of its non-convergence at the records' preset lives."""
    return {d: c for d, c in zip(df["defense"], df["caveat"], strict=True) if isinstance(c, str) and c}


def _der(rows: pd.DataFrame, base: pd.DataFrame) -> list[float]:
    out = []
    for r in rows.itertuples():
        key = (r.dataset, r.attack_label, r.seed)
        b = base.loc[key] if key in base.index else None
        out.append(math.nan if b is None else
                   (max(0.0, b.asr - r.asr) - max(0.0, b.ca - r.ca) + 1) / 2)
    return out


def _scored(dataset: str, label: str, g: pd.DataFrame, n_attacks: int, coverage: str) -> dict:
    """One row: the score over ``g``'s cells (all on the shared attacks), per seed then over
    seeds; seeds missing a shared attack do not count."""
    per_seed = g.groupby("seed").agg(ca=("ca", "mean"), asr=("asr", "mean"),
                                     n=("attack_label", "nunique"))
    per_seed = per_seed[per_seed["n"] == n_attacks]
    scores = (per_seed["ca"] - per_seed["asr"]) * 100
    n = len(scores)
    sd = float(scores.std(ddof=1)) if n > 1 else math.nan
    half = _t95(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    mean = float(scores.mean()) if n else math.nan
    g = g[g["seed"].isin(per_seed.index)] if n else g
    return {"dataset": dataset, "defense": label, "score": mean, "score_sd": sd,
            "ci_low": mean - half, "ci_high": mean + half, "DER": g["der"].mean(),
            "F1": g["f1"].mean(), "CA": 100 * g["ca"].mean(), "ASR": 100 * g["asr"].mean(),
            "coverage": coverage, "seeds": n, "seed_scores": scores.to_dict()}


def _ranking(dataset: str, by_label: dict[str, pd.DataFrame], attacks: list[str],
             n_all: int, caveats: dict[str, str], seeds: list[int] | None = None
             ) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows ranked by score, (label, why not ranked) of the rest) over ``attacks`` (and
    ``seeds``): lacking an attack, no seed with every attack, or fewer of ``seeds``."""
    rows, short = [], []
    for lab, g in by_label.items():
        covers = set(g["attack_label"])
        if not set(attacks) <= covers:
            short.append((lab, f"lacks {', '.join(sorted(set(attacks) - covers))}"))
            continue
        mark = " †" if g["defense"].iloc[0] in caveats else ""
        cells = g[g["attack_label"].isin(attacks)]
        if seeds is not None:
            cells = cells[cells["seed"].isin(seeds)]
        row = _scored(dataset, lab + mark, cells, len(attacks), f"{len(covers)}/{n_all}")
        if row["seeds"] == 0:  # it has every attack, but never all of them at one seed
            short.append((lab, "no seed with every attack"))
            continue
        if seeds is not None and not mark and row["seeds"] < len(seeds):
            # the headline compares rows at the same seeds; a † row is ranked as it is
            have = sorted(row["seed_scores"])
            short.append((lab, f"has every attack at seed(s) {', '.join(map(str, have))} of "
                                f"{', '.join(map(str, seeds))}"))
            continue
        rows.append(row)
    rows.sort(key=lambda r: -r["score"] if not math.isnan(r["score"]) else math.inf)
    for i, r in enumerate(rows, 1):
        r["rank"] = str(i)
    return rows, short


def _seeded_set(by_label: dict[str, pd.DataFrame], shared: list[str], caveats: dict[str, str],
                rerunning: set[str] = frozenset()) -> tuple[list[str], list[int]]:
    """(attacks, seeds) of the headline ranking: the shared attacks on which every default
    defense not marked † (nor ``rerunning``) has at least two seeds in common, and the seeds
    common to all of them; ([], []) where that is every shared attack at the seeds the full
    ranking has already, or fewer than two seeds."""
    judged = [g for lab, g in by_label.items() if not g["defense_overrides"].iloc[0]
              and not g["variant"].iloc[0] and g["defense"].iloc[0] not in caveats
              and lab not in rerunning]
    if not judged:
        return [], []
    common = {a: set.intersection(*(set(g.loc[g["attack_label"] == a, "seed"]) for g in judged))
              for a in shared}
    attacks = [a for a in shared if len(common[a]) >= 2]
    seeds = sorted(set.intersection(*(common[a] for a in attacks))) if attacks else []
    if len(seeds) < 2 or (attacks == shared and all(common[a] == set(seeds) for a in shared)):
        return [], []
    return attacks, [int(x) for x in seeds]


def leaderboard(df: pd.DataFrame) -> Board:
    """The ranking, No Defense's reference row and the detectors' table, per dataset."""
    if df.empty:
        return Board(pd.DataFrame(columns=RANKED_COLUMNS), pd.DataFrame(columns=DETECTOR_COLUMNS))
    ok = _cells(df)
    ok["f1"] = [_f1(p, t) for p, t in zip(ok["precision"], ok["tpr"], strict=True)]
    caveats = marked_caveats(df)
    rerun = _rerun_in_progress(df, ok)
    ranked_rows, detector_rows, shared_of, notes = [], [], {}, []
    seeded_rows: list[dict] = []
    seeded_on: dict[str, dict[str, list]] = {}
    for dataset, d in ok.groupby("dataset"):
        all_attacks = sorted(d["attack_label"].unique())
        d = d.assign(der=_der(d, d[d["defense"] == "no_defense"]
                              .set_index(["dataset", "attack_label", "seed"])))
        base = d[d["defense"] == "no_defense"]
        trained = d[d["trains_model"].astype(bool) & ~d["detector"].astype(bool)]
        contenders = trained[trained["defense"] != "no_defense"]
        by_label = contenders.groupby("defense_label")
        covers = {lab: set(g["attack_label"]) for lab, g in by_label}
        rerunning = {lab for lab in covers if (dataset, lab) in rerun}
        defaults = [covers[lab] for lab, g in by_label if not g["defense_overrides"].iloc[0]
                    and not g["variant"].iloc[0] and lab not in rerunning]
        shared = sorted(set.intersection(*(defaults or list(covers.values())))) if covers else []
        shared_of[dataset] = shared
        groups = dict(tuple(by_label))
        rows, short = _ranking(dataset, groups, shared, len(all_attacks), caveats)
        base_cov = f"{base['attack_label'].nunique()}/{len(all_attacks)}"
        if not base.empty:
            ref = _scored(dataset, "no_defense", base[base["attack_label"].isin(shared)]
                          if shared else base, len(shared) or base["attack_label"].nunique(),
                          base_cov)
            ranked_rows.append({**ref, "rank": "ref"})
        ranked_rows += rows
        attacks, seeds = _seeded_set(groups, shared, caveats, rerunning)
        if attacks:
            top, top_short = _ranking(dataset, groups, attacks, len(all_attacks), caveats, seeds)
            where = f"{dataset} on {', '.join(attacks)} at seeds {', '.join(map(str, seeds))}"
            ref_cells = base[base["attack_label"].isin(attacks) & base["seed"].isin(seeds)]
            if not ref_cells.empty:
                seeded_rows.append({**_scored(dataset, "no_defense", ref_cells, len(attacks),
                                              base_cov), "rank": "ref"})
            seeded_rows += top
            seeded_on[dataset] = {"attacks": attacks, "seeds": seeds}
            notes += _noise_notes(where + " (headline)", top)
            fewer = [f"{lab} ({why})" for lab, why in top_short  # lacking rows: noted below
                     if not why.startswith("lacks ")]
            if fewer:
                notes.append(f"{where} (headline): not ranked, without every attack at each of "
                             f"these seeds: {'; '.join(fewer)}")
            where_all = f"{dataset} on every shared attack"
        else:
            where_all = dataset
        notes += _noise_notes(where_all, rows)
        short = [f"{lab} ({why})" for lab, why in short if lab not in rerunning]  # noted below
        if short:
            notes.append(f"{dataset}: not ranked, a variant without every attack of the shared "
                         f"set: {'; '.join(short)}")
        for lab in sorted(rerunning):
            notes.append(f"{dataset}: {lab} is being re-run at its current version: it has "
                         f"{', '.join(rerun[(dataset, lab)])} at an older version only, so it "
                         "does not shrink the shared set and is ranked only where it covers it")
        if covers and not shared:
            notes.append(f"{dataset}: no attack is shared by every ranked defense: no ranking")
        for lab, g in d[d["detector"].astype(bool)].groupby("defense_label"):
            detector_rows.append({"dataset": dataset, "detector": lab, "TPR": 100 * g["tpr"].mean(),
                                  "FPR": 100 * g["fpr"].mean(), "AUROC": 100 * g["auroc"].mean(),
                                  "F1": g["f1"].mean(), "attacks": f"{g['attack_label'].nunique()}/"
                                  f"{len(all_attacks)}", "seeds": g["seed"].nunique()})
    for name, where in sorted(caveats.items()):
        if any(name == r["defense"].split(" ")[0] for r in ranked_rows):
            notes.append(f"† {name}: its own training does not converge at this scale; its row "
                         f"is a scale artefact, not the method's merit (diagnosis: {where})")
    stale = _older_versions_only(df)
    if stale:
        notes.append("not ranked, records of an older method version only (re-run them at the "
                      "current version): " + ", ".join(stale))
    weak = sorted((d, a) for d, a in not_learned(df) if " " not in a)
    if weak:
        notes.append(f"left out, not learned by No Defense (ASR below {100 * LEARNED_ASR:.0f}%): "
                     + ", ".join(f"{a} ({d})" for d, a in weak))
    return Board(pd.DataFrame(ranked_rows, columns=RANKED_COLUMNS),
                 pd.DataFrame(detector_rows, columns=DETECTOR_COLUMNS), shared_of, notes,
                 pd.DataFrame(seeded_rows, columns=RANKED_COLUMNS), seeded_on)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the score difference a - b over their common seeds with its 95%
    interval (Student's t on the paired differences); NaN bounds below two seeds."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    n = len(diffs)
    if n < 2:
        return (sum(diffs) / n if n else math.nan), math.nan, math.nan, n
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _rerun_in_progress(df: pd.DataFrame, ok: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(dataset, defense label) -> the attacks its records have at an older method version and
    not yet at the current one: a re-run of a changed method under way. Such a row neither
    shrinks the shared set nor decides the headline's seeds; it is ranked where it covers."""
    older = df[(df["status"] == "ok") & ~df["current"].astype(bool) & (df["attack"] != "clean")
               & ~df["attack_label"].str.contains(" ")]
    learned = set(zip(ok["dataset"], ok["attack_label"], strict=True))
    older = older.assign(defense_label=older["defense_label"].str.replace(
        STALE_MARK, "", regex=True))
    out: dict[tuple[str, str], list[str]] = {}
    for (dataset, lab), g in older.groupby(["dataset", "defense_label"]):
        now = set(ok.loc[(ok["dataset"] == dataset) & (ok["defense_label"] == lab), "attack_label"])
        missing = sorted(a for a in set(g["attack_label"]) - now if (dataset, a) in learned)
        if now and missing:
            out[(dataset, lab)] = missing
    return out


def _older_versions_only(df: pd.DataFrame) -> list[str]:
    """Defenses that train a model and have ok records, none at the current versions."""
    ok = df[(df["status"] == "ok") & df["trains_model"].astype(bool) & ~df["detector"].astype(bool)]
    current = set(ok.loc[ok["current"].astype(bool), "defense"])
    return sorted(set(ok["defense"]) - current)


def _noise_notes(where: str, rows: list[dict]) -> list[str]:
    """Each row with seeds against the next row below it that has seeds (a single-seed row
    between them, such as a scale artefact's, is stepped over and named as untested)."""
    notes, held = [], []
    seeded = [r for r in rows if len(r["seed_scores"]) >= 2]
    single = [r["rank"] for r in rows if len(r["seed_scores"]) < 2]
    for a, b in zip(seeded, seeded[1:], strict=False):
        mean, low, high, n = paired_difference(a["seed_scores"], b["seed_scores"])
        pair = f"{a['rank']} ({a['defense']}) and {b['rank']} ({b['defense']})"
        if n < 2:
            single += [a["rank"], b["rank"]]
        elif low <= 0:
            notes.append(f"{where}: ranks {pair} are within noise (difference {mean:.2f}, 95% "
                         f"interval {low:.2f} to {high:.2f} over {n} paired seeds)")
        else:
            held.append(f"{a['rank']} over {b['rank']} by {mean:.2f} ({low:.2f} to {high:.2f})")
    if held:
        notes.append(f"{where}: held over paired seeds (difference, 95% interval): "
                     + "; ".join(held))
    if single:
        ranks = sorted(set(single), key=int)
        which = (f"ranks {', '.join(ranks)} rest on a single seed (or none paired with another "
                 "row), so their order is" if len(ranks) > 1 else f"rank {ranks[0]} rests on a "
                 "single seed (or none paired with another row), so its place is")
        notes.append(f"{where}: {which} not tested against noise")
    return notes


def _fmt(x: float, d: int = 2) -> str:
    return "" if pd.isna(x) else f"{x:.{d}f}"


def ranked_cells(g: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "defense", "score", "95% CI", "DER", "F1", "CA", "ASR", "coverage", "seeds"]
    rows = [[r.rank, r.defense, _fmt(r.score) + (f" ± {_fmt(r.score_sd)}" if r.seeds > 1 else ""),
             f"{_fmt(r.ci_low)} to {_fmt(r.ci_high)}" if r.seeds > 1 else "",
             _fmt(r.DER, 3), _fmt(r.F1, 3), _fmt(r.CA), _fmt(r.ASR), r.coverage, str(r.seeds)]
            for r in g.itertuples()]
    return header, rows


def detector_cells(g: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["detector", "TPR", "FPR", "AUROC", "F1", "attacks", "seeds"]
    rows = [[r.detector, _fmt(r.TPR), _fmt(r.FPR), _fmt(r.AUROC), _fmt(r.F1, 3), r.attacks,
             str(r.seeds)] for r in g.itertuples()]
    return header, rows


INTRO = ("Score: mean CA - mean ASR (percent points) over the attacks every default defense has "
         "(named per dataset; a variant lacking one, or a defense being re-run at a new version, "
         "is named below and ranked only where it has them), mean ± sd over "
         "seeds with a 95% interval; No Defense is the reference row, not ranked; "
         "only cells that train a final model are ranked; detectors are listed apart. Where some "
         "of those attacks have fewer seeds, the headline ranks on the attacks where every "
         "defense not marked † has the same seeds (at least two), and the ranking over every "
         "shared attack follows it. Neighbouring ranks are within noise where the 95% interval "
         "of their difference, paired by seed, includes 0 (single-seed rows stepped over).")


def sections(board: Board, dataset: str) -> list[tuple[str, pd.DataFrame]]:
    """(caption, rows) of the dataset's rankings, the headline first."""
    out = []
    on = board.seeded_on.get(dataset)
    g = board.ranked[board.ranked["dataset"] == dataset]
    shared = ", ".join(board.shared.get(dataset, [])) or "no shared attack"
    if on:
        seeded = board.seeded[board.seeded["dataset"] == dataset]
        out.append((f"Headline: ranked on {', '.join(on['attacks'])} at seeds "
                    f"{', '.join(map(str, on['seeds']))} (the shared attacks where every defense "
                    "not marked † has these seeds)", seeded))
        if not g.empty:
            out.append((f"Over every shared attack: {shared} (the seeds each row has on all of "
                        "them)", g))
    elif not g.empty:
        out.append((f"Ranked on: {shared}", g))
    return out


def markdown(board: Board) -> str:
    if board.empty:
        return "## Leaderboard\n\nno defense records yet\n"
    lines = ["## Leaderboard", "", INTRO, ""]
    datasets = sorted(set(board.ranked["dataset"]) | set(board.detectors["dataset"]))
    for dataset in datasets:
        lines += [f"### {dataset}", ""]
        for caption, g in sections(board, dataset):
            lines += [caption, ""]
            lines += _md_table(*ranked_cells(g))
        dg = board.detectors[board.detectors["dataset"] == dataset]
        if not dg.empty:
            lines += ["Detectors (isolation only; means over the attacks each ran on):", ""]
            lines += _md_table(*detector_cells(dg))
    lines += [f"- {n}" for n in board.notes]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]
