"""Expand a grid into cells and run the unfinished ones, serially or as Ray Tune trials."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.cell import Runtime, run_cell_safe
from benchmark.config import PRESETS, cell_id, label, lineage, overrides, resolve_cell, validate_sets
from benchmark.progress import Console, GridClock, RayReporter, duration, set_sink
from benchmark.registry import UsageError
from benchmark.spec import CellSpec
from benchmark.store import ResultStore, problem

# Paper's ImageNet-subset rows (dataset, attack): included in the full grid when --imagenet-root
# is given and the attack is selected.
IMAGENET_ATTACKS = ("badnets", "trojan", "blended", "sig")


def expand_grid(preset: str, attacks: list[str] | None, defenses: list[str] | None,
                seeds: list[int], sets: list[tuple[str, Any]], *, imagenet: bool = False,
                sweeps: list[tuple[str, list[Any]]] = (), datasets: list[str] | None = None,
                models: list[str] | None = None) -> list[dict[str, Any]]:
    """Every (dataset, model, attack, defense, seed, swept value) cell of the grid, resolved and
    validated; a sweep key that does not apply to a cell leaves one copy of it. ``datasets``
    and ``models`` default to the preset's (each dataset's default model); ``imagenet`` adds
    the ImageNet subset to the ``full`` grid when no dataset is named."""
    from attacks import ATTACKS
    from benchmark.data import DATASETS
    from benchmark.models import MODELS
    from defenses import DEFENSES

    if preset not in PRESETS:
        raise UsageError(f"unknown grid {preset!r}; valid choices: {', '.join(PRESETS)}")
    spec = PRESETS[preset]  # a preset may name its own grid (demo); --attacks/--defenses win
    attacks = ATTACKS.select(attacks if attacks is not None else spec.get("grid_attacks"))
    defenses = DEFENSES.select(defenses if defenses is not None else spec.get("grid_defenses"))
    chosen_models: list[str | None] = list(MODELS.select(models)) if models else [None]
    combos = [list(c) for c in itertools.product(*[[(k, v) for v in vals] for k, vals in sweeps])]
    notes: dict[str, None] = {}
    for combo in combos:
        validate_sets([*sets, *combo], attacks, defenses)
        notes.update(dict.fromkeys(unused_sets(preset, [*sets, *combo], attacks, defenses)))
    names: list[str | None] = list(DATASETS.select(datasets)) if datasets else [None]
    if imagenet and preset == "full" and not datasets:
        names.append("imagefolder")
    cells: dict[str, dict[str, Any]] = {}
    for dataset, model, attack in itertools.product(names, chosen_models, attacks):
        if dataset == "imagefolder" and attack not in IMAGENET_ATTACKS:
            continue
        for defense in defenses:
            for combo in combos:
                for seed in seeds:
                    cell = resolve_cell(preset, attack, defense, seed, [*sets, *combo],
                                        dataset=dataset, model=model)
                    cells.setdefault(cell_id(cell), cell)
    for note in notes:  # once everything is valid, so that an error stays one line
        print(note, file=sys.stderr)
    return list(cells.values())


def unused_sets(preset: str, sets: list[tuple[str, Any]], attacks: list[str],
                defenses: list[str]) -> list[str]:
    """A ``--set`` for an attack or defense outside the grid changes no cell: its value is still
    checked (a bad one is the same one-line error as inside the grid); returns a note for each."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    used_attacks = {n for a in attacks for n in lineage(ATTACKS.get(a))}
    used_defenses = {n for d in defenses for n in lineage(DEFENSES.get(d))}
    outside: dict[str, list[tuple[str, Any]]] = {}  # namespace -> its sets, checked together
    for key, value in sets:
        ns = key.partition(".")[0]
        if (ns in ATTACKS and ns not in used_attacks) or (ns in DEFENSES and ns not in used_defenses):
            outside.setdefault(ns, []).append((key, value))
    plain = next(n for n in DEFENSES if DEFENSES.get(n).accepts_repoisoning)
    notes = []
    for ns, group in outside.items():
        if ns in ATTACKS:  # with a defense that takes any attack option (re-poisoning too)
            resolve_cell(preset, ns, plain, 0, group)
            where = f"attacks: {', '.join(attacks)}"
        else:
            resolve_cell(preset, attacks[0], ns, 0, group)
            where = f"defenses: {', '.join(defenses)}"
        notes += [f"note: --set {k}={v} applies to no cell of this grid ({where})" for k, v in group]
    return notes


