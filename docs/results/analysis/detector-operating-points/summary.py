"""SCALE-UP and DBALFA at `quick` against the paper's Table 2, attack by attack, from the committed
records (docs/results/quick): the rule's TPR / FPR, the ROC's AUROC and its best threshold in
hindsight beside the paper's operating point. Run from the repository root:
python docs/results/analysis/detector-operating-points/summary.py"""
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(root))
from benchmark.reports import paper  # noqa: E402
from benchmark.reports.records import frame, not_learned, read_records  # noqa: E402

recs = {r["id"]: r for r in read_records([root / "docs/results/quick"])}
df = frame(list(recs.values()))
df = df[(df["status"] == "ok") & df["current"] & df["default"] & (df["seed"] == 0)]
weak = not_learned(df)
print("| detector | attack | No Defense ASR | suite TPR / FPR | AUROC | best threshold TPR / FPR "
      "| paper TPR / FPR |")
print("|---|---|---|---|---|---|---|")
for det in ("scale_up", "dbalfa"):
    rows = df[df["defense"] == det].sort_values("attack")
    for r in rows.itertuples():
        best = recs[r.id]["isolation"]["best_threshold"]
        nd = df[(df["defense"] == "no_defense") & (df["attack_label"] == r.attack_label)]["asr"]
        p = paper.lookup("table2_isolation", dataset="CIFAR-10",
                         attack=paper.ATTACKS.get(r.attack), method=paper.DEFENSES[det])
        mark = " (not learned)" if ("cifar10", r.attack_label) in weak else ""
        print(f"| {paper.DEFENSES[det]} | {r.attack_label}{mark} | "
              f"{100 * nd.mean():.2f} | {100 * r.tpr:.2f} / {100 * r.fpr:.2f} | {100 * r.auroc:.2f} "
              f"| {100 * best['tpr']:.2f} / {100 * best['fpr']:.2f} "
              f"| {p.get('tpr', '-')} / {p.get('fpr', '-')} |")
