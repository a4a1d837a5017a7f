"""``python run_benchmark.py triggers --out DIR``: a PNG gallery of every attack's trigger.

For each attack, a few training images that the attack poisons, beside their poisoned versions
and the amplified absolute difference. The poisoned sets come from the same code path (and the
same artifact cache) as the grid's cells, so the gallery shows exactly what the defenses get.
Attacks that build their trigger with a model (CL, Dynamic, an optimised Trojan) train it first,
once per results folder (cached under <results>/cache).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmark.presets import PRESETS
from benchmark.registry import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``triggers`` command's options."""
    p.add_argument("--out", required=True, help="folder for the PNG files (created; existing "
                                                "PNGs of the same attacks are overwritten)")
    p.add_argument("--grid", default="smoke",
                   help=f"preset whose attack settings to use: {', '.join(PRESETS)} (default smoke)")
    p.add_argument("--attacks", help="comma-separated attack names, or all (default: all registered)")
    p.add_argument("--n", type=int, default=4, help="images per attack (default 4)")
    p.add_argument("--amplify", type=float, default=5.0, help="difference gain (default 5)")
    p.add_argument("--seed", type=int, default=0, help="cell seed (picks the poisoned samples)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value as in the grid, e.g. badnets.pattern=white")
    p.add_argument("--results", default="results",
                   help="results folder whose cache/ holds (and receives) the poisoned sets and "
                        "attack models (default results/)")
    p.add_argument("--data-root", default=None,
                   help="dataset folder or archive (default $BDBENCH_DATA, as the grid)")
    p.add_argument("--cache-dir", default=None,
                   help="decoded-dataset cache (default $BDBENCH_CACHE, as the grid)")
    p.add_argument("--no-download", action="store_true", help="never try to download datasets")
    p.add_argument("--device", default=None, help="torch device (default auto)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="Python file registering your own attack (repeatable)")


def examples(spec, n: int, rt) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # noqa: ANN001
    """(clean, poisoned) uint8 images of the first ``n`` poisoned (or cover) samples of the
    cell ``spec`` (a ``CellSpec``), and their captions."""
    from benchmark.cell import load_cell_dataset, poison, seed_everything
    from benchmark.models import build_model
    from benchmark.train import Trainer

    seed_everything(spec.seed)
    dataset = load_cell_dataset(spec, rt)
    trainer = Trainer(dataset.mean, dataset.std, device=rt.device)

    def make_model() -> torch.nn.Module:
        return build_model(spec.model, dataset.num_classes, **spec.model_params)

    ps, _, _ = poison(spec, dataset, rt, trainer, make_model)
    idx = ps.poison_mask.nonzero().flatten()[:n]
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


def main(args: argparse.Namespace) -> int:
    """Checks every input (attacks, --set keys, the dataset) before writing anything, so a bad
    command exits 2 without leaving an empty --out folder."""
    from attacks import ATTACKS
    from benchmark.cell import Runtime, load_cell_dataset
    from benchmark.cliutil import split_csv
    from benchmark.config import parse_sets
    from benchmark.data import default_cache_dir, default_data_root
    from benchmark.plugins import load_plugin
    from benchmark.spec import CellSpec

    for plugin in args.plugin:
        load_plugin(plugin)
    names = ATTACKS.select(split_csv(args.attacks, "--attacks"))
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    sets = parse_sets(args.sets)
    specs = {name: CellSpec.resolve(args.grid, name, "no_defense", args.seed, sets) for name in names}
    rt = Runtime(results=Path(args.results), data_root=Path(args.data_root or default_data_root()),
                 cache_dir=Path(args.cache_dir or default_cache_dir()), device=args.device,
                 download=not args.no_download)
    load_cell_dataset(next(iter(specs.values())), rt)  # a missing dataset: exit 2 here
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        if spec.attack_cls.uses_model(spec.attack_params):
            print(f"{name}: builds its trigger with a trained model (once; cached under "
                  f"{rt.results / 'cache'})", flush=True)
        clean, poisoned, captions = examples(spec, args.n, rt)
        if not len(clean):  # e.g. the no-attack baseline
            print(f"{name}: no poisoned samples, nothing to draw")
            continue
        path = out / f"{name}.png"
        draw(name, clean, poisoned, captions, args.amplify, path)
        print(f"{name}: {path}")
    return 0
