"""``python run_benchmark.py [run|list|report|triggers] ...``: the suite's command line.

``run`` (the default when no command is named: ``python run_benchmark.py --grid quick``) runs a
grid of (dataset, attack, defense, seed) cells; ``list`` prints what is registered; ``report``
writes the tables, figures and leaderboard of the records; ``triggers`` the trigger gallery.

Exit codes: 0 every cell ok, 1 some cell failed, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.cliutil import parse_seeds, split_csv, writable_folder
from benchmark.presets import PRESETS
from benchmark.registry import UsageError

if TYPE_CHECKING:
    from benchmark.spec import CellSpec

COMMANDS = ("run", "list", "report", "triggers")
PROG = "run_benchmark.py"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from benchmark.data import default_cache_dir, default_data_root

    p.add_argument("--grid", default="demo",
                   help=f"preset: {', '.join(PRESETS)} (default demo: BadNets and Blended, No "
                        "Defense vs PIPD, minutes on 2 CPU cores; smoke: every method, a code-path "
                        "check; quick: ~10-20 min a cell on CPU; full: paper scale, GPUs)")
    p.add_argument("--datasets", help="comma-separated dataset names, or all (default: the preset's)")
    p.add_argument("--models", help="comma-separated model names, or all (default: each dataset's "
                                    "default model, resnet18 on CIFAR-10)")
    p.add_argument("--attacks", help="comma-separated attack names, or all (default: all registered)")
    p.add_argument("--defenses", help="comma-separated defense names, or all (default: all registered)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.epochs=5, data.train_size=5000, "
                        "pipd.rounds=5, attack.rate=0.1 (repeatable)")
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="KEY=[V,...]",
                   help="run the grid once per value, e.g. defense.rounds=[1,2,3,4,5] (repeatable: "
                        "every combination)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether each is done")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="--dry-run: estimate for the device of this calibration file (img/s per "
                        "model, e.g. docs/results/perf/calibration-*.json) instead of measuring here")
    p.add_argument("--fast-dev-run", action="store_true",
                   help="a development run: every cell at its configuration (width, data, every "
                        "phase) with each loop cut to a few small batches (first and last epoch); "
                        "records and artifacts apart, under <results>/fast-dev-run, never in tables")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="DIR",
                   help="after the grid, write the report of the results folder (tables, figures, "
                        "HTML leaderboard) to DIR (default <results>/report)")
    p.add_argument("--results", default="results", help="results folder (default results/)")
    p.add_argument("--data-root", default=None,
                   help=f"dataset folder or archive (default $BDBENCH_DATA, else {default_data_root()})")
    p.add_argument("--imagenet-root", default=None,
                   help="ImageFolder root of the ImageNet subset (adds its cells to --grid full)")
    p.add_argument("--cache-dir", default=None,
                   help=f"decoded-dataset cache (default $BDBENCH_CACHE, else {default_cache_dir()})")
    p.add_argument("--executor", default="ray", choices=["ray", "serial"],
                   help="ray (default): Ray Tune trials; serial: in-process, for debugging")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, fractional allowed (default 1 if the cluster has GPUs)")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per trial (default: all CPUs per GPU share, or all cores)")
    p.add_argument("--ship-data", choices=("auto", "always", "never"), default="auto",
                   help="Ray: send the driver's decoded data to the trials through the object "
                        "store (auto: on multi-node clusters, used where a node lacks the data; "
                        "always: every trial uses it, no node decodes the archive again)")
    p.add_argument("--device", default=None, help="torch device for --executor serial (default auto)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="Python file registering your own attack/defense (repeatable)")
    p.add_argument("--no-download", action="store_true", help="never try to download datasets")
    p.add_argument("--save-models", action="store_true",
                   help="keep every cell's final model under <results>/models/<cell id>.pt "
                        "(a state dict + model config; benchmark.models.load_saved reads it)")
    p.add_argument("--list", action="store_true", help="the same as the list command")


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="Python file registering your own attack/defense, listed beside the "
                        "built-in ones (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The four commands, each with its options (``run_benchmark.py COMMAND --help``)."""
    from benchmark import gallery
    from benchmark.reports import cli as report

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark training-time backdoor defenses: one Ray Tune trial per "
                    "(dataset, attack, defense, seed) cell, one JSON record per cell. Without a "
                    "command, run: python run_benchmark.py --grid quick.")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, add, text, description in (
            ("run", add_run_arguments, "run a grid of cells (the default command)", None),
            ("list", add_list_arguments, "print the registered datasets, attacks, models, defenses",
             None),
            ("report", report.add_arguments, "tables, figures and leaderboard of the records",
             report.__doc__),
            ("triggers", gallery.add_arguments, "a PNG gallery of every attack's trigger",
             gallery.__doc__)):
        add(sub.add_parser(name, help=text, description=description or text))
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; ``run`` when it names no command (its options first, as in
    ``--grid quick``)."""
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; re-run the same command to complete the rest",
              file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    args = parse(argv)
    return COMMAND_RUNNERS[args.command](args)


def load_plugins(paths: list[str]) -> None:
    """Import each ``--plugin`` file, saying what it registered."""
    from benchmark.plugins import load_plugin

    for plugin in paths:
        for added in load_plugin(plugin):
            print(f"plugin {plugin}: registered {added}")


def list_command(args: argparse.Namespace) -> int:
    from benchmark.catalog import catalog, listing

    load_plugins(args.plugin)
    print(listing(catalog()))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from benchmark.reports.cli import main as report

    return report(args)


def triggers_command(args: argparse.Namespace) -> int:
    from benchmark.gallery import main as gallery

    return gallery(args)


def run_command(args: argparse.Namespace) -> int:
    if args.list:
        return list_command(args)
    if args.address and not args.dry_run:  # a wrong address fails before any heavy import
        from benchmark.cliutil import probe_address

        probe_address(args.address)
    from benchmark.cell import Runtime
    from benchmark.config import cell_id, parse_sets, parse_sweeps
    from benchmark.data import default_cache_dir, default_data_root
    from benchmark.grid import describe, expand_grid, run_ray, run_serial
    from benchmark.store import ResultStore

    load_plugins(args.plugin)
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial:g}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial:g}")
    sets = parse_sets(args.sets)
    cells = expand_grid(args.grid, split_csv(args.attacks, "--attacks"),
                        split_csv(args.defenses, "--defenses"), parse_seeds(args.seeds),
                        sets, imagenet=args.imagenet_root is not None,
                        sweeps=parse_sweeps(args.sweeps), datasets=split_csv(args.datasets, "--datasets"),
                        models=split_csv(args.models, "--models"))
    if args.fast_dev_run:
        from benchmark.devrun import mark

        cells = [mark(c) for c in cells]
    cells = without_refused(cells)
    rt = Runtime(results=results_folder(args), data_root=Path(args.data_root or default_data_root()),
                 imagenet_root=args.imagenet_root,
                 cache_dir=Path(args.cache_dir or default_cache_dir()), device=args.device,
                 download=not args.no_download,
                 save_models=args.save_models, ship_data=args.ship_data,
                 plugins=[str(Path(p).resolve()) for p in args.plugin])
    store = ResultStore(rt.results)
    status = {cell_id(c): store.status(cell_id(c)) for c in cells}
    todo = [c for c in cells if status[cell_id(c)] != "ok"]

    if args.dry_run:
        from benchmark.plans import WorkCounts, print_plan
        from benchmark.sources import current_sources
        from benchmark.spec import CellSpec

        specs = [CellSpec.from_config(c) for c in cells]
        plan = [(s.id, f"{s.model} {describe(c)}", *dev_twin(s), json.dumps(current_sources(c)))
                for s, c in zip(specs, cells, strict=True)]
        counts = WorkCounts(rt.results)  # estimates are shown where a cell has work counts
        for s, c, p in zip(specs, cells, plan, strict=True):
            add_stand_in(counts, s, c, p[2])
        estimates = not args.fast_dev_run and any(counts.has(p[2]) for p in plan)
        print_plan(plan, rt.results, counts, *(estimate_speeds(args, rt, specs, counts) if estimates else ()))
        return 0

    t0 = time.perf_counter()
    if todo:  # everything a cell would trip on, before anything is written
        writable_folder(rt.results, "--results")
        writable_folder(rt.cache_dir, "--cache-dir")
        _check_data(rt, todo)
    print(f"grid {args.grid}: {len(cells)} cell(s), {len(cells) - len(todo)} already done, "
          f"{len(todo)} to run; results in {rt.results}", flush=True)
    from benchmark.sources import changed_note, stale

    changed = changed_note(x for c in cells if status[cell_id(c)] == "ok"
                           for x in stale(store.read(cell_id(c)) or {}))
    if changed:
        print(changed, flush=True)
    if todo:
        if args.executor == "serial":
            run_serial(todo, rt, store)
        else:
            run_ray(todo, rt, store, address=args.address, gpus_per_trial=args.gpus_per_trial,
                    cpus_per_trial=args.cpus_per_trial)
    from benchmark.report import summary

    recs = [r for r in (store.read(cell_id(c)) for c in cells) if r is not None]
    print()
    print(summary(recs))
    failed = sum(r["status"] != "ok" for r in recs)
    print(f"\n{len(cells)} cell(s), {failed} failed, {time.perf_counter() - t0:.1f} s")
    if args.report is not None:
        from benchmark.reports.cli import write_report

        out = Path(args.report) if args.report else rt.results / "report"
        index, _ = write_report([rt.results], out, args.grid)
        print(f"report: {index}")
    return 1 if failed else 0


def dev_twin(spec: CellSpec) -> tuple[str, str]:
    """(the id of the cell's development run, its speed key): what its estimate reads."""
    from benchmark.cost import speed_key
    from benchmark.devrun import DevRun

    return spec.replace(fast_dev_run=DevRun()).id, speed_key(spec)


def add_stand_in(counts, spec: CellSpec, config: dict, dev_id: str) -> None:
    """For a cell of another dataset without work counts of its own: its CIFAR-10 twin's,
    scaled by the training sets' sizes (``plans.WorkCounts.stand_in``)."""
    from benchmark.config import resolve_cell
    from benchmark.data import DATASETS
    from benchmark.spec import CellSpec

    sizes, base = DATASETS.get(spec.dataset).sizes, DATASETS.get("cifar10").sizes
    if spec.dataset == "cifar10" or sizes is None or counts.has(dev_id):
        return
    twin = resolve_cell(config["preset"], config["attack"], config["defense"], config["seed"], [],
                        dataset="cifar10", model=spec.model)
    counts.stand_in(dev_id, dev_twin(CellSpec.from_config(twin))[0], sizes[0] / base[0], spec.dataset)


def estimate_speeds(args: argparse.Namespace, rt, specs: list[CellSpec], counts
                    ) -> tuple[dict[str, float], str, str]:
    """(img/s by speed key, the device's name, where the img/s come from) for the dry-run's
    estimates: the calibration file's, or measured here for each model of a cell with work
    counts (``counts``, a ``plans.WorkCounts``; once, cached)."""
    from benchmark.cost import Throughputs, speed_key

    speeds = Throughputs(rt.cache_dir, Path(args.calibration) if args.calibration else None,
                         args.device)
    for spec in specs:
        if speed_key(spec) not in speeds.known and counts.has(dev_twin(spec)[0]):
            print(f"measuring the training throughput of {speed_key(spec)} on {speeds.kind} ...",
                  file=sys.stderr, flush=True)
            speeds.get(spec)
    return dict(speeds.known), speeds.kind, speeds.note


def results_folder(args: argparse.Namespace) -> Path:
    """Where the grid's records go: ``--results``, or its development-run folder."""
    from benchmark.devrun import FOLDER

    return Path(args.results) / FOLDER if args.fast_dev_run else Path(args.results)


def without_refused(cells: list[dict]) -> list[dict]:
    """The grid less the cells whose defense refuses their model, each distinct refusal named in
    one line on stderr: a grid over several models keeps the pairs that can run. A grid of
    refused cells only is a usage error."""
    from benchmark.cell import refusal
    from benchmark.spec import CellSpec

    kept, refused, seen = [], Counter(), {}
    for c in cells:
        pair = json.dumps([c["defense"], c.get("defense_params"), c["model"], c.get("model_params")],
                          sort_keys=True, default=str)
        if pair not in seen:
            seen[pair] = refusal(CellSpec.from_config(c))
        if seen[pair] is None:
            kept.append(c)
        else:
            refused[seen[pair]] += 1
    if refused and not kept:
        raise UsageError(next(iter(refused)))
    for why, n in refused.items():
        print(f"skipped {n} cell(s): {why}", file=sys.stderr, flush=True)
    return kept


def _check_data(rt, cells: list[dict]) -> None:
    """Find (and decode once) every dataset before any trial starts: a missing dataset is a
    one-line usage error, not a grid of failed cells."""
    from benchmark.cell import check_cell, load_cell_dataset
    from benchmark.progress import Console, set_sink
    from benchmark.spec import CellSpec

    loaded: dict[tuple[str, str], object] = {}
    previous = set_sink(Console())  # decoding a dataset the first time takes minutes
    try:
        for spec in map(CellSpec.from_config, cells):
            key = (spec.dataset, str(dict(spec.data)))
            if key not in loaded:
                loaded[key] = load_cell_dataset(spec, rt)
            check_cell(spec, loaded[key], rt)
    finally:
        set_sink(previous)


COMMAND_RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run_command, "list": list_command, "report": report_command,
    "triggers": triggers_command}


if __name__ == "__main__":
    raise SystemExit(main())
