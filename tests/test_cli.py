"""End to end through the CLI on a tiny synthetic CIFAR-shaped dataset."""

import json

import pytest
import torch

from benchmark.cli import main

TINY = ["--set", "data.train_size=200", "--set", "data.test_size=60", "--set", "model.width=4",
        "--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "eval.curve_size=20",
        "--set", "pipd.pre_epochs=1", "--set", "pipd.selective_epochs=1", "--set", "pipd.rounds=2",
        "--set", "attack.rate=0.1"]


@pytest.fixture()
def args(tiny_cifar, tmp_path):
    return ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar),
            "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "res"),
            "--attacks", "badnets", "--defenses", "no_defense,pipd", *TINY]


def records(tmp_path):
    return {p.name: json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")}


@pytest.mark.slow
def test_grid_runs_writes_records_and_rerun_skips(args, tmp_path, capsys):
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Table 1 style" in out and "Table 2 style" in out
    recs = records(tmp_path)
    assert len(recs) == 2
    pipd = next(r for r in recs.values() if r["config"]["defense"] == "pipd")
    assert pipd["status"] == "ok" and pipd["config"]["attack"] == "badnets"
    for key in ("ca", "asr", "tpr", "fpr", "r_acc", "auroc"):
        assert 0.0 <= pipd["metrics"][key] <= 1.0
    assert {"round_1", "round_2", "seed_poison", "seed_benign"} <= set(pipd["isolation"]["masks"])
    assert pipd["attack_info"]["n_poisoned"] == 20
    assert len(pipd["curves"]["pre_isolation"]) == 1 and "ca" in pipd["curves"]["selective"][0]
    assert pipd["versions"]["torch"] and pipd["hardware"]["device"] == "cpu"
    assert pipd["config"]["train"]["precision"] == "auto" and pipd["hardware"]["precision"] == "fp32"
    assert pipd["data_source"].startswith("cifar10-imagefolder")
    mtimes = {p: (tmp_path / "res" / "records" / p).stat().st_mtime_ns for p in recs}

    assert main([*args, "--report", str(tmp_path / "rep")]) == 0  # done: skipped, not rewritten
    out = capsys.readouterr().out
    assert "2 already done, 0 to run" in out and f"report: {tmp_path / 'rep' / 'index.html'}" in out
    assert (tmp_path / "rep" / "tables" / "table1.md").is_file()
    assert mtimes == {p: (tmp_path / "res" / "records" / p).stat().st_mtime_ns for p in recs}

    assert main([*args, "--dry-run"]) == 0
    assert "2 cell(s): 2 done, 0 to run" in capsys.readouterr().out


FAILING = '''
from defenses import Defense, register_defense

@register_defense
class Exploding(Defense):
    name = "exploding_defense"

    def run(self, ctx):
        raise RuntimeError("kaboom")
'''


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_rest_go_on(args, tmp_path, capsys):
    plugin = tmp_path / "exploding.py"
    plugin.write_text(FAILING)
    code = main([*args, "--plugin", str(plugin), "--defenses", "exploding_defense,no_defense"])
    assert code == 1
    recs = list(records(tmp_path).values())
    by_def = {r["config"]["defense"]: r for r in recs}
    assert by_def["exploding_defense"]["status"] == "failed"
    assert "RuntimeError: kaboom" in by_def["exploding_defense"]["error"]
    assert by_def["no_defense"]["status"] == "ok"
    assert "1 failed cell(s)" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--attacks", "nope"], "unknown attack 'nope'; valid choices"),
    (["--defenses", "pipd,abc"], "unknown defense 'abc'"),
    (["--defenses", "loss_spread"],
     "(a defense of your own is named with --plugin FILE, which registers it)"),
    (["--grid", "huge"], "unknown grid 'huge'"),
    (["--set", "attack.rate=0"], "poison rate must be in (0, 1)"),
    (["--set", "train.nope=1"], "unknown --set key 'train.nope'"),
    (["--seeds", "a,b"], "--seeds expects comma-separated integers"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, tmp_path, capsys, extra, message):
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "res").exists()


