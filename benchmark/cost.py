"""What a grid costs before it runs: the images each phase processes over a measured throughput.

The images come from the cell's development run (``--fast-dev-run``): the trainer notes every
phase at its configured size (epochs x images per epoch, ``Trainer.work``) and every pass over a
set, so the counts follow the code and cannot drift from it; a phase another cell computed
first (a shared, cached artifact) is counted once, where the grid computes it. The time of an
image depends on what a step does with it, in units of one supervised training image
(forward + backward):
- a phase's ``PASSES`` (SimCLR trains two views of each image; MixMatch trains a labelled image,
  two views of an unlabelled one and guesses labels with two forward passes; DBD's head runs the
  frozen backbone forward only);
- an evaluation image: one forward pass, ``EVAL`` of a training image.
The throughput is the trainer's supervised img/s for the cell's model, width, image size and
training precision on the device: measured here once (a few batches) and cached, or read from a
calibration file (``--calibration``, what ``python -m benchmark.gpucheck`` writes on a GPU).
Not counted: decoding the data, stamping triggers, start-up (seconds a cell).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmark.spec import CellSpec

# training-image equivalents per image of a phase, by the phase's name (default 1)
PASSES = {
    "DBD SimCLR": 2.0,  # two augmented views, both trained
    "DBD linear head": 0.4,  # the frozen backbone's forward (1/3) + the head
    "DBD MixMatch": 3 + 2 / 3,  # labelled + 2 unlabelled views trained, 2 guessing forwards
    "ASD MixMatch": 3 + 2 / 3,
    "ASD virtual update": 0.7,  # backward through the last two stages only
    "Trojan trigger optimisation": 1.0,  # forward + backward to the input
    "CL PGD": 1.0,
    "Dynamic mask network": 0.3,  # two forwards + backward of a width-8 encoder-decoder
    "Dynamic generator + classifier": 1.6,  # the classifier step + the generators' passes
    "ASSET offset": 1 + 2 / 3,  # a trained clean batch + the features of two batches (forward)
    "CT confusion": 1.5,  # even iterations train 32 clean + 32 distilled images, odd ones 32
    "VaB beneficiary": 2 * (1 + 1 / 3),  # two views trained, each after an attention forward
}
EVAL = 1 / 3  # an evaluation image against a training image


def units(work: list[dict[str, Any]]) -> float:
    """Training-image equivalents of a development-run work ledger."""
    total = 0.0
    for entry in work:
        if entry["phase"] == "eval":
            total += EVAL * entry["images"]
        else:
            name = entry["phase"]
            passes = next((v for k, v in PASSES.items() if name.startswith(k)), 1.0)
            total += passes * entry["epochs"] * entry["images_per_epoch"]
    return total


def speed_key(spec: CellSpec) -> str:
    """What the throughput of a cell depends on besides the device: model, its parameters, the
    image size and the training precision asked for."""
    params = ",".join(f"{k}={v}" for k, v in sorted(spec.model_params.items()))
    from benchmark.data import image_side

    return f"{spec.model}({params}) {image_side(spec.dataset, spec.data)}px {spec.train.precision}"


def device_kind(device: str | None = None) -> str:
    """A name of this machine's device as calibrations are keyed: the GPU, or the CPU's vector
    extensions, bf16 support and thread count."""
    import torch

    from benchmark.train import cpu_native_bf16, default_device

    dev = torch.device(device) if device else default_device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return (f"cpu {torch.backends.cpu.get_cpu_capability()} "
            f"{'bf16' if cpu_native_bf16() else 'no-bf16'} {torch.get_num_threads()} threads")


def measure(spec: CellSpec, device: str | None = None, batches: int = 3,
            batch_size: int = 32) -> float:
    """Supervised training img/s of the cell's model on the device (a warm-up batch, then
    ``batches`` timed ones of random images)."""
    import torch

    from benchmark.data import CIFAR10_MEAN, CIFAR10_STD, image_side
    from benchmark.models import build_model
    from benchmark.perf import bench_trainer
    from benchmark.train import Trainer

    size = image_side(spec.dataset, spec.data)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batches * batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (len(images),), generator=g)
    model = build_model(spec.model, 10, **spec.model_params)
    return bench_trainer(Trainer(CIFAR10_MEAN, CIFAR10_STD, device=device), 0, images, labels,
                         batch_size, spec.train.precision, False, model=model,
                         warmup_batches=1)[0]


class Throughputs:
    """img/s per speed key for one device kind: a calibration file's, else measured here once
    and kept in ``<cache dir>/throughput.json``."""

    def __init__(self, cache_dir: Path, calibration: Path | None = None, device: str | None = None):
        self.device = device
        self.path = Path(cache_dir) / "throughput.json"
        self.note = ""  # where the img/s come from, as the dry-run says it
        if calibration is not None:
            data = json.loads(Path(calibration).read_text())
            self.kind, self.known, self.measured_here = data["device_kind"], data["img_per_s"], False
            if data.get("published"):
                self.note = ("img/s from a published figure, not measured here: "
                             f"{data['published']} ({calibration})")
            else:
                self.note = f"img/s measured on {self.kind}: {data.get('source', calibration)}"
        else:
            self.kind, self.measured_here = device_kind(device), True
            self.note = f"img/s measured here ({self.path}, a few batches per model)"
            try:
                self.known = json.loads(self.path.read_text()).get(self.kind, {})
            except (OSError, ValueError):
                self.known = {}

    def get(self, spec: CellSpec) -> float | None:
        key = speed_key(spec)
        if key not in self.known and self.measured_here:
            self.known[key] = measure(spec, self.device)
            self._save()
        return self.known.get(key)

    def _save(self) -> None:
        from benchmark.cache import atomic_write_bytes

        try:
            every = json.loads(self.path.read_text())
        except (OSError, ValueError):
            every = {}
        every[self.kind] = self.known
        try:
            atomic_write_bytes(self.path, json.dumps(every, indent=1).encode())
        except OSError:  # an unwritable cache costs the next dry-run a measurement
            pass


WORK = Path(__file__).parent / "work"  # committed development-run work counts, one file a preset


def committed_work() -> dict[str, list[dict[str, Any]]]:
    """Every committed work ledger by its development run's id (ids differ across presets)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(WORK.glob("*.json")):
        out.update({cid: cell["work"] for cid, cell in json.loads(path.read_text())["cells"].items()})
    return out