def describe(config: dict[str, Any]) -> str:
    """``dataset/attack/defense seed N`` plus what the cell overrides (sweeps show here)."""
    upstream, defense = overrides(config)
    extra = label({**upstream, **{f"{config['defense']}.{k}": v for k, v in defense.items()}})
    dev = " (fast-dev-run)" if "fast_dev_run" in config else ""
    return (f"{config['dataset']}/{config['attack']}/{config['defense']} seed {config['seed']}"
            + (f" [{extra}]" if extra else "") + dev)


def _line(record: dict[str, Any]) -> str:
    head = describe(record["config"])
    if record["status"] != "ok":
        return f"{head}: FAILED {record.get('error', '')}"
    m = record["metrics"]
    shown = [f"{name} {100 * m[key]:.2f}%" for key, name in
             (("ca", "CA"), ("asr", "ASR"), ("tpr", "TPR"), ("fpr", "FPR"), ("auroc", "AUROC"))
             if isinstance(m.get(key), float) and math.isfinite(m[key])]
    return f"{head}: {'  '.join(shown)}  ({duration(record['timings']['total_s'])})"


BUSY = "running in another process; skipped here (a re-run picks up its record)"


def run_claimed(config: dict[str, Any], rt: Runtime, store: ResultStore,
                prefix: str = "") -> dict[str, Any] | None:
    """Run the cell and write its record while holding its lock; None when another process
    holds the lock. A record that appeared meanwhile (another grid finished it) is returned
    as it is, not recomputed."""
    cid = cell_id(config)
    with store.claim(cid) as mine:
        if not mine:
            return None
        if store.status(cid) == "ok":
            print(f"{prefix}{describe(config)}: done by another process meanwhile", flush=True)
            return store.read(cid)
        print(f"{prefix}{describe(config)} ...", flush=True)
        record = run_cell_safe(CellSpec.from_config(config), rt)
        store.write(record)
        return record


def run_serial(cells: list[dict[str, Any]], rt: Runtime, store: ResultStore) -> list[dict]:
    """Each cell in this process, its training progress on stderr (``progress.Console``)."""
    records, clock = [], GridClock(len(cells))
    previous = set_sink(Console())
    try:
        for i, config in enumerate(cells, 1):
            record = run_claimed(config, rt, store, f"[{i}/{len(cells)}] ")
            if record is not None:
                records.append(record)
            print(f"[{clock.tick()}] {_line(record) if record else describe(config) + ': ' + BUSY}",
                  flush=True)
    finally:
        set_sink(previous)
    return records


def _ray_trial(config: dict[str, Any], shipped: dict[str, dict] | None = None) -> None:
    """One Tune trial = one cell. Writes its own record (nothing is lost if the driver dies).
    ``shipped``: the driver's decoded data (``ship_splits``), through Ray's object store."""
    from ray import tune

    from benchmark.cell import offer_shipped
    from benchmark.plugins import load_plugin

    if shipped:
        offer_shipped(shipped)
    rt = Runtime(**config["runtime"])
    for plugin in rt.plugins:
        load_plugin(plugin)
    set_sink(RayReporter())
    record = run_claimed(config["cell"], rt, ResultStore(rt.results))
    if record is None:
        tune.report({"ok": False, "busy": True})
        return
    metrics = record.get("metrics", {})
    # the record travels in the result too: on a cluster without a shared filesystem the file
    # above lands on this node's disk, and the driver writes its own copy (``deliver``)
    tune.report({"ok": record["status"] == "ok", "busy": False, "record": json.dumps(record, default=str),
                 **{k: v for k, v in metrics.items() if isinstance(v, float)}})


