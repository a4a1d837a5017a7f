"""The development run (``--fast-dev-run``): what it cuts, what it keeps, and the bugs of a paper-
scale run it catches on the CPU in seconds, each planted here once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import devrun
from benchmark.cli import main
from benchmark.config import resolve_cell
from benchmark.data import CIFAR10_MEAN, CIFAR10_STD, DataNotFoundError, default_data_root
from benchmark.train import TrainConfig, Trainer, lr_factor
from tests.conftest import write_imagefolder

DEV = devrun.DevRun()


# ------------------------------------------------------------------ what it cuts and keeps
def test_outside_a_development_run_every_helper_is_the_identity():
    t = torch.arange(5)
    real = Trainer(CIFAR10_MEAN, CIFAR10_STD, device="cpu").loops
    assert real == devrun.REAL and real.dev is None
    assert real.indices(7) == list(range(7)) and real.epochs(7, keep=(3,)) == list(range(7))
    assert real.rows(1000) == 1000 and devrun.fill(t, 5) is t


def test_a_development_run_keeps_first_last_and_boundary_iterations():
    cut = devrun.Loops(DEV)
    assert cut.epochs(200) == [0, 199] and cut.epochs(1) == [0]
    assert cut.epochs(120, keep=(59, 60, 89, 90, 500)) == [0, 59, 60, 89, 90, 119]
    assert cut.indices(1000) == [0, 1, 998, 999] and cut.indices(3) == [0, 1, 2]
    assert cut.rows(50_000) == DEV.eval_images
    filled = devrun.fill(torch.tensor([[1.0], [2.0], [3.0]]), 7)
    assert filled.flatten().tolist() == [1, 2, 3, 1, 2, 3, 1]


def test_the_setting_travels_with_the_trainer_not_the_process():
    """Two trainers side by side: one cut, one real; neither changes the other."""
    cut = Trainer(CIFAR10_MEAN, CIFAR10_STD, device="cpu", loops=devrun.Loops(DEV))
    real = Trainer(CIFAR10_MEAN, CIFAR10_STD, device="cpu")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    images = torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8)
    calls: list[int] = []
    model.register_forward_hook(lambda _m, inp, _o: calls.append(len(inp[0])))
    cut.logits(model, images)
    real.logits(model, images)
    assert calls == [DEV.eval_images, 100]


def test_catch_up_puts_a_scheduler_where_its_skipped_steps_would():
    def sched_at(steps: int, jump: bool) -> float:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 6], gamma=0.1)
        if jump:
            devrun.catch_up(sched, steps)
        else:
            for _ in range(steps):
                opt.step()
                sched.step()
        return opt.param_groups[0]["lr"]

    assert sched_at(7, jump=True) == pytest.approx(sched_at(7, jump=False)) == pytest.approx(0.001)


def test_a_dev_fit_runs_the_first_and_last_epoch_at_their_real_steps_and_rates():
    trainer = Trainer(CIFAR10_MEAN, CIFAR10_STD, device="cpu", loops=devrun.Loops(DEV))
    images = torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))
    cfg = TrainConfig(epochs=10, batch_size=40, lr=0.1, schedule="cosine", augment=False)
    seen: list[tuple[int, int]] = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))

    def loss(logits, y, idx):  # noqa: ANN001, ANN202
        seen.append((trainer.step_index, len(idx)))
        return nn.functional.cross_entropy(logits, y)

    model(torch.zeros(2, 3, 8, 8))
    curve = trainer.fit(model, images, labels, cfg, loss_fn=loss)
    # 10 steps an epoch, 100 in all: the first two of epoch 1 and the last two of epoch 10
    assert [s for s, _ in seen] == [0, 1, 98, 99]
    assert all(n == DEV.batch_size for _, n in seen)
    assert [p["epoch"] for p in curve] == [1, 10]
    assert curve[-1]["lr"] == pytest.approx(0.1 * lr_factor(cfg, 99, 100, 10))
    assert curve[-1]["lr"] < 0.001 < curve[0]["lr"]  # the cosine's end was reached
    assert trainer.work[-1] == {"phase": "train", "epochs": 10, "images_per_epoch": 400,
                                "steps_per_epoch": 10, "batch_size": 40}


def test_dev_evaluation_computes_a_few_rows_and_keeps_every_row():
    trainer = Trainer(CIFAR10_MEAN, CIFAR10_STD, device="cpu", loops=devrun.Loops(DEV))
    calls: list[int] = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    model.register_forward_hook(lambda _m, inp, _o: calls.append(len(inp[0])))
    images = torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8)
    logits = trainer.logits(model, images)
    assert logits.shape == (100, 10) and sum(calls) == DEV.eval_images
    assert torch.equal(logits[DEV.eval_images:2 * DEV.eval_images], logits[:DEV.eval_images])
    assert trainer.work[-1] == {"phase": "eval", "images": 100}


# ------------------------------------------------------------------ cells at their real configuration
def full_cifar() -> Path:
    """The real CIFAR-10 (the full preset's 50,000 images); CI has it under $BDBENCH_DATA."""
    from benchmark.data import default_cache_dir, load_dataset

    root = default_data_root()
    try:
        load_dataset("cifar10", root, default_cache_dir(), download=False)
    except DataNotFoundError:
        pytest.skip(f"CIFAR-10 not found under {root} (set BDBENCH_DATA)")
    return root


def dev_grid(tmp_path: Path, *args: str, results: str = "res") -> tuple[int, list[dict]]:
    code = main(["--fast-dev-run", "--executor", "serial", "--results", str(tmp_path / results),
                 "--data-root", str(full_cifar()), "--no-download", *args])
    folder = tmp_path / results / devrun.FOLDER / "records"
    return code, [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def failures(records: list[dict]) -> list[str]:
    return [r["error"] for r in records if r["status"] != "ok"]


def own_methods() -> tuple[list[str], list[str]]:
    """The suite's attacks and defenses, without those other tests' plugins registered."""
    from benchmark.catalog import catalog

    own = catalog(builtin=True)
    return own["attacks"], list(own["defenses"])


def test_committed_work_counts_cover_every_cell_of_the_full_grid():
    """A fresh clone estimates the full grid: every cell's development run (its id at today's
    methods and presets) has committed work counts. A changed method or preset fails here until
    its counts are made again (``python -m benchmark.cost work``)."""
    from benchmark.cli import dev_twin
    from benchmark.cost import committed_work
    from benchmark.grid import expand_grid
    from benchmark.spec import CellSpec

    committed = committed_work()
    specs = [CellSpec.from_config(c) for c in expand_grid("full", *own_methods(), [0], [])]
    missing = [f"{s.attack}/{s.defense}" for s in specs if dev_twin(s)[0] not in committed]
    assert len(specs) == 345 and not missing, (
        f"{len(missing)} full-grid cell(s) without committed work counts, e.g. {missing[:5]}: run "
        "python run_benchmark.py --grid full --fast-dev-run --results R, then "
        "python -m benchmark.cost work --results R")


def test_a_fresh_clone_estimates_the_full_grid_from_a_published_calibration(tmp_path, capsys):
    """No development run in the results folder: the committed counts over the calibration's
    img/s, for all 345 cells, and the output says where the img/s come from."""
    from benchmark.cli import dev_twin
    from benchmark.cost import committed_work, grid_units, units
    from benchmark.grid import expand_grid
    from benchmark.spec import CellSpec

    calibration = Path(__file__).parents[1] / "docs/results/perf/calibration-a100-published.json"
    attacks, defenses = own_methods()
    assert main(["--grid", "full", "--dry-run", "--results", str(tmp_path / "fresh"), "--calibration",
                 str(calibration), "--attacks", ",".join(attacks), "--defenses", ",".join(defenses)]) == 0
    out = capsys.readouterr().out
    assert "~?" not in out and out.count("  todo  ") == 345
    assert "work counts: 345 from the committed development runs" in out
    assert "img/s from a published figure, not measured here" in out
    hours = float(out.split("estimated time to run on NVIDIA A100: ")[1]
                  .split("(")[1].split()[0])
    speed = json.loads(calibration.read_text())["img_per_s"]["resnet18(width=64) 32px auto"]
    committed = committed_work()
    ids = [dev_twin(CellSpec.from_config(c))[0] for c in expand_grid("full", attacks, defenses, [0], [])]
    assert hours == pytest.approx(sum(grid_units([committed[i] for i in ids])) / speed / 3600, abs=0.01)
    # each shared artifact (a poisoned set, a backdoored or LGA model) counts once in the grid
    assert sum(grid_units([committed[i] for i in ids])) < 0.7 * sum(units(committed[i]) for i in ids)


def test_another_datasets_estimate_scales_cifar10s_counts_by_its_training_set(tmp_path, capsys):
    """GTSRB's cells have no development run committed: each counts as its CIFAR-10 twin with
    39,209 / 50,000 of the images, on the same 32 px speed; Tiny-ImageNet's 64 px images have a
    speed of their own (a quarter of 32 px's: four times the FLOPs)."""
    from benchmark.cost import speed_key
    from benchmark.spec import CellSpec

    calibration = Path(__file__).parents[1] / "docs/results/perf/calibration-a100-published.json"
    grid = ["--grid", "full", "--dry-run", "--calibration", str(calibration), "--attacks", "badnets,blended",
            "--defenses", "no_defense,pipd,abl,scale_up"]

    def hours(dataset: str) -> tuple[float, str]:
        assert main([*grid, "--datasets", dataset, "--results", str(tmp_path / dataset)]) == 0
        out = capsys.readouterr().out
        total = float(out.split("estimated time to run on NVIDIA A100: ")[1].split("(")[1].split()[0])
        return total, out

    cifar, _ = hours("cifar10")
    gtsrb, out = hours("gtsrb")
    assert "~?" not in out and "8 scaled from CIFAR-10's by training-set size (gtsrb x0.784" in out
    assert gtsrb == pytest.approx(cifar * 39_209 / 50_000, abs=0.01)
    tiny, out = hours("tiny_imagenet")
    assert tiny == pytest.approx(cifar * 2 * 23_070 / 5_768, abs=0.02)
    spec = CellSpec.from_config(resolve_cell("full", "badnets", "pipd", 0, [], dataset="tiny_imagenet"))
    assert speed_key(spec) == "resnet18(width=64) 64px auto"


@pytest.mark.slow
def test_covering_subset_of_the_full_grid_runs_on_the_cpu(tmp_path, capsys):
    """Every attack once (No Defense) and every defense and detector once (BadNets), at the full
    preset: width 64, all 50,000 images, every phase from its first to its last epoch."""
    from benchmark.catalog import catalog

    # the suite's own methods, not the plugins other tests registered in this process
    own = catalog(builtin=True)
    attacks, builtin = own["attacks"], list(own["defenses"])
    code, recs = dev_grid(tmp_path, "--grid", "full", "--attacks", ",".join(attacks),
                          "--defenses", "no_defense")
    assert code == 0, failures(recs)
    code, more = dev_grid(tmp_path, "--grid", "full", "--attacks", "badnets", "--defenses", ",".join(builtin))
    assert code == 0, failures(more)
    by_cell = {(r["config"]["attack"], r["config"]["defense"]): r for r in recs + more}
    assert {a for a, d in by_cell if d == "no_defense"} == set(attacks) and len(attacks) == 15
    assert {d for a, d in by_cell if a == "badnets"} == set(builtin) and len(builtin) == 23
    plain = by_cell["badnets", "no_defense"]
    assert plain["config"]["model_params"]["width"] == 64 and plain["attack_info"]["n_train"] == 50_000
    assert [p["epoch"] for p in plain["curves"]["train"]] == [1, 200]
    assert plain["fast_dev_run"]["work"][0]["steps_per_epoch"] == 391  # the real schedule's steps
    asd = by_cell["badnets", "asd"]["curves"]["mixmatch"]
    assert [(p["epoch"], p["stage"]) for p in asd] == [(1, 1), (60, 1), (61, 2), (90, 2), (91, 3), (120, 3)]
    dbd = by_cell["badnets", "dbd"]["curves"]
    assert [p["epoch"] for p in dbd["simclr"]] == [1, 100] and len(dbd["mixmatch"]) == 2
    # kept apart: the results folder itself holds no record, and a report leaves them out
    assert not (tmp_path / "res" / "records").exists()
    # the dry-run's estimate: every cell with a development run, from its work over a calibration
    from benchmark.cost import speed_key, units
    from benchmark.progress import duration
    from benchmark.spec import CellSpec

    spec = CellSpec.from_config({k: v for k, v in plain["config"].items() if k != "fast_dev_run"})
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"device_kind": "a test GPU", "img_per_s": {speed_key(spec): 5000.0}}))
    capsys.readouterr()
    assert main(["--grid", "full", "--attacks", "badnets", "--defenses", "no_defense", "--dry-run",
                 "--results", str(tmp_path / "res"), "--calibration", str(calibration)]) == 0
    out = capsys.readouterr().out
    seconds = units(plain["fast_dev_run"]["work"]) / 5000.0
    assert seconds > 200 * 50_000 / 5000.0  # 200 epochs of 50,000 images, and evaluation
    assert f"{spec.id}  todo    resnet18 cifar10/badnets/no_defense seed 0  ~{duration(seconds)}" in out
    assert f"estimated time to run on a test GPU: {duration(seconds)}" in out
    # the committed work counts (benchmark/work/full.json) are these development runs' counts
    from benchmark.cost import committed_work, ledger

    committed = committed_work()

    def same(old: list[dict] | None, new: list[dict]) -> bool:
        """The same phases, epochs and artifacts; sizes within 0.1%, or the cell's whole work
        within 0.5%: a split's size follows the model's floats, which differ between thread
        counts (D-BR's D_p by 1 of 12,596; VaB's suspects and CT's last distilled sets by a
        tenth, small phases of their cells)."""
        key = [(e["phase"], e.get("epochs"), e.get("artifact")) for e in new]
        size = [e.get("images_per_epoch", e.get("images")) for e in new]
        return old is not None and key == [(e["phase"], e.get("epochs"), e.get("artifact")) for e in old] \
            and (all(abs(a - b) <= 1e-3 * b for a, b in zip(
                [e.get("images_per_epoch", e.get("images")) for e in old], size, strict=True))
                 or abs(units(old) - units(new)) <= 5e-3 * units(new))

    stale = [f"{r['config']['attack']}/{r['config']['defense']}" for r in recs + more
             if not same(committed.get(r["id"]), ledger(r["fast_dev_run"]["work"]))]
    assert not stale, f"benchmark/work/full.json is stale for {stale}: python -m benchmark.cost work"
    capsys.readouterr()
    assert main(["report", "--results", str(tmp_path / "res" / devrun.FOLDER),
                 "--out", str(tmp_path / "rep")]) in (0, 2)
    assert "left out" in capsys.readouterr().err


