"""Print the PIPD tables quoted in the issue notes from committed records, beside the paper.

    python docs/results/pipd_tables.py docs/results/quick

A stopgap until the report command: reads every record under the given folders; for each
(attack, PIPD variant) the isolation row (TPR, FPR, P_p precision), CA/ASR against No Defense,
the fault-ratio rows (Table 3) and the T rows (Table 4, 20% poison rate).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"
NAMES = {"badnets": "BadNets", "blended": "Blended", "sig": "SIG", "trojan": "Trojan", "cl": "CL",
         "dynamic": "Dynamic", "refool": "Refool", "adaptive_patch": "A-Patch", "wanet": "WaNet"}


def paper(name: str) -> list[dict]:
    path = PAPER / name
    return list(csv.DictReader(path.open())) if path.exists() else []


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main(folders: list[str]) -> None:
    by_id = {p.stem: json.loads(p.read_text()) for f in folders for p in sorted(Path(f).glob("*.json"))}
    recs = [r for r in by_id.values() if r["status"] == "ok"]
    t2 = {(r["attack"], r["method"]): r for r in paper("table2_isolation.csv")
          if r["dataset"] == "CIFAR-10"}
    t1 = {(r["attack"], r["defense"]): r for r in paper("table1_defense.csv")
          if r["dataset"] == "CIFAR-10"}

    def key(r: dict) -> tuple:
        c = r["config"]
        return (c["attack"], c["attack_params"].get("pattern", ""), c["attack_params"]["rate"])

    nd = {key(r): r for r in recs if r["config"]["defense"] == "no_defense"
          and r["config"]["train"].get("precision", "auto") == "auto"}
    print("| attack | defense | P_p precision | TPR | FPR | paper TPR/FPR | CA | ND CA | ASR "
          "| paper CA/ASR | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        c, dp = r["config"], r["config"]["defense_params"]
        if not c["defense"].startswith("pipd") or dp.get("fault_ratio") is not None \
                or dp["selective_epochs"] == 0 or c["attack_params"]["rate"] != 0.05:
            continue
        name = NAMES.get(c["attack"], c["attack"]) + (f" ({c['attack_params']['pattern']})"
                                                      if c["attack"] == "badnets" else "")
        p2, p1 = t2.get((NAMES.get(c["attack"]), "PIPD"), {}), t1.get((NAMES.get(c["attack"]), "PIPD"), {})
        m, seed = r["metrics"], r["isolation"]["masks"]["seed_poison"]
        ref = nd.get(key(r))
        print(f"| {name} | {c['defense']} | {pct(seed['precision'])} | {pct(m['tpr'])} | {pct(m['fpr'])} "
              f"| {p2.get('tpr', '-')} / {p2.get('fpr', '-')} | {pct(m['ca'])} "
              f"| {pct(ref['metrics']['ca']) if ref else '-'} | {pct(m['asr'])} "
              f"| {p1.get('ca', '-')} / {p1.get('asr', '-')} | {r['timings']['total_s']:.0f} |")

    fault = [r for r in recs if r["config"]["defense_params"].get("fault_ratio") is not None]
    if fault:
        t3 = {(r["attack"], r["fault_ratio"]): r for r in paper("table3_fault_ratio.csv")}
        print("\n| attack | defense | fault ratio | P_p precision | TPR | FPR | paper TPR/FPR |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(fault, key=lambda r: (r["config"]["attack"], r["config"]["defense"],
                                              r["config"]["defense_params"]["fault_ratio"])):
            c, m = r["config"], r["metrics"]
            ratio = c["defense_params"]["fault_ratio"]
            p3 = t3.get((NAMES.get(c["attack"]), str(round(100 * ratio))), {})
            print(f"| {NAMES.get(c['attack'])} | {c['defense']} | {100 * ratio:.0f}% "
                  f"| {pct(r['isolation']['masks']['seed_poison']['precision'])} | {pct(m['tpr'])} "
                  f"| {pct(m['fpr'])} | {p3.get('tpr', '-')} / {p3.get('fpr', '-')} |")

    sweep = [r for r in recs if r["config"]["attack_params"]["rate"] == 0.2
             and r["config"]["defense"].startswith("pipd")
             and r["config"]["defense_params"]["selective_epochs"] > 0]
    if sweep:
        t4 = {(r["attack"], r["T"]): r for r in paper("table4_iterations.csv")}
        print("\n| attack (20%) | defense | T | TPR | FPR | CA | ASR | paper CA/ASR "
              "| FPR of rounds 1..T |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sorted(sweep, key=lambda r: (r["config"]["attack"], r["config"]["defense"],
                                              r["config"]["defense_params"]["rounds"])):
            c, m, masks = r["config"], r["metrics"], r["isolation"]["masks"]
            t = c["defense_params"]["rounds"]
            p4 = t4.get((NAMES.get(c["attack"]), str(t)), {})
            rounds = " ".join(pct(masks[f"round_{i}"]["fpr"]) for i in range(1, t + 1))
            print(f"| {NAMES.get(c['attack'])} | {c['defense']} | {t} | {pct(m['tpr'])} | {pct(m['fpr'])} "
                  f"| {pct(m['ca'])} | {pct(m['asr'])} | {p4.get('ca', '-')} / {p4.get('asr', '-')} "
                  f"| {rounds} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["docs/results/quick"])
