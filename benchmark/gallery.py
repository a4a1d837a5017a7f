"""``python run_benchmark.py triggers --out DIR``: a PNG gallery of every attack's trigger.

For each attack, a few training images that the attack poisons, beside their poisoned versions
and the amplified absolute difference. The poisoned sets come from the same code path (and the
same artifact cache) as the grid's cells, so the gallery shows exactly what the defenses get.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmark.registry import UsageError


def build_parser() -> argparse.ArgumentParser:
    from benchmark.config import PRESETS

    p = argparse.ArgumentParser(prog="run_benchmark.py triggers",
                                description="Write a PNG gallery of the attacks' triggers.")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--grid", default="smoke",
                   help=f"preset whose attack settings to use: {', '.join(PRESETS)}")
    p.add_argument("--attacks", help="comma-separated attack names, or all (default: all registered)")
    p.add_argument("--n", type=int, default=4, help="images per attack (default 4)")
    p.add_argument("--amplify", type=float, default=5.0, help="difference gain (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--results", default="results", help="results folder (its cache/ is reused)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--plugin", action="append", default=[], metavar="FILE")
    return p


def examples(attack_name: str, args, rt) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(clean, poisoned) uint8 images of ``args.n`` poisoned (or cover) samples, and captions."""
    from benchmark.cell import load_cell_dataset, poison, seed_everything
    from benchmark.config import parse_sets, resolve_cell
    from benchmark.models import build_model
    from benchmark.train import Trainer

    config = resolve_cell(args.grid, attack_name, "no_defense", args.seed, parse_sets(args.sets))
    seed_everything(args.seed)
    dataset = load_cell_dataset(config, rt)
    trainer = Trainer(dataset.mean, dataset.std, device=rt.device)

    def make_model() -> torch.nn.Module:
        return build_model(config["model"], dataset.num_classes, **config["model_params"])

    ps, _, _ = poison(config, dataset, rt, trainer, make_model)
    idx = ps.poison_mask.nonzero().flatten()[:args.n]
    captions = [f"{dataset.train.classes[int(ps.original_labels[i])]} -> "
                f"{dataset.train.classes[int(ps.labels[i])]}" for i in idx]
    return dataset.train.images[idx], ps.images[idx], captions


def draw(name: str, clean: torch.Tensor, poisoned: torch.Tensor, captions: list[str],
         amplify: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.6), squeeze=False)
    diff = ((poisoned.float() - clean.float()).abs() * amplify).clamp(0, 255).to(torch.uint8)
    for j in range(n):
        for row, (img, title) in enumerate(((clean[j], "clean"), (poisoned[j], captions[j]),
                                            (diff[j], f"|diff| x{amplify:g}"))):
            ax = axes[row][j]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    from attacks import ATTACKS
    from benchmark.cell import Runtime
    from benchmark.cliutil import split_csv
    from benchmark.data import default_cache_dir, default_data_root
    from benchmark.plugins import load_plugin

    args = build_parser().parse_args(argv)
    for plugin in args.plugin:
        load_plugin(plugin)
    names = ATTACKS.select(split_csv(args.attacks, "--attacks"))
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    rt = Runtime(results=Path(args.results), data_root=Path(args.data_root or default_data_root()),
                 cache_dir=Path(args.cache_dir or default_cache_dir()), device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        clean, poisoned, captions = examples(name, args, rt)
        if not len(clean):  # e.g. the no-attack baseline
            print(f"{name}: no poisoned samples, nothing to draw")
            continue
        path = out / f"{name}.png"
        draw(name, clean, poisoned, captions, args.amplify, path)
        print(f"{name}: {path}")
    return 0