@pytest.mark.slow
def test_imagenet_row_at_224_pixels(tmp_path):
    root = write_imagefolder(tmp_path / "inet", 20, 4, size=224)
    code = main(["--fast-dev-run", "--executor", "serial", "--results", str(tmp_path / "res"),
                 "--grid", "full", "--imagenet-root", str(root), "--set", "dataset=imagefolder",
                 "--attacks", "badnets", "--defenses", "no_defense,pipd,scale_up",
                 "--cache-dir", str(tmp_path / "cache")])
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / devrun.FOLDER / "records").glob("*.json")]
    assert code == 0, failures(recs)
    assert len(recs) == 3 and {r["config"]["model"] for r in recs} == {"resnet18_imagenet"}
    assert all(r["config"]["data"]["image_size"] == 224 for r in recs)


# ------------------------------------------------------------------ planted bugs, one of each kind
@pytest.mark.slow
def test_planted_schedule_indexed_past_its_end_is_caught(tmp_path, monkeypatch):
    """A per-epoch learning-rate table built for 100 epochs: smoke's 3 epochs never reach its
    end; the full preset's 200 do, and the development run gets there in seconds."""
    def table_schedule(cfg, step, total, steps_per_epoch):  # noqa: ANN001, ANN202
        table = [0.5 * (1 + math.cos(math.pi * e / 100)) for e in range(100)]
        return table[step // steps_per_epoch]

    monkeypatch.setattr("benchmark.train.lr_factor", table_schedule)
    cell = ["--attacks", "badnets", "--defenses", "no_defense"]
    assert dev_grid(tmp_path, "--grid", "smoke", *cell)[0] == 0
    code, recs = dev_grid(tmp_path, "--grid", "full", *cell)
    assert code == 1 and any("IndexError" in e for e in failures(recs))


@pytest.mark.slow
def test_planted_pool_larger_than_a_class_is_caught(tmp_path, monkeypatch):
    """ASD's stage-1 pool taken with topk, which assumes every class holds the pool's size: at the
    full preset it grows to 110 a class by epoch 60, more than a small ImageNet subset has."""
    def strict_pool(losses, labels, trusted, n, num_classes):  # noqa: ANN001, ANN202
        pool = trusted.clone()
        for c in range(num_classes):
            rows = ((labels == c) & ~trusted).nonzero().flatten()
            pool[rows[(-losses[rows]).topk(n).indices]] = True
        return pool

    root = write_imagefolder(tmp_path / "inet", 20, 2, size=64)

    def run(results: str) -> tuple[int, list[dict]]:
        code = main(["--fast-dev-run", "--executor", "serial", "--results", str(tmp_path / results),
                     "--grid", "full", "--imagenet-root", str(root), "--set", "dataset=imagefolder",
                     "--set", "data.image_size=64", "--attacks", "badnets", "--defenses", "asd",
                     "--cache-dir", str(tmp_path / "cache")])
        folder = tmp_path / results / devrun.FOLDER / "records"
        return code, [json.loads(p.read_text()) for p in folder.glob("*.json")]

    code, recs = run("clean")  # the real pool: stage 1 takes what a class has
    assert code == 0 and [p["pool"] for p in recs[0]["curves"]["mixmatch"]][:2] == [100, 200]
    monkeypatch.setattr("defenses.asd.class_aware_pool", strict_pool)
    code, recs = run("res")
    assert code == 1 and any("selected index k out of range" in e for e in failures(recs)), failures(recs)


@pytest.mark.slow
def test_planted_shape_only_width_64_produces_is_caught(tmp_path, monkeypatch):
    """DBD's projection head sized for the quick preset's 128 features: quick passes, the full
    preset's width 64 (512 features) does not."""
    import defenses.dbd as dbd

    original = dbd.projection_head
    monkeypatch.setattr(dbd, "projection_head", lambda dim: original(128))
    cell = ["--attacks", "badnets", "--defenses", "dbd"]
    assert dev_grid(tmp_path, "--grid", "quick", *cell)[0] == 0
    code, recs = dev_grid(tmp_path, "--grid", "full", *cell)
    assert code == 1 and any("shapes cannot be multiplied" in e for e in failures(recs)), failures(recs)


@pytest.mark.slow
def test_planted_cache_key_collision_between_presets_is_caught(tmp_path, monkeypatch):
    """The LGA model keyed without the data, model and recipe: quick's model would be loaded by
    the full preset's cells; the development run refuses the artifact and names both presets."""
    from benchmark.losses import lga_loss
    from defenses.base import DefenseContext

    cell = ["--attacks", "badnets", "--defenses", "pipd"]
    assert dev_grid(tmp_path, "--grid", "quick", *cell, results="clean")[0] == 0
    assert dev_grid(tmp_path, "--grid", "full", *cell, results="clean")[0] == 0  # no false alarm

    def lga_model(self, cfg, gamma, batch_mean):  # noqa: ANN001, ANN202
        key = {"attack": self.cache_key["attack"], "seed": self.seed, "phase": "lga"}
        return self.trained_once("models", key, cfg, lga_loss(gamma, batch_mean), "LGA isolation")

    monkeypatch.setattr(DefenseContext, "lga_model", lga_model)
    assert dev_grid(tmp_path, "--grid", "quick", *cell)[0] == 0
    code, recs = dev_grid(tmp_path, "--grid", "full", *cell)
    assert code == 1 and any("ArtifactCollision" in e and "'quick'" in e for e in failures(recs))


def test_dev_run_cells_never_share_ids_or_artifact_keys_with_real_cells(tmp_path):
    from benchmark.cell import Runtime, make_attack
    from benchmark.config import cell_id, resolve_cell
    from benchmark.data import load_dataset
    from benchmark.spec import CellSpec

    ds = load_dataset("cifar10", write_imagefolder(tmp_path / "c", 4, 2), tmp_path / "cache")
    rt = Runtime(results=tmp_path / "res")
    real = resolve_cell("smoke", "badnets", "pipd", 0, [])
    dev = devrun.mark(real)
    assert cell_id(dev) != cell_id(real)
    dev_spec, real_spec = CellSpec.from_config(dev), CellSpec.from_config(real)
    assert make_attack(dev_spec, ds, rt).ctx.cache_key != make_attack(real_spec, ds, rt).ctx.cache_key
