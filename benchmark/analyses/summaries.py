"""The analyses' tables, generated from their records into their READMEs
(``<!-- generated: KIND FOLDER -->``, ``benchmark.reports.blocks``). Each renderer takes the
block's folders and reads the raw records: the probes' fields (``defense_info``, named masks) are
not the report frame's columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _records(folder: Path) -> list[dict[str, Any]]:
    root = folder / "records" if (folder / "records").is_dir() else folder
    return [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]


def cross_cpu(folders: list[Path]) -> str:
    """One cell made on two CPU kinds: the record of the same id in each folder, its end point
    and its training curve at a few epochs."""
    ids = set.intersection(*({r["id"] for r in _records(f)} for f in folders))
    (cid,) = sorted(ids)[:1]
    runs = [(f, next(r for r in _records(f) if r["id"] == cid)) for f in folders]
    lines = [f"cell `{cid}`", "", "| folder | CPU | native bf16 | CA | ASR | finished |",
             "|---|---|---|---|---|---|"]
    for f, r in runs:
        hw, m = r.get("hardware") or {}, r["metrics"]
        lines.append(f"| {f.name} | {hw.get('cpu_model', '-')} | {hw.get('cpu_native_bf16', '-')} | "
                     f"{100 * m['ca']:.2f} | {100 * m['asr']:.2f} | {r['finished_at'][:10]} |")
    lines += ["", "| epoch | train loss, " + " / ".join(f.name for f, _ in runs) + " | CA on the curve "
              "subset, % |", "|---|---|---|"]
    curves = [r["curves"]["train"] for _, r in runs]
    for points in zip(*curves, strict=True):
        if points[0]["epoch"] in (1, 2, 5, 10, 15, 20):
            lines.append(f"| {points[0]['epoch']} | " + " / ".join(f"{p['train_loss']:.4f}" for p in points)
                         + " | " + " / ".join(f"{100 * p['ca']:.1f}" for p in points) + " |")
    return "\n".join(lines) + "\n"


def detector_operating_points(folders: list[Path]) -> str:
    """SCALE-UP and DBALFA per attack at seed 0: the rule's TPR / FPR, AUROC and the best
    threshold in hindsight beside the paper's Table 2 point."""
    from benchmark.reports import paper
    from benchmark.reports.records import frame, not_learned, read_records

    recs = {r["id"]: r for r in read_records(folders)}
    df = frame(list(recs.values()))
    df = df[(df["status"] == "ok") & df["current"] & df["default"] & (df["seed"] == 0)]
    weak = not_learned(df)
    lines = ["| detector | attack | No Defense ASR | suite TPR / FPR | AUROC | best threshold TPR / FPR "
             "| paper TPR / FPR |", "|---|---|---|---|---|---|---|"]
    for det in ("scale_up", "dbalfa"):
        for r in df[df["defense"] == det].sort_values("attack").itertuples():
            best = recs[r.id]["isolation"]["best_threshold"]
            nd = df[(df["defense"] == "no_defense") & (df["attack_label"] == r.attack_label)]["asr"]
            p = paper.lookup("table2_isolation", dataset="CIFAR-10",
                             attack=paper.ATTACKS.get(r.attack), method=paper.DEFENSES[det])
            mark = " (not learned)" if ("cifar10", r.attack_label) in weak else ""
            lines.append(f"| {paper.DEFENSES[det]} | {r.attack_label}{mark} | {100 * nd.mean():.2f} | "
                         f"{100 * r.tpr:.2f} / {100 * r.fpr:.2f} | {100 * r.auroc:.2f} "
                         f"| {100 * best['tpr']:.2f} / {100 * best['fpr']:.2f} "
                         f"| {p.get('tpr', '-')} / {p.get('fpr', '-')} |")
    return "\n".join(lines) + "\n"


def lga_ranks(folders: list[Path]) -> str:
    """``lga_probe``'s records: where the poisoned samples rank by loss under the LGA model."""
    rows = []
    for f in folders:
        for r in _records(f):
            i, iso, m = r["defense_info"], r["isolation"], r["metrics"]
            low = {k: 100 * v["tpr"] for k, v in iso["masks"].items() if k.startswith("lowest")}
            cover = iso.get("cover_isolated_rate")
            rows.append((r["config"]["attack"], 100 * m["asr"], 100 * m["tpr"],
                         "-" if cover is None else f"{100 * cover:.2f}",
                         " / ".join(f"{v:.2f}" for v in i["rank_fraction_poisoned_1_10_50_90"]),
                         f"{i['loss_quantiles_poisoned_1_10_50_90'][2]:.3f}",
                         f"{i['loss_quantiles_rest_1_10_50_90'][2]:.3f}",
                         f"{low['lowest_5pct']:.1f} / {low['lowest_20pct']:.1f}"))
    lines = ["| attack | LGA model ASR | poisoned in P_p (TPR) | cover in P_p | poisoned rank fraction, "
             "quantiles 1/10/50/90% | median loss, poisoned | median loss, rest | poisoned in lowest "
             "5% / 20% |", "|---|---|---|---|---|---|---|---|"]
    for a, asr, tpr, cov, ranks, lp, lr, low in sorted(rows, key=lambda x: x[2], reverse=True):
        lines.append(f"| {a} | {asr:.2f} | {tpr:.2f} | {cov} | {ranks} | {lp} | {lr} | {low} |")
    return "\n".join(lines) + "\n"