def test_a_plugin_parameter_outside_its_declared_range_is_refused_in_one_line(args, tmp_path, capsys):
    """The example plugin declares ``ratio`` within (0, 1) in its field metadata, as the
    suite's own methods do: a value outside is checked like a built-in option's."""
    from pathlib import Path

    plugin = str(Path(__file__).parents[1] / "examples" / "loss_filter.py")
    assert main([*args, "--plugin", plugin, "--defenses", "loss_filter",
                 "--set", "loss_filter.ratio=1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: loss_filter.ratio: must be <= 1, got 1.5"
    assert not (tmp_path / "res").exists()


def test_missing_dataset_exits_2(tmp_path, capsys):
    code = main(["--grid", "smoke", "--executor", "serial", "--no-download", "--data-root",
                 str(tmp_path / "void"), "--results", str(tmp_path / "res")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "CIFAR-10 not found under" in err and "\n" not in err
    assert not (tmp_path / "res" / "records").exists()


def test_plugin_errors_exit_2(args, tmp_path, capsys):
    bad = tmp_path / "nothing.py"
    bad.write_text("VALUE = 1\n")
    assert main([*args, "--plugin", str(bad)]) == 2
    assert "registered nothing" in capsys.readouterr().err


@pytest.mark.slow
def test_every_attack_runs_end_to_end_and_model_artifacts_are_reused(args, tmp_path, capsys):
    fast = ["--set", "cl.ref_epochs=1", "--set", "cl.steps=2", "--set", "dynamic.mask_epochs=1",
            "--set", "dynamic.epochs=1", "--set", "dynamic.width=4", "--set", "trojan.ref_epochs=1",
            "--set", "trojan.optimize_steps=3", "--set", "narcissus.ref_epochs=1",
            "--set", "narcissus.rounds=1"]
    assert main([*args, "--attacks", "all", "--defenses", "no_defense", *fast]) == 0
    recs = list(records(tmp_path).values())
    attacks = {r["config"]["attack"] for r in recs}
    assert {"badnets", "trojan", "blended", "dynamic", "wanet", "sig", "cl", "adaptive_patch",
            "refool", "clean", "adaptive_blend", "tact", "badnets_all2all", "ftrojan",
            "narcissus"} <= attacks
    for r in recs:
        assert r["status"] == "ok", r.get("error")
        info = r["attack_info"]
        assert info["n_poisoned"] == (0 if r["config"]["attack"] == "clean" else 20)  # the fixture's rate
    by = {r["config"]["attack"]: r["attack_info"] for r in recs}
    assert by["wanet"]["n_cover"] == 40 and by["adaptive_patch"]["n_cover"] == 40
    assert by["adaptive_blend"]["n_cover"] == round(0.003 * by["adaptive_blend"]["n_train"])
    assert by["sig"]["clean_label"] and not by["badnets"]["clean_label"]
    cache = tmp_path / "res" / "cache"
    assert len(list((cache / "generators").glob("*.pt"))) == 1  # Dynamic's generator, once
    assert len(list((cache / "models").glob("*.pt"))) == 1  # one clean reference: CL, Trojan, Narcissus
    assert len(list((cache / "triggers").glob("*.pt"))) == 2  # Trojan's and Narcissus's optimised triggers
    assert len(list((cache / "refool").glob("*.pt"))) == 1  # Refool's reflection selection
    assert len(list((cache / "backdoored").glob("*.pt"))) == 15  # each attack's No Defense model


@pytest.mark.slow
def test_repoisoning_every_epoch_runs_no_defense_on_the_fixed_sets_artifacts(args, tmp_path):
    run = [*args, "--attacks", "wanet", "--defenses", "no_defense", "--set", "train.epochs=2"]
    assert main(run) == 0
    assert main([*run, "--set", "attack.repoison_every_epoch=true"]) == 0
    recs = sorted(records(tmp_path).values(), key=lambda r: "threat_model" in r["attack_info"])
    fixed, fresh = recs
    assert fresh["status"] == "ok" and "training-time control" in fresh["attack_info"]["threat_model"]
    assert all("data_s" in p for p in fresh["curves"]["train"])
    assert not any("data_s" in p for p in fixed["curves"]["train"])
    assert "train_data_s" in fresh["timings"]["defense_phases"]
    cache = tmp_path / "res" / "cache"
    assert len(list((cache / "poisoned").glob("*.pt"))) == 1  # the epoch-0 set: shared
    assert len(list((cache / "backdoored").glob("*.pt"))) == 2  # two trainings
    assert main([*args, "--attacks", "wanet", "--set", "attack.repoison_every_epoch=true"]) == 2


@pytest.mark.slow
def test_trigger_gallery_writes_one_png_per_attack(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "gallery"
    code = main(["triggers", "--out", str(out), "--attacks", "badnets,sig,wanet,clean", "--n", "2",
                 "--data-root", str(tiny_cifar), "--cache-dir", str(tmp_path / "cache"),
                 "--results", str(tmp_path / "res"), "--set", "data.train_size=200"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["badnets.png", "sig.png", "wanet.png"]
    assert "clean: no poisoned samples" in capsys.readouterr().out  # drawn as nothing, not a crash
    assert main(["triggers", "--out", str(out), "--attacks", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err


def test_trigger_gallery_refuses_bad_input_before_writing(tmp_path, capsys):
    out = tmp_path / "gallery"
    assert main(["triggers", "--out", str(out), "--attacks", "badnets",
                 "--set", "badnets.pattern=nope"]) == 2
    assert "pattern" in capsys.readouterr().err
    assert main(["triggers", "--out", str(out), "--attacks", "badnets", "--no-download",
                 "--data-root", str(tmp_path / "nothing"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "download disabled" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_fault_ratio_study_builds_the_seed_from_the_ground_truth(args, tmp_path):
    # 200 images, 10% poisoned, p = 1%: a seed of 2, half of it benign
    assert main([*args, "--defenses", "pipd", "--set", "pipd.fault_ratio=0.5"]) == 0
    (rec,) = records(tmp_path).values()
    assert rec["defense_info"]["ground_truth_used"] is True
    assert rec["isolation"]["masks"]["seed_poison"]["precision"] == 0.5
    assert rec["isolation"]["masks"]["seed_poison"]["n_isolated"] == 2


@pytest.mark.slow
def test_sweep_runs_each_value_once_and_labels_the_cells(args, capsys):
    assert main([*args, "--sweep", "defense.rounds=[1,2]", "--sweep", "attack.rate=[0.1,0.2]",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 cell(s)" in out  # no_defense x 2 rates + pipd x 2 rates x 2 rounds
    pipd = [line for line in out.splitlines() if "badnets/pipd seed 0" in line]
    assert len(pipd) == 4 and any("badnets.rate=0.2" in x and "pipd.rounds=1 " in x for x in pipd)
    assert main([*args, "--sweep", "defense.rounds=2"]) == 2
    assert "--sweep expects KEY=[v1,v2,...]" in capsys.readouterr().err


@pytest.mark.slow
def test_detectors_inspect_the_cached_backdoored_model_and_models_can_be_saved(args, tmp_path, capsys):
    from benchmark.models import load_saved

    assert main([*args, "--defenses", "no_defense,scale_up,dbalfa,none", "--save-models",
                 "--set", "none.retrain_epochs=1"]) == 0
    by = {r["config"]["defense"]: r for r in records(tmp_path).values()}
    assert by["no_defense"]["defense_info"]["backdoored_model"] == "trained"
    for name in ("scale_up", "dbalfa"):  # trained once, by the first cell; inspected after
        assert by[name]["defense_info"]["inspected_model"] == "reused from cache"
        assert "inspected" in by[name]["metrics_of"] and "auroc" in by[name]["metrics"]
        assert 0 <= by[name]["isolation"]["best_threshold"]["tpr"] <= 1
    assert by["none"]["defense_info"]["title"].startswith("NONE") and "metrics_of" not in by["none"]
    assert "NONE TPR" in capsys.readouterr().out
    assert by["dbalfa"]["defense_info"]["n_validation"] == 6 and "validation" in by["dbalfa"]["eval_note"]
    assert by["dbalfa"]["attack_info"]["n_triggered_test"] == 54  # 60 test images, 6 of class 0
    saved = torch.load(by["no_defense"]["model_path"], weights_only=True)
    model = load_saved(by["no_defense"]["model_path"])
    assert saved["model"] == "resnet18" and saved["model_params"] == {"width": 4}
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_pipd_unlearning_scheme_for_fig5(args, tmp_path):
    assert main([*args, "--defenses", "pipd", "--sweep", 'pipd.training=["selective","unlearning"]',
                 "--set", "pipd.unlearn_epochs=2"]) == 0
    by = {r["config"]["defense_params"]["training"]: r for r in records(tmp_path).values()}
    assert set(by["unlearning"]["curves"]) == {"pre_isolation", "finetune", "unlearning"}
    unlearning = by["unlearning"]["curves"]["unlearning"]
    assert len(unlearning) == 2 and "ca" in unlearning[0]
    assert set(by["selective"]["curves"]) == {"pre_isolation", "selective"}
    assert by["unlearning"]["defense_info"]["pre_isolation_model"] == "reused from cache"


@pytest.mark.slow
def test_table1_leaves_detectors_out_and_table2_lists_them(args, capsys):
    assert main([*args, "--defenses", "no_defense,scale_up"]) == 0
    out = capsys.readouterr().out
    table1, table2 = out.split("Table 2 style")
    assert "scale_up" not in table1.split("Table 1 style")[1] and "scale_up TPR" in table2


@pytest.mark.slow
def test_dbd_and_asd_run_with_trusted_samples_from_outside_the_subset(args, tmp_path):
    tiny = ["--set", "dbd.simclr_epochs=1", "--set", "dbd.semi_iterations=2", "--set", "asd.iterations=2"]
    assert main([*args, "--defenses", "dbd,asd", *tiny]) == 0
    by = {r["config"]["defense"]: r for r in records(tmp_path).values()}
    assert by["asd"]["defense_info"]["trusted"].startswith("100 held-out training images")
    assert "excluded_rows" not in by["asd"]["isolation"]  # held-out: every row is judged
    assert by["dbd"]["isolation"]["isolated"]["n_isolated"] == 100  # the unlabelled half of 200
    assert set(by["dbd"]["curves"]) == {"simclr", "head", "mixmatch"}
    assert [c["stage"] for c in by["asd"]["curves"]["mixmatch"]] == [1, 1, 2, 3]
    # each epoch's split, read by the harness: DBD's unlabelled half, ASD's rows outside the pool
    assert all(0 <= p["split_tpr"] <= 1 for p in by["asd"]["curves"]["mixmatch"])
    assert by["asd"]["curves"]["mixmatch"][-1]["split_tpr"] == pytest.approx(by["asd"]["metrics"]["tpr"])
    assert all("split_fpr" in p for p in by["dbd"]["curves"]["mixmatch"])
    assert by["dbd"]["curves"]["mixmatch"][-1]["split_fpr"] == pytest.approx(by["dbd"]["metrics"]["fpr"])
    # where the time went: each phase, the per-epoch re-splits, the rest; they add up
    phases = by["dbd"]["timings"]["defense_phases"]
    assert {"simclr_s", "head_s", "mixmatch_s", "mixmatch_split_s", "curves_s", "other_s"} <= set(phases)
    assert sum(phases.values()) == pytest.approx(by["dbd"]["timings"]["defense_s"], rel=0.01)
    assert by["asd"]["timings"]["defense_phases"]["mixmatch_split_s"] > 0
    # again: SimCLR comes from the cache and shows apart, with what it cost when computed
    assert main([*args, "--defenses", "dbd", *tiny, "--set", "dbd.head_epochs=2"]) == 0
    again = next(r for r in records(tmp_path).values()
                 if r["config"]["defense"] == "dbd" and r["id"] != by["dbd"]["id"])
    assert again["timings"]["defense_phases"]["simclr_cached_s"] == pytest.approx(phases["simclr_s"])
    assert "simclr_s" not in again["timings"]["defense_phases"]


@pytest.mark.slow
def test_asd_without_held_out_images_trusts_clean_rows_and_leaves_them_out(args, tmp_path):
    no_subset = [a if a != "data.train_size=200" else "data.train_size=null" for a in args]
    assert main([*no_subset, "--defenses", "asd", "--set", "asd.iterations=2"]) == 0
    (rec,) = records(tmp_path).values()
    assert "ground-truth-clean training samples" in rec["defense_info"]["trusted"]
    assert rec["isolation"]["excluded_rows"] == 100
    assert rec["isolation"]["isolated"]["n_poisoned"] == 40  # 10% of 400: all poisoned are judged


@pytest.mark.slow
def test_demo_grid_runs_its_own_attacks_and_defenses(tmp_path, capsys):
    res = ["--results", str(tmp_path / "res"), "--dry-run"]
    assert main(res) == 0  # the default grid is the demo
    out = capsys.readouterr().out
    assert "6 cell(s)" in out
    assert all(f"cifar10/{a}/{d} seed 0" in out for a in ("badnets", "blended")
               for d in ("no_defense", "pipd", "pipd_median"))
    assert main([*res, "--defenses", "pipd"]) == 0  # the user's choice wins
    assert "2 cell(s)" in capsys.readouterr().out


def test_list_prints_the_registries_and_a_plugins_entries(tmp_path, capsys):
    from benchmark.catalog import catalog, listing

    assert main(["list"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == listing(catalog())
    assert "  pipd " in out and "scale_up" in out and "detector" in out
    assert main(["--list"]) == 0 and capsys.readouterr().out.strip() == out  # run's alias
    plugin = tmp_path / "mine.py"
    plugin.write_text(FAILING.replace("exploding_defense", "listed_defense"))
    assert main(["list", "--plugin", str(plugin)]) == 0
    assert "listed_defense" in capsys.readouterr().out
    assert "listed_defense" not in catalog(builtin=True)["defenses"]


def test_each_command_parses_its_own_options_and_run_is_the_default():
    from benchmark.cli import parse

    assert parse([]).command == "run" and parse([]).grid == "demo"
    assert parse(["--grid", "quick", "--seeds", "0,1"]).command == "run"
    assert parse(["run", "--grid", "quick"]).grid == "quick"
    args = parse(["report", "--out", "rep", "--compare", "mine"])
    assert (args.command, args.out, args.compare, args.baseline) == ("report", "rep", "mine", "pipd")
    assert parse(["triggers", "--out", "g", "--n", "2"]).n == 2
    assert parse(["list", "--plugin", "p.py"]).plugin == ["p.py"]
    for argv in (["report"], ["list", "--grid", "quick"], ["triggers", "--dry-run"]):
        with pytest.raises(SystemExit) as exc:  # argparse: a missing or foreign option, exit 2
            parse(argv)
        assert exc.value.code == 2


def test_a_dry_run_reads_each_cells_status_fresh(tmp_path, capsys):
    from benchmark.cell import failed_record
    from benchmark.config import cell_id
    from benchmark.spec import CellSpec
    from benchmark.store import ResultStore

    argv = ["--grid", "smoke", "--attacks", "badnets", "--defenses", "no_defense,pipd",
            "--results", str(tmp_path / "res"), "--dry-run"]
    assert main(argv) == 0
    assert "2 cell(s): 0 done, 2 to run" in capsys.readouterr().out
    spec = CellSpec.resolve("smoke", "badnets", "no_defense", 0)
    ResultStore(tmp_path / "res").write(failed_record(spec, "boom"))
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(cell_id(spec.to_config())))
    assert line.split()[1] == "failed"




def test_a_grid_over_several_models_skips_the_pairs_a_defense_refuses(tmp_path, capsys):
    base = ["--grid", "smoke", "--attacks", "badnets", "--results", str(tmp_path / "res"), "--dry-run"]
    models = "resnet18,vgg19_bn,preact_resnet18"
    assert main([*base, "--defenses", "no_defense,none", "--models", models]) == 0
    out, err = capsys.readouterr()
    assert "4 cell(s): 0 done, 4 to run" in out  # 6 pairs, NONE refuses VGG and PreAct
    assert "vgg19_bn cifar10/badnets/no_defense" in out and "vgg19_bn cifar10/badnets/none" not in out
    skipped = [x for x in err.splitlines() if x.startswith("skipped")]
    assert len(skipped) == 2 and all(x.startswith("skipped 1 cell(s): none cannot run on ") for x in skipped)
    assert main([*base, "--defenses", "none", "--models", "vgg19_bn"]) == 2  # nothing left to run
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: none cannot run on vgg19_bn: ")


@pytest.mark.slow
def test_every_defense_that_accepts_vgg_runs_on_it_and_the_rest_are_refused(tiny_cifar, tmp_path, capsys):
    from benchmark.catalog import catalog

    refused = ("none", "dbalfa", "psbd", "vab")  # what test_contracts says refuses VGG
    own = [d for d in catalog(builtin=True)["defenses"] if d not in refused]
    args = ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar), "--cache-dir",
            str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY, "--models", "vgg19_bn",
            "--attacks", "badnets"]
    assert main([*args, "--defenses", ",".join(own)]) == 0, capsys.readouterr().err[-2000:]
    assert len(list((tmp_path / "res" / "records").glob("*.json"))) == len(own)
    capsys.readouterr()
    assert main([*args, "--defenses", "none"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: none cannot run on vgg19_bn: ")