def deliver(store: ResultStore, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record a trial reported, written to the driver's store unless it is there already
    (a shared filesystem) or unusable; None when the result carries none."""
    text = (result or {}).get("record")
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if problem(record) is not None:
        return None
    if store.read(record["id"]) is None:
        store.write(record)
    return record


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's CPU and GPU count, from the running Ray."""
    import ray

    return [{"CPU": float(n["Resources"].get("CPU", 0.0)), "GPU": float(n["Resources"].get("GPU", 0.0))}
            for n in ray.nodes() if n.get("Alive")]


def _node_text(node: dict[str, float]) -> str:
    return f"{node.get('CPU', 0.0):g} CPU / {node.get('GPU', 0.0):g} GPU"


def _largest(nodes: list[dict[str, float]], first: str = "CPU") -> dict[str, float]:
    """The node with the most of ``first`` (then of the other resource); {} for none."""
    other = "GPU" if first == "CPU" else "CPU"
    return max(nodes, key=lambda n: (n.get(first, 0.0), n.get(other, 0.0)), default={})


def fits(node: dict[str, float], res: dict[str, float]) -> int:
    """How many trials of request ``res`` one node holds at once."""
    by_cpu = int(node.get("CPU", 0.0) // res["cpu"]) if res["cpu"] > 0 else 10 ** 6
    by_gpu = int(node.get("GPU", 0.0) // res["gpu"]) if res["gpu"] > 0 else 10 ** 6
    return min(by_cpu, by_gpu)


def ray_resources(nodes: list[dict[str, float]], gpus_per_trial: float | None,
                  cpus_per_trial: float | None) -> dict[str, float]:
    """Per-trial request derived from the nodes, never from their sum: a trial runs on one
    node. Default: with GPUs one GPU (or ``gpus_per_trial``) and that GPU's share of the CPUs of
    the GPU node with the fewest per GPU; without, the CPUs of the smallest node, so every node
    of a heterogeneous cluster takes trials. Never asks for a GPU that no node has (such a
    trial would stay pending forever: a warning, then CPUs); an explicit request that fits on
    no node is a ``UsageError`` naming the largest node."""
    nodes = [n for n in nodes if n.get("CPU", 0.0) >= 1 or n.get("GPU", 0.0) > 0] or [{"CPU": 1.0}]
    gpu_nodes = [n for n in nodes if n.get("GPU", 0.0) > 0]
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if any(n["GPU"] >= 1 for n in gpu_nodes) else 0.0
    if gpus_per_trial > 0 and not gpu_nodes:
        print("warning: --gpus-per-trial given but the cluster has no GPU; running on CPUs",
              file=sys.stderr)
        gpus_per_trial = 0.0
    if gpus_per_trial > max((n["GPU"] for n in gpu_nodes), default=0.0):
        raise UsageError(f"--gpus-per-trial {gpus_per_trial:g} fits on no node of the cluster: "
                         f"the largest has {_node_text(_largest(nodes, 'GPU'))}")
    hosts = [n for n in gpu_nodes if n["GPU"] >= gpus_per_trial] if gpus_per_trial else nodes
    if cpus_per_trial is None:
        shares = [n.get("CPU", 0.0) // (n["GPU"] // gpus_per_trial) if gpus_per_trial
                  else n.get("CPU", 0.0) for n in hosts]
        cpus_per_trial = max(1.0, float(min(shares)))
    res = {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}
    if not any(fits(n, res) for n in nodes):
        raise UsageError(f"a trial of {res['cpu']:g} CPU / {res['gpu']:g} GPU fits on no node of "
                         f"the cluster: the largest has {_node_text(_largest(nodes))}")
    return res


def placement(nodes: list[dict[str, float]], res: dict[str, float]) -> str:
    """What the request means on these nodes, for the driver's line."""
    per_node = [fits(n, res) for n in nodes]
    used = sum(1 for k in per_node if k)
    return (f"up to {sum(per_node)} at once on {used} of {len(nodes)} node(s)"
            + ("" if used == len(nodes) else " (the others are too small for one)"))


UNPLACED_S = float(os.environ.get("BDBENCH_UNPLACED_S", "120"))


class UnplacedWatch:
    """Whether trials of request ``res`` have been unplaceable for ``bound`` seconds: no alive
    node can hold one (a node left the cluster, or shrank). Re-reads the nodes every ``every``
    seconds; a node that can hold one again resets the clock."""

    def __init__(self, res: dict[str, float], bound: float = UNPLACED_S,
                 nodes: Callable[[], list[dict[str, float]]] = alive_nodes,
                 clock: Callable[[], float] = time.monotonic, every: float = 5.0) -> None:
        self.res, self.bound, self.nodes, self.clock, self.every = res, bound, nodes, clock, every
        self.since: float | None = None
        self.checked = -math.inf
        self.largest: dict[str, float] = {}
        self.tripped = False

    def __call__(self) -> bool:
        now = self.clock()
        if not self.tripped and now - self.checked >= self.every:
            self.checked = now
            nodes = self.nodes()
            if any(fits(n, self.res) for n in nodes):
                self.since = None
            else:
                self.since = now if self.since is None else self.since
                self.largest = _largest(nodes)
            self.tripped = self.since is not None and now - self.since >= self.bound
        return self.tripped

    def message(self) -> str:
        largest = _node_text(self.largest) if self.largest else "none alive"
        return (f"unplaced: for {self.bound:g} s no node of the cluster could hold a trial of "
                f"{self.res['cpu']:g} CPU / {self.res['gpu']:g} GPU (the largest alive node: "
                f"{largest}); re-run when the cluster has such a node")


def one_trial_at_a_time(gpus_per_trial: float | None, cpus_per_trial: float | None) -> bool:
    """Whether a local Ray (no --address) could only run one trial at a time: no GPU here and
    each trial asks for every core. Then Ray adds a process start, imports and a data load to
    every cell (~5 s each on 2 cores) and parallelises nothing."""
    import torch

    if torch.cuda.is_available() and (gpus_per_trial is None or gpus_per_trial > 0):
        return False
    cores = len(os.sched_getaffinity(0))
    return cpus_per_trial is None or cpus_per_trial * 2 > cores


def quiet_ray_logs() -> None:
    """Drop the log lines a user cannot act on: the token-authentication notice of every local
    Ray start (the local cluster keeps its token) and Tune's INFO lines (where it saved its
    experiment state). Warnings and errors of Ray itself still show."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def ray_token_available() -> bool:
    """Whether this machine has a Ray authentication token (where ``ray start`` writes it, or
    given by environment)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").exists())


def join_cluster(address: str, init: dict[str, Any], timeout: float = 3.0) -> None:
    """``ray.init(address=...)``, or one ``UsageError`` line within seconds.

    A host:port that does not answer is refused at once (Ray itself retries for ~20 s and
    prints pages of warnings). With Ray's token authentication (on by default since 2.5x),
    a client given an explicit address does not send the local token unless ``RAY_AUTH_MODE``
    says so, while ``address="auto"`` does: the suite treats both alike and uses the token
    when one is here and the user has not set ``RAY_AUTH_MODE``."""
    import ray

    from benchmark.cliutil import probe_address

    probe_address(address, timeout)
    if "RAY_AUTH_MODE" not in os.environ and ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray reads the mode when imported: refresh it, as Ray's own "auto" path does
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    try:
        ray.init(address=address, **init)
    except Exception as exc:  # noqa: BLE001 - any failure to join is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (" (the cluster uses token authentication: set RAY_AUTH_TOKEN or run where "
                "`ray start` ran)" if "auth" in first.lower() or "token" in first.lower() else "")
        raise UsageError(f"--address {address}: could not join the Ray cluster: {first}{hint}"
                         ) from None


def ship_splits(cells: list[dict[str, Any]], rt: Runtime) -> dict[str, dict]:
    """The decoded splits every cell needs, read once on the driver, packed for the object
    store (one copy per distinct dataset, whatever the number of trials)."""
    from benchmark.cell import data_key, data_source_args
    from benchmark.data import load_splits, pack_splits

    shipped: dict[str, dict] = {}
    for spec in map(CellSpec.from_config, cells):
        key = data_key(spec, rt)
        if key not in shipped:
            root, opts = data_source_args(spec, rt)
            shipped[key] = pack_splits(*load_splits(spec.dataset, root, rt.cache_dir, **opts))
    return shipped


def run_ray(cells: list[dict[str, Any]], rt: Runtime, store: ResultStore, *,
            address: str | None = None, gpus_per_trial: float | None = None,
            cpus_per_trial: float | None = None) -> list[dict]:
    if address is None and one_trial_at_a_time(gpus_per_trial, cpus_per_trial):
        print("ray: one trial fits on this machine at a time; running the cells in this process "
              "instead (the same records, without a Ray start and a new process per cell; "
              "--cpus-per-trial N below the core count runs several as Ray trials)", flush=True)
        return run_serial(cells, rt, store)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in front of trial output
    import ray

    quiet_ray_logs()
    init = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        join_cluster(address, init)
    else:
        ray.init(**init)
    try:
        nodes = alive_nodes()
        res = ray_resources(nodes, gpus_per_trial, cpus_per_trial)  # refused before Tune loads
        from ray import tune

        print(f"ray: {len(cells)} trial(s), each {res['cpu']:g} CPU / {res['gpu']:g} GPU; "
              f"{placement(nodes, res)}", flush=True)
        runtime = {k: (str(v) if isinstance(v, Path) else v)
                   for k, v in dataclasses.asdict(rt).items()}
        runtime["threads"] = rt.threads or int(res["cpu"])
        if res["gpu"] == 0:
            runtime["device"] = rt.device or "cpu"
        clock = GridClock(len(cells))
        busy: set[str] = set()  # cells another process was running
        crashed: set[str] = set()  # trials whose process died (OOM, SIGKILL, ...)

        class Progress(tune.Callback):
            """Prints each trial's progress events (see ``progress.RayReporter``) and result."""

            def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
                if result.get("progress"):
                    print(f"  {describe(trial.config['cell'])}: {result['progress']}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
                if (trial.last_result or {}).get("busy"):
                    busy.add(cell_id(trial.config["cell"]))
                    print(f"[{clock.tick()}] {describe(trial.config['cell'])}: {BUSY}", flush=True)
                    return
                rec = deliver(store, trial.last_result) or store.read(cell_id(trial.config["cell"]))
                print(f"[{clock.tick()}] {_line(rec) if rec else trial}", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
                crashed.add(cell_id(trial.config["cell"]))
                print(f"[{clock.tick()}] trial crashed: {describe(trial.config['cell'])}",
                      flush=True)

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        trainable: Any = _ray_trial
        if rt.ship_data == "always" or (rt.ship_data == "auto" and nodes > 1):
            shipped = ship_splits(cells, rt)
            mb = sum(a.nbytes for p in shipped.values() for v in p["splits"].values()
                     for a in v[:2]) / 2 ** 20
            use = "every trial uses it" if rt.ship_data == "always" else "used where a node lacks the data"
            print(f"ray: {nodes} node(s); the decoded data ({mb:.0f} MB) goes to the trials through "
                  f"the object store ({use})", flush=True)
            trainable = tune.with_parameters(_ray_trial, shipped=shipped)
        watch = UnplacedWatch(res)

        class Unplaced(tune.Stopper):
            """Stops the grid once no alive node has been able to hold a trial for the bound."""

            def __call__(self, trial_id, result):  # noqa: ANN001, ANN204
                return False

            said = False

            def stop_all(self) -> bool:
                if watch() and not self.said:
                    self.said = True
                    print(f"ray: {watch.message()}", flush=True)
                return watch.tripped

        tuner = tune.Tuner(
            tune.with_resources(trainable, res),
            param_space={"cell": tune.grid_search(cells), "runtime": runtime},
            tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: f"cell-{t.trial_id}"),
            run_config=tune.RunConfig(
                name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(rt.results / "ray"), verbose=0, callbacks=[Progress()],
                stop=Unplaced(),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    records, not_run = [], 0
    from benchmark.cell import failed_record

    for config in cells:
        cid = cell_id(config)
        rec = store.read(cid)
        if rec is None and cid in crashed:  # died without writing: recorded failed, retried
            rec = failed_record(CellSpec.from_config(config),
                                "trial process died without a result (see ray logs)")
            store.write(rec)
        if rec is None and watch.tripped and cid not in busy:  # never placed: failed, retried
            rec = failed_record(CellSpec.from_config(config), watch.message())
            store.write(rec)
        if rec is None:
            not_run += cid not in busy  # never started (an interrupted grid): stays to do
            continue
        records.append(rec)
    if not_run:
        raise KeyboardInterrupt(f"{not_run} cell(s) did not run")
    return records
