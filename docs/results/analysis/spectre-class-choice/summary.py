"""Print the per-class table of the README from the probe's record."""
import json
from pathlib import Path

rec = json.loads((Path(__file__).parent / "1adcc2878b3dd30d.json").read_text())
info, masks = rec["defense_info"], rec["isolation"]["masks"]
print("| class | QUE op | chosen k | poisoned in class | its flags: TPR / FPR |")
print("|---|---|---|---|---|")
for c in sorted(info["class_op"], key=int):
    m = masks[f"class_{c}"]
    print(f"| {c} | {info['class_op'][c]:.2f} | {info['class_k'][c]} | {info['class_poisoned'][c]} "
          f"| {m['tpr'] * 100:.2f} / {m['fpr'] * 100:.2f} |")
