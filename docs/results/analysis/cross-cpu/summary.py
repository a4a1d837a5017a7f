"""Print the per-epoch comparison of the README: one quick cell, the same id, two CPU kinds."""
import json
from pathlib import Path

here = Path(__file__).parent
runs = {"no native bf16 (committed, docs/results/quick)": here.parents[1] / "quick" / "4ae4025e6ab45313.json",
        "AVX-512 BF16 EPYC (this folder)": here / "4ae4025e6ab45313.json"}
recs = {k: json.loads(p.read_text()) for k, p in runs.items()}
for name, r in recs.items():
    m = r["metrics"]
    print(f"{name}: CA {100 * m['ca']:.2f} / ASR {100 * m['asr']:.2f}, "
          f"cpu_native_bf16 {r['hardware'].get('cpu_native_bf16')}, finished {r['finished_at']}")
a, b = (r["curves"]["train"] for r in recs.values())
print("\n| epoch | train loss (no bf16 / bf16 host) | CA on the curve subset, % |")
print("|---|---|---|")
for p, q in zip(a, b, strict=True):
    if p["epoch"] in (1, 2, 5, 10, 15, 20):
        print(f"| {p['epoch']} | {p['train_loss']:.4f} / {q['train_loss']:.4f} "
              f"| {100 * p['ca']:.1f} / {100 * q['ca']:.1f} |")
