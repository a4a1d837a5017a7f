"""Bad input is refused before anything runs: one line on stderr, exit 2, the results folder
untouched (table-driven: each row is one mistake a user made)."""

import json
import re
import tarfile
from pathlib import Path

import pytest

from benchmark.cli import main
from tests.test_cli import TINY

pytestmark = pytest.mark.faults


def grid(tiny_cifar, tmp_path, *extra):
    return ["--grid", "smoke", "--executor", "serial", "--no-download",
            "--data-root", str(tiny_cifar), "--cache-dir", str(tmp_path / "cache"),
            "--results", str(tmp_path / "res"), "--attacks", "badnets",
            "--defenses", "no_defense,pipd", *TINY, *extra]


BAD = [
    (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "-1"], "--seeds must be non-negative"),
    (["--set", "train.epochs=-1"], "train.epochs: must be >= 1"),
    (["--set", "train.epochs=2.5"], "train.epochs: expected int"),
    (["--set", "train.batch_size=0"], "train.batch_size: must be >= 1"),
    (["--set", "model.width=0"], "model.width: must be >= 1"),
    (["--set", "eval.curve_size=0"], "eval.curve_size: must be >= 1"),
    (["--set", "badnets.target=10"], "target class 10 outside 0..9"),
    (["--set", "pipd.rounds=0"], "pipd.rounds: must be >= 1"),
    (["--set", "pipd.jenks_method=foo"], "valid choices: exact, jenkspy"),
    (["--defenses", "dbd", "--set", "dbd.crop_mode=wrap"], "valid choices: zeros, reflect"),
    # a defense (attack) outside the grid: its value is still checked
    (["--set", "dbd.crop_mode=wrap"], "valid choices: zeros, reflect"),
    (["--set", "refool.ghost_rate=2"], "refool.ghost_rate: must be"),
    (["--set", "pipd.layers=foo"], "pipd.layers: expected a list of str or null"),
    (["--set", "pipd.top_k=abc"], "pipd.top_k: expected int or null"),
    (["--set", "data.train_size=abc"], "data.train_size: expected int"),
    (["--attacks", "sig", "--set", "attack.rate=0.2"], "sig: rate 0.2 asks for 40 poisoned"),
]


# a check that needs the dataset decodes it first, and a decode that outlasts a second prints
# its progress (how long depends on the machine): the error is then the one other line
PROGRESS = re.compile(r"^\s*decode \w+ \d+/\d+  step \d+/\d+  ETA ")


def error_line(capsys) -> str:
    """The one line of the error on stderr; every other line must be decode progress."""
    *before, last = capsys.readouterr().err.strip().splitlines()
    assert all(PROGRESS.match(line) for line in before), before
    assert last.startswith("error: "), last
    return last


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_option_is_one_line_and_exit_2(tiny_cifar, tmp_path, capsys, extra, message, faults):
    assert main(grid(tiny_cifar, tmp_path, *extra)) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "res").exists()
    faults["bad inputs refused"] += 1


def test_unusable_folders_and_archives_are_refused(tiny_cifar, tmp_path, capsys, faults):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    not_tar = tmp_path / "cifar10.tar.gz"
    not_tar.write_bytes(b"not an archive at all" * 100)
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(tiny_cifar, arcname="cifar10")
    truncated = tmp_path / "cifar10-cut.tar.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cases = [
        (["--results", str(a_file)], "--results", "is a file, not a folder"),
        (["--cache-dir", str(a_file)], "--cache-dir", "is a file, not a folder"),
        (["--data-root", str(not_tar)], "--data-root", "not a readable image archive"),
        (["--data-root", str(truncated)], "--data-root", "not a readable image archive"),
    ]
    for extra, _, message in cases:
        args = grid(tiny_cifar, tmp_path, *extra)
        assert main(args) == 2, extra
        assert message in error_line(capsys), extra
        assert not (tmp_path / "res").exists()
        assert not [d for d in tmp_path.glob("cache/datasets/*") if d.is_dir()]  # none half-decoded
        faults["bad inputs refused"] += 1


def test_a_set_outside_the_grid_is_noted(tiny_cifar, tmp_path, capsys):
    args = grid(tiny_cifar, tmp_path, "--set", "dbd.crop_mode=reflect", "--set", "pipd.rounds=2",
                "--dry-run")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("note: --set dbd.crop_mode=reflect applies to no cell of this grid "
            "(defenses: no_defense, pipd)") in err
    assert "pipd.rounds" not in err  # inside the grid: no note
    # an outside component's keys are checked together, and re-poisoning with a defense that can
    args = grid(tiny_cifar, tmp_path, "--set", "refool.n_reflections=2000", "--set",
                "refool.n_candidates=3000", "--set", "wanet.repoison_every_epoch=true", "--dry-run")
    assert main(args) == 0
    assert capsys.readouterr().err.count("applies to no cell of this grid (attacks: badnets)") == 3


def test_repeated_names_and_seeds_are_one_cell(tiny_cifar, tmp_path, capsys):
    args = grid(tiny_cifar, tmp_path, "--attacks", "badnets,badnets", "--seeds", "0,0",
                "--dry-run")
    assert main(args) == 0
    assert "2 cell(s): 0 done, 2 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_two_grids_on_one_results_folder_train_each_cell_once(tiny_cifar, tmp_path, faults):
    import subprocess
    import sys

    args = [sys.executable, "run_benchmark.py", *grid(tiny_cifar, tmp_path, "--attacks",
                                                       "badnets,blended")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    both = "\n".join(outs)
    started = [line for line in both.splitlines() if line.startswith("[") and line.endswith(" ...")]
    cells = {line.split("] ", 1)[1] for line in started}
    assert len(started) == len(cells) == 4, both  # every cell trained once, over both processes
    records = list((tmp_path / "res" / "records").glob("*.json"))
    assert len(records) == 4
    assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
    faults["concurrent grids"] += 1
    faults["cells run twice"] += len(started) - len(cells)


def test_a_record_missing_keys_counts_as_not_done(tmp_path, capsys):
    from benchmark.store import RECORD_KEYS, ResultStore

    store = ResultStore(tmp_path)
    store.write({"id": "abc", "status": "ok", "config": {}, "timings": {}})  # no metrics
    assert store.status("abc") == "todo"
    assert "missing metrics" in capsys.readouterr().err
    store.write({"id": "abd", "status": "ok", "config": {}, "timings": {},
                 "metrics": {"ca": 0.5, "asr": 0.1}})
    assert store.read("abd")["schema"] == 1 and store.status("abd") == "ok"
    docs = (Path(__file__).parents[1] / "docs" / "running.md").read_text()
    assert all(f"`{key}`" in docs for key in RECORD_KEYS)  # the docs list the same keys