def ledger(work: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A work ledger as committed: the training phases as run, the evaluation passes summed into
    one entry per artifact they belong to (``units`` counts them alike); each entry keeps the
    artifact it made (``artifact``, the cache's tag), so a grid counts a shared one once."""
    keep = ("phase", "epochs", "images_per_epoch", "artifact")
    phases = [{k: e[k] for k in keep if k in e} for e in work if e["phase"] != "eval"]
    evals: dict[str | None, int] = {}
    for e in work:
        if e["phase"] == "eval":
            evals[e.get("artifact")] = evals.get(e.get("artifact"), 0) + e["images"]
    return phases + [{"phase": "eval", "images": n, **({"artifact": a} if a else {})}
                     for a, n in evals.items()]


def scaled(work: list[dict[str, Any]], ratio: float, where: str) -> list[dict[str, Any]]:
    """Another dataset's ledger with every phase's images times ``ratio`` (its training set's
    size over that dataset's) and its artifacts tagged ``where``, so they never merge with the
    source dataset's: a stand-in for a cell without its own development run."""
    out = []
    for e in work:
        e = dict(e)
        for k in ("images", "images_per_epoch"):
            if k in e:
                e[k] = round(e[k] * ratio)
        if e.get("artifact"):
            e["artifact"] = f"{where}:{e['artifact']}"
        out.append(e)
    return out


def first_needs(works: list[list[dict[str, Any]] | None], made: set[str] | None = None
                ) -> list[list[dict[str, Any]] | None]:
    """Each cell's work in a grid run in this order: an artifact's entries stay at the first
    cell that needs it and leave the later ones, and every cell where ``made`` (artifacts
    already there); None where a cell has no ledger."""
    seen = set(made or ())
    out: list[list[dict[str, Any]] | None] = []
    for work in works:
        out.append(None if work is None else [e for e in work if e.get("artifact") not in seen])
        seen |= {e["artifact"] for e in work or [] if e.get("artifact")}
    return out


def grid_units(works: list[list[dict[str, Any]] | None], made: set[str] | None = None
               ) -> list[float | None]:
    """Each cell's training-image equivalents in a grid run in this order, each shared artifact
    counted once (``first_needs``)."""
    return [None if w is None else units(w) for w in first_needs(works, made)]


def write_work(dev_records: Path, folder: Path = WORK) -> tuple[Path, int]:
    """Write the work ledgers of a folder of development-run records (one preset's) to
    ``<folder>/<preset>.json``; returns the file and how many."""
    from benchmark.cache import atomic_write_bytes

    cells, presets = {}, set()
    for path in sorted(Path(dev_records).glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok" or "fast_dev_run" not in rec:
            continue
        c = rec["config"]
        presets.add(c["preset"])
        cells[rec["id"]] = {"cell": f"{c['dataset']}/{c['model']}/{c['attack']}/{c['defense']}",
                            "work": ledger(rec["fast_dev_run"]["work"])}
    if not presets:
        raise ValueError(f"no development-run records in {dev_records}")
    if len(presets) > 1:
        raise ValueError(f"{dev_records}: development runs of several presets ({', '.join(sorted(presets))})")
    preset = presets.pop()
    doc = {"preset": preset, "made_by": "python -m benchmark.cost work "
           "--results <results of --fast-dev-run>", "cells": dict(sorted(cells.items()))}
    out = Path(folder) / f"{preset}.json"
    atomic_write_bytes(out, (json.dumps(doc, indent=0) + "\n").encode())
    return out, len(cells)


def phase_kind(entry: dict[str, Any]) -> str:
    """A work entry's phase without its round numbers (``refool selection 2/3``: ``refool
    selection``; ``CT pretraining 4``: ``CT pretraining``), so a grid's work sums by kind of
    phase."""
    return re.sub(r"\s*\(?\d+/\d+\)?|\s+\d+$", "", entry["phase"]).strip()


def grid_phases(works: list[list[dict[str, Any]]]) -> dict[str, float]:
    """A grid's training-image equivalents by kind of phase, each shared artifact once."""
    out: dict[str, float] = {}
    for work in first_needs(works):
        for e in work or []:
            out[phase_kind(e)] = out.get(phase_kind(e), 0.0) + units([e])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def estimate(spec: CellSpec, work: list[dict[str, Any]] | None, speeds: Throughputs
             ) -> float | None:
    """Seconds the cell should take on the device, or None without its development run (or a
    throughput for its model)."""
    if work is None:
        return None
    speed = speeds.get(spec)
    return units(work) / speed if speed else None


def check(records_dir: Path, calibration: Path, cache_dir: Path) -> list[dict[str, Any]]:
    """Estimate against measurement: for every record of ``records_dir`` made on the calibration's
    kind of device that computed all its phases itself (nothing taken from the cache), its
    development run in a fresh folder (so every phase is counted) and the estimate of it."""
    import tempfile

    from benchmark.cell import Runtime, run_cell
    from benchmark.devrun import DevRun
    from benchmark.progress import set_sink
    from benchmark.spec import CellSpec

    speeds = Throughputs(cache_dir, calibration)
    native = "bf16" in speeds.kind.split()
    rows = []
    set_sink(None)
    for path in sorted(Path(records_dir).glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok" or rec["hardware"].get("cpu_native_bf16") != native:
            continue
        if any("reused" in str(v) for v in rec.get("defense_info", {}).values()):
            continue  # a shared model came from the cache: the record's time lacks it
        if any(k.endswith("_resumed_s") for k in rec["timings"].get("defense_phases", {})):
            continue  # an interrupted run made part of its training: the record's time lacks it
        with tempfile.TemporaryDirectory() as tmp:
            spec = CellSpec.from_config(rec["config"])
            dev = run_cell(spec.replace(fast_dev_run=DevRun()),
                           Runtime(results=Path(tmp), cache_dir=cache_dir))
        work = dev["fast_dev_run"]["work"]
        if rec["timings"].get("attack_s", 0) < 5:  # the attack's artifacts were cached then
            work = work[dev["fast_dev_run"]["attack_entries"]:]
        est = estimate(spec, work, speeds)
        rows.append({"id": rec["id"], "cell": f"{rec['config']['attack']}/{rec['config']['defense']}",
                     "measured_s": rec["timings"]["total_s"], "estimated_s": est,
                     "ratio": est / rec["timings"]["total_s"] if est else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmark.data import default_cache_dir

    p = argparse.ArgumentParser(prog="python -m benchmark.cost",
                                description="check: the dry-run's estimates against measured records; "
                                "work: commit a preset's development-run work counts (benchmark/work/)")
    p.add_argument("what", choices=["check", "work"])
    p.add_argument("--results", required=True, help="check: a folder of records (e.g. docs/results/quick); "
                   "work: the --results of a --fast-dev-run grid")
    p.add_argument("--calibration", help="check: the calibration of the records' device")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    if args.what == "work":
        from benchmark.devrun import FOLDER

        try:
            out, n = write_work(Path(args.results) / FOLDER / "records")
        except ValueError as exc:
            p.error(str(exc))
        print(f"{n} work ledger(s) written to {out}")
        return 0
    if not args.calibration:
        p.error("check needs --calibration")
    rows = check(Path(args.results), Path(args.calibration), Path(args.cache_dir or default_cache_dir()))
    for r in rows:
        print(f"{r['id']}  {r['cell']:28s} measured {r['measured_s']:7.0f} s  estimated "
              f"{r['estimated_s']:7.0f} s  ratio {r['ratio']:.2f}")
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    if ratios:
        within = sum(abs(x - 1) <= 0.25 for x in ratios)
        print(f"{len(ratios)} cell(s): {within} within 25%; ratio range {min(ratios):.2f}-{max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
