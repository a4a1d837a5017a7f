"""The leaderboard: defenses ranked per dataset over every attack they were run on.

Score: mean CA minus mean ASR (percent) over the dataset's attacks at their defaults (variant
rows, the clean baseline and attacks No Defense did not learn left out), per seed, then mean
+- std over seeds. Beside it: DER,
BackdoorBench's defense effectiveness rating [max(0, ASR drop) - max(0, CA drop) + 1] / 2
against No Defense on the same attack and seed (1 = perfect, 0.5 = no change), and the isolation
F1 where the defense isolates. A defense run on fewer attacks than the most complete one ranks
below every complete one, and says how many it has.
"""

from __future__ import annotations

import math

import pandas as pd

from benchmark.reports.records import LEARNED_ASR, not_learned


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        return math.nan
    return 2 * precision * recall / (precision + recall)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, defense variant): rank, score, DER, F1, CA, ASR, attacks, seeds."""
    cols = ["dataset", "rank", "defense", "score", "score_std", "DER", "F1", "CA", "ASR",
            "attacks", "seeds"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    ok = df[(df["status"] == "ok") & ~df["detector"].astype(bool) & df["fault_ratio"].isna()
            & (df["attack"] != "clean") & ~df["attack_label"].str.contains(" ")].copy()
    weak = not_learned(df)
    ok = ok[[(d, a) not in weak for d, a in zip(ok["dataset"], ok["attack_label"], strict=True)]]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    base = ok[ok["defense"] == "no_defense"].set_index(["dataset", "attack_label", "seed"])
    ok["der"] = [
        (max(0.0, b.asr - r.asr) - max(0.0, b.ca - r.ca) + 1) / 2
        if (b := base.loc[(r.dataset, r.attack_label, r.seed)] if (r.dataset, r.attack_label, r.seed)
            in base.index else None) is not None else math.nan
        for r in ok.itertuples()]
    ok["f1"] = [_f1(p, t) for p, t in zip(ok["precision"], ok["tpr"], strict=True)]
    out = []
    for (dataset, defense), g in ok.groupby(["dataset", "defense_label"]):
        per_seed = g.groupby("seed").agg(ca=("ca", "mean"), asr=("asr", "mean"))
        scores = (per_seed["ca"] - per_seed["asr"]) * 100
        out.append({"dataset": dataset, "defense": defense, "score": scores.mean(),
                    "score_std": scores.std(ddof=0) if len(scores) > 1 else 0.0,
                    "DER": g["der"].mean(), "F1": g["f1"].mean(), "CA": 100 * g["ca"].mean(),
                    "ASR": 100 * g["asr"].mean(), "attacks": g["attack_label"].nunique(),
                    "seeds": g["seed"].nunique()})
    board = pd.DataFrame(out)
    most = board.groupby("dataset")["attacks"].transform("max")
    board["complete"] = board["attacks"] == most
    board = board.sort_values(["dataset", "complete", "score"], ascending=[True, False, False])
    board["rank"] = board.groupby("dataset").cumcount() + 1
    return board[cols].reset_index(drop=True)


def markdown(board: pd.DataFrame) -> str:
    if board.empty:
        return "## Leaderboard\n\nno defense records yet\n"
    lines = ["## Leaderboard", "", "Score: mean CA - mean ASR over the attacks (percent points); "
             "DER and isolation F1 beside it; a defense with fewer attacks ranks below the "
             f"complete ones; attacks No Defense did not learn (ASR below {100 * LEARNED_ASR:.0f}%) "
             "are left out.", ""]
    for dataset, g in board.groupby("dataset"):
        lines += [f"### {dataset}", "", "| rank | defense | score | DER | F1 | CA | ASR | attacks | seeds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            f = lambda x, d=2: "" if pd.isna(x) else f"{x:.{d}f}"  # noqa: E731
            score = f(r.score) + (f" ± {f(r.score_std)}" if r.seeds > 1 else "")
            lines.append(f"| {r.rank} | {r.defense} | {score} | {f(r.DER, 3)} | {f(r.F1, 3)} | "
                         f"{f(r.CA)} | {f(r.ASR)} | {r.attacks} | {r.seeds} |")
        lines.append("")
    return "\n".join(lines)
