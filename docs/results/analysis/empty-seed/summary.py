"""Prints this folder's table from its lga_probe records: python summary.py (from this folder)."""
import glob
import json
from pathlib import Path

rows = []
for f in sorted(glob.glob(str(Path(__file__).parent / "*.json"))):
    r = json.load(open(f))
    i, iso, m = r["defense_info"], r["isolation"], r["metrics"]
    low = {k: 100 * v["tpr"] for k, v in iso["masks"].items() if k.startswith("lowest")}
    cover = iso.get("cover_isolated_rate")
    rows.append((r["config"]["attack"], 100 * m["asr"], 100 * m["tpr"],
                 "-" if cover is None else f"{100 * cover:.2f}",
                 " / ".join(f"{v:.2f}" for v in i["rank_fraction_poisoned_1_10_50_90"]),
                 f"{i['loss_quantiles_poisoned_1_10_50_90'][2]:.3f}",
                 f"{i['loss_quantiles_rest_1_10_50_90'][2]:.3f}",
                 f"{low['lowest_5pct']:.1f} / {low['lowest_20pct']:.1f}"))
print("| attack | LGA model ASR | poisoned in P_p (TPR) | cover in P_p | poisoned rank fraction, "
      "quantiles 1/10/50/90% | median loss, poisoned | median loss, rest | poisoned in lowest 5% / 20% |")
print("|---|---|---|---|---|---|---|---|")
for a, asr, tpr, cov, ranks, lp, lr, low in sorted(rows, key=lambda x: x[2], reverse=True):
    print(f"| {a} | {asr:.2f} | {tpr:.2f} | {cov} | {ranks} | {lp} | {lr} | {low} |")
