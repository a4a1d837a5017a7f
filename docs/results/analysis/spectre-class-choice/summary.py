"""Print the README's tables from the probes' records: per class (Trojan), per k (Blended)."""
import json
from pathlib import Path

here = Path(__file__).parent
rec = json.loads((here / "1adcc2878b3dd30d.json").read_text())
info, masks = rec["defense_info"], rec["isolation"]["masks"]
print("| class | QUE op | chosen k | poisoned in class | its flags: TPR / FPR |")
print("|---|---|---|---|---|")
for c in sorted(info["class_op"], key=int):
    m = masks[f"class_{c}"]
    print(f"| {c} | {info['class_op'][c]:.2f} | {info['class_k'][c]} | {info['class_poisoned'][c]} "
          f"| {m['tpr'] * 100:.2f} / {m['fpr'] * 100:.2f} |")

rec = json.loads((here / "8c3bd24dffe268c4.json").read_text())
info = rec["defense_info"]
print(f"\nclass {info['probe_class']}: {info['n_class']} samples, {info['n_poisoned']} poisoned, "
      f"eps {info['eps']}; feature spread poisoned {info['spread_poisoned']:.2f}, clean "
      f"{info['spread_clean']:.2f}, squared distance of the group means {info['mean_distance']:.2f}\n")
print("| k | QUE op | poisoned among its 1.5 eps flags | median QUE score: poisoned / clean |")
print("|---|---|---|---|")
for k, v in sorted(info["per_k"].items(), key=lambda kv: int(kv[0])):
    mark = " (chosen)" if int(k) == info["chosen_k"] else ""
    print(f"| {k}{mark} | {v['op']:.2f} | {v['flagged_poisoned']} of {v['flagged']} "
          f"| {v['score_poisoned_median']:.2f} / {v['score_clean_median']:.2f} |")