def spectre_classes(folders: list[Path]) -> str:
    """``spectre_probe``'s records: every class's QUE op, chosen k and flags."""
    lines = []
    for rec in (r for f in folders for r in _records(f) if r["config"]["defense"] == "spectre_probe"):
        info, masks = rec["defense_info"], rec["isolation"]["masks"]
        lines += [f"{rec['config']['attack']}, record `{rec['id']}`:", "",
                  "| class | QUE op | chosen k | poisoned in class | its flags: TPR / FPR |",
                  "|---|---|---|---|---|"]
        for c in sorted(info["class_op"], key=int):
            m = masks[f"class_{c}"]
            lines.append(f"| {c} | {info['class_op'][c]:.2f} | {info['class_k'][c]} | "
                         f"{info['class_poisoned'][c]} | {m['tpr'] * 100:.2f} / {m['fpr'] * 100:.2f} |")
    return "\n".join(lines) + "\n"


def spectre_k(folders: list[Path]) -> str:
    """``spectre_k_probe``'s records: one class's filter at every k of the sweep."""
    lines = []
    for rec in (r for f in folders for r in _records(f) if r["config"]["defense"] == "spectre_k_probe"):
        info = rec["defense_info"]
        lines += [f"{rec['config']['attack']}, record `{rec['id']}`: class {info['probe_class']}, "
                  f"{info['n_class']} samples, {info['n_poisoned']} poisoned, eps {info['eps']}; "
                  f"feature spread poisoned {info['spread_poisoned']:.2f}, clean "
                  f"{info['spread_clean']:.2f}, squared distance of the group means "
                  f"{info['mean_distance']:.2f}", "",
                  "| k | QUE op | poisoned among its 1.5 eps flags | median QUE score: poisoned / clean |",
                  "|---|---|---|---|"]
        for k, v in sorted(info["per_k"].items(), key=lambda kv: int(kv[0])):
            mark = " (chosen)" if int(k) == info["chosen_k"] else ""
            lines.append(f"| {k}{mark} | {v['op']:.2f} | {v['flagged_poisoned']} of {v['flagged']} "
                         f"| {v['score_poisoned_median']:.2f} / {v['score_clean_median']:.2f} |")
    return "\n".join(lines) + "\n"


def dev_run_pairs(folders: list[Path]) -> str:
    """Development runs over datasets x models: each pair's defenses, their status and seconds,
    and where the images came from (a pair a defense refuses has no record: named as such)."""
    from benchmark.cell import refusal
    from benchmark.spec import CellSpec

    recs = [r for f in folders for r in _records(f)]
    defenses = sorted({r["config"]["defense"] for r in recs}, key=lambda d: (d != "no_defense", d))
    cells = {(r["config"]["dataset"], r["config"]["model"], r["config"]["defense"]): r for r in recs}
    pairs = sorted({k[:2] for k in cells})
    lines = ["| dataset | model | " + " | ".join(defenses) + " | images |",
             "|---|---|" + "---|" * (len(defenses) + 1)]
    for dataset, model in pairs:
        twin = next(x for k, x in cells.items() if k[:2] == (dataset, model))
        row = []
        for d in defenses:
            r = cells.get((dataset, model, d))
            if r is not None:
                row.append(f"{r['status']}, {r['timings'].get('total_s', 0):.0f} s")
                continue
            why = refusal(CellSpec.from_config({**twin["config"], "defense": d, "defense_params": {}}))
            row.append("refused" if why else "not run")
        source = twin["data_source"].split(":")[0]
        lines.append(f"| {dataset} | {model} | " + " | ".join(row) + f" | {source} |")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[list[Path]], str]] = {
    "dev_run_pairs": dev_run_pairs,
    "cross_cpu": cross_cpu, "detector_operating_points": detector_operating_points,
    "lga_ranks": lga_ranks, "spectre_classes": spectre_classes, "spectre_k": spectre_k,
}
