"""Reports read records only: tables, paper values, figures, leaderboard, comparison, HTML."""

import json
import math
import shutil
import statistics
import subprocess

import pytest

from benchmark.config import cell_id, parse_sets, resolve_cell
from benchmark.reports import compare, leaderboard, records, render, tables


def record(attack, defense, seed=0, sets=(), preset="quick", **metrics):
    c = resolve_cell(preset, attack, defense, seed, parse_sets(list(sets)))
    rec = {"id": cell_id(c), "status": "ok", "config": c, "timings": {"total_s": 1.0},
           "metrics": {k: v / 100 for k, v in metrics.items()}, "isolation": {"masks": {}}}
    if "tpr" in metrics:
        rec["isolation"]["isolated"] = {"precision": metrics.pop("precision", 100) / 100}
    return rec


def frame(recs):
    return records.frame(recs)


def test_a_record_of_another_method_version_is_its_own_row(monkeypatch):
    """A record made before an attack's version bump must not merge with (or be averaged as)
    the current version: its row says which version made it."""
    from attacks import ATTACKS

    old = record("wanet", "no_defense", 0, ca=79.4, asr=12.8)
    monkeypatch.setattr(ATTACKS.get("wanet"), "version", ATTACKS.get("wanet").version + 1)
    new = record("wanet", "no_defense", 0, ca=80.0, asr=95.0)
    df = frame([old, new])
    labels = sorted(df["attack_label"])
    assert labels == ["wanet", f"wanet (v{old['config'].get('attack_version', 1)})"]
    t = tables.table1(df)
    assert t.mean.at[("cifar10", "wanet"), "no_defense ASR"] == pytest.approx(95.0)


def test_a_bf16_cell_is_its_own_column_never_averaged_with_fp32():
    """CUDA's ``auto`` precision trains in bf16 under the same config (and cell id) as an fp32
    CPU run: the tables must say which one a number comes from."""
    fp32 = record("badnets", "pipd", 0, ca=80, asr=2)
    bf16 = record("badnets", "pipd", 1, ca=90, asr=4)
    fp32["hardware"], bf16["hardware"] = {"precision": "fp32"}, {"precision": "bf16"}
    t = tables.table1(frame([fp32, bf16]))
    key = ("cifar10", "badnets")
    assert t.mean.at[key, "pipd CA"] == pytest.approx(80) and t.seeds.at[key, "pipd CA"] == 1
    assert t.mean.at[key, "pipd (bf16) CA"] == pytest.approx(90)


def test_an_attack_no_defense_did_not_learn_is_marked_and_left_out_of_averages_and_the_board():
    recs = [record("badnets", "no_defense", 0, ca=80, asr=99), record("badnets", "pipd", 0, ca=79, asr=2),
            record("blended", "no_defense", 0, ca=81, asr=100), record("blended", "pipd", 0, ca=80, asr=4),
            record("wanet", "no_defense", 0, ca=79, asr=12.8), record("wanet", "pipd", 0, ca=70, asr=1)]
    df = frame(recs)
    t = tables.table1(df)
    assert t.marks == {("cifar10", "wanet"): "not learned: 12.80"}
    assert t.mean.at[("cifar10", "average"), "pipd ASR"] == pytest.approx(3.0)  # wanet left out
    assert "| cifar10 | wanet (not learned: 12.80) |" in render.markdown(t)
    board = leaderboard.leaderboard(df)
    pipd = board.ranked[board.ranked["defense"] == "pipd"].iloc[0]
    assert pipd["coverage"] == "2/2" and pipd["score"] == pytest.approx(79.5 - 3.0)
    assert any("wanet" in n for n in board.notes)
    assert tables.table2(frame(recs[:2])).marks == {}


def test_table1_means_seeds_sets_the_paper_beside_and_sends_variants_to_their_study():
    recs = [record("blended", "pipd", 0, ca=80, asr=1), record("blended", "pipd", 1, ca=82, asr=3),
            record("blended", "no_defense", 0, ca=81, asr=100),
            record("badnets", "no_defense", 0, ["badnets.pattern=white"], ca=80.8, asr=88.7),
            record("badnets", "no_defense", 0, ca=80.5, asr=100),
            record("badnets", "pipd_median", 0, ca=79, asr=3),
            record("badnets", "pipd", 0, ["pipd.training=unlearning"], ca=60, asr=0)]
    df = frame(recs)
    t = tables.table1(df)
    key = ("cifar10", "blended")
    assert t.mean.at[key, "pipd CA"] == pytest.approx(81) and t.std.at[key, "pipd CA"] == pytest.approx(1)
    assert t.seeds.at[key, "pipd CA"] == 2
    assert t.paper.at[key, "pipd CA"] == pytest.approx(94.12)  # the paper's CIFAR-10 Blended row
    assert t.paper.at[key, "pipd ASR"] == pytest.approx(0.03)
    assert t.paper.at[key, "no_defense ASR"] == pytest.approx(100.0)
    # defaults only, No Defense first and PIPD last; every other record in exactly one study
    assert set(t.mean.index) == {("cifar10", "badnets"), ("cifar10", "blended"), ("cifar10", "average")}
    assert list(t.mean.columns) == ["no_defense CA", "no_defense ASR", "pipd CA", "pipd ASR"]
    studies = tables.studies(df)
    titles = [s.title for s in studies]
    assert titles == ["Study 1: variants of pipd, %", "Study 2: varies attack.pattern, %",
                      "Study 3: varies pipd.training, %"]
    assert sum(len(s.long()) for s in studies) == 2 + 2 + 2  # CA and ASR of each variant cell
    # a cell no record fills is empty, not zero
    assert t.mean.at[("cifar10", "badnets"), "pipd CA"] != t.mean.at[("cifar10", "badnets"), "pipd CA"]
    md = render.markdown(t)
    assert "| dataset | attack | no_defense | pipd |" in md
    assert "**2.00 ± 1.00**" in md  # PIPD's ASR is the row's best
    assert "| cifar10 | blended | 94.00 (-13.00) | 94.12 (-13.12) |" in md  # the paper's CA, our diff
    assert max(len(line) for line in md.splitlines() if line.startswith("|")) < 100
    assert "\\toprule" in render.latex(t) and "\\textbf{2.00 $\\pm$ 1.00}" in render.latex(t)


def test_tables_2_to_4_find_the_papers_numbers():
    recs = [record("refool", "pipd", tpr=99, fpr=1),
            record("trojan", "pipd", 0, ["pipd.fault_ratio=0.8", "pipd.selective_epochs=0"], tpr=99, fpr=2),
            record("badnets", "pipd", 0, ["attack.rate=0.2", "pipd.rounds=1"], ca=90, asr=50, tpr=99, fpr=0)]
    df = frame(recs)
    t2 = tables.table2(df)
    assert t2.paper.at[("cifar10", "refool"), "pipd TPR"] == pytest.approx(99.65)
    assert t2.paper.at[("cifar10", "refool"), "pipd FPR"] == pytest.approx(0.42)
    t3 = tables.table3(df)
    assert t3.paper.at[("cifar10", "trojan", 80), "pipd FPR"] == pytest.approx(0.62)
    assert ("cifar10", "trojan", 80) in t3.mean.index and ("cifar10", "trojan") not in t2.mean.index
    t4 = tables.table4(df)
    key = ("cifar10", "badnets badnets.rate=0.2", 1)
    assert t4.paper.at[key, "pipd CA"] == pytest.approx(92.98) and t4.mean.at[key, "pipd ASR"] == 50


def test_leaderboard_ranks_defenses_on_their_shared_attacks_with_no_defense_as_reference():
    """Known ranks: ABL (CA 80, ASR 5) and PIPD (82, 1) share BadNets only, where PIPD leads;
    No Defense is shown, never ranked; an isolation-only PIPD cell and a detector are not in
    the CA/ASR ranking; the detector has its own table."""
    recs = [record(a, d, s, ca=80, asr=asr) for a in ("badnets", "blended") for s in (0, 1)
            for d, asr in (("no_defense", 100), ("abl", 5))]
    recs += [record("badnets", "pipd", s, ca=82 + s, asr=1) for s in (0, 1)]
    recs.append(record("blended", "pipd_median", 0, ["pipd.selective_epochs=0"], ca=70, asr=99,
                       tpr=99, fpr=1))
    recs.append(record("badnets", "scale_up", 0, ca=80, asr=100, tpr=99, fpr=20))
    board = leaderboard.leaderboard(frame(recs))
    r = board.ranked
    assert list(r["defense"]) == ["no_defense", "pipd", "abl"] and list(r["rank"]) == ["ref", "1", "2"]
    assert board.shared == {"cifar10": ["badnets"]}
    pipd, abl = r.iloc[1], r.iloc[2]
    assert pipd["score"] == pytest.approx(81.5) and pipd["score_sd"] == pytest.approx(2 ** -0.5)
    assert pipd["coverage"] == "1/2" and abl["coverage"] == "2/2" and abl["score"] == pytest.approx(75)
    assert abl["DER"] == pytest.approx((95 / 100 + 1) / 2)
    assert pipd["ci_low"] > abl["ci_high"] or abl["score_sd"] == 0  # no overlap: no noise note
    assert not any("within noise" in n for n in board.notes)
    assert list(board.detectors["detector"]) == ["scale_up"] and board.detectors.iloc[0]["FPR"] == 20
    md = leaderboard.markdown(board)
    assert "Ranked on: badnets" in md and "| ref | no_defense |" in md


def test_leaderboard_says_when_neighbouring_ranks_are_within_noise_and_marks_scale_caveats():
    recs = [record("badnets", d, s, ca=80, asr=asr) for d, asrs in (("abl", (5, 9)), ("dbd", (9, 6)))
            for s, asr in enumerate(asrs)]  # scores 75, 71 against 71, 74: paired differences 4, -3
    board = leaderboard.leaderboard(frame(recs))
    assert [d for d in board.ranked["defense"]] == ["abl", "dbd †"]
    (note,) = [n for n in board.notes if "within noise" in n]
    assert "ranks 1 (abl) and 2 (dbd †) are within noise (difference 0.50" in note
    assert "over 2 paired seeds" in note
    assert any(n.startswith("† dbd") and "docs/findings/dbd-and-asd-at-quick.md" in n
               for n in board.notes)


def test_missing_lists_what_the_tables_and_the_leaderboard_lack_and_nothing_else(monkeypatch):
    from benchmark.reports.cli import missing_cells

    recs = [record(a, d, s, ca=80, asr=5) for a in ("badnets", "blended")
            for d, seeds in (("no_defense", (0, 1, 2)), ("pipd", (0, 1, 2)), ("abl", (0,)),
                             ("dbd", (0,)), ("scan", (0,)), ("pipd_q90", (0,))) for s in seeds]
    recs += [record("sig", d, 0, ca=80, asr=5) for d in ("no_defense", "pipd", "abl", "dbd")]
    lines = missing_cells(frame(recs), "quick")
    groups = {ln.split(": `")[0] for ln in lines}
    assert groups == {  # the ranked abl at the seeds pipd has; the tables: every pair at seed 0
        "cifar10: abl seed 1 on badnets, blended", "cifar10: abl seed 2 on badnets, blended",
        "cifar10: scan seed 0 on sig", "cifar10: pipd_q90 seed 0 on sig"}, groups
    # not wanted: dbd (marked †) and the variant pipd_q90 or the detector scan at seeds 1-2
    assert "--attacks badnets,blended --defenses abl --seeds 1`" in lines[0]
    from defenses import DEFENSES  # a record of an older version fills nothing

    monkeypatch.setattr(DEFENSES.get("abl"), "version", DEFENSES.get("abl").version + 1)
    groups = {ln.split(": `")[0] for ln in missing_cells(frame(recs), "quick")}
    assert "cifar10: abl seed 0 on badnets, blended, sig" in groups


def test_compare_with_a_detector_reads_isolation_only():
    recs = [record("badnets", "scan", s, ca=60, asr=90, tpr=95, fpr=2) for s in range(2)]
    recs += [record("badnets", "pipd", s, ca=80, asr=2, tpr=90, fpr=5) for s in range(2)]
    row = compare.compare(frame(recs), "scan", "pipd").iloc[0]
    assert math.isnan(row["dCA"]) and math.isnan(row["dASR"])  # the inspected model's, not comparable
    assert row["dTPR"] == pytest.approx(5) and row["dFPR"] == pytest.approx(-3)
    assert row["verdict"] == ("isolation only (CA / ASR not compared): scan better than pipd: "
                              "TPR higher, FPR lower")


def test_compare_pairs_by_seed_with_an_exact_sign_flip_test():
    assert compare.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert compare.sign_flip_p([1.0, -1.0]) == 1.0
    assert compare.sign_flip_p([2.0]) != compare.sign_flip_p([2.0])  # n/a with one seed
    recs = [record("badnets", d, s, ca=80 + (d == "abl"), asr=(10 if d == "abl" else 2) + s)
            for d in ("abl", "pipd") for s in range(3)]
    out = compare.compare(frame(recs), "abl", "pipd")
    row = out.iloc[0]
    assert row["seeds"] == 3 and row["dASR"] == pytest.approx(8) and row["dCA"] == pytest.approx(1)
    assert row["pASR"] == pytest.approx(0.25) and row["verdict"].startswith("mixed")


@pytest.mark.slow
def test_report_command_on_partial_and_empty_stores(tmp_path, capsys):
    from benchmark.cli import main

    store = tmp_path / "res" / "records"
    store.mkdir(parents=True)
    recs = [record("blended", "pipd", ca=80, asr=1, tpr=99, fpr=0.1),
            record("badnets", "no_defense", ca=80, asr=100),
            {**record("badnets", "abl"), "status": "failed", "error": "RuntimeError: boom"}]
    for r in recs:
        (store / f"{r['id']}.json").write_text(json.dumps(r))
    assert main(["report", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "open" in out and (tmp_path / "rep" / "index.html").exists()
    missing = (tmp_path / "rep" / "missing.md").read_text()
    assert "--attacks badnets --defenses pipd" in missing and "FAILED: RuntimeError: boom" in missing
    for name in ("table1", "table2", "table3", "table4", "robustness_isolation", "robustness_defense"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "rep" / "tables" / f"{name}.{ext}").exists()
    assert "Robustness: isolation TPR" in (tmp_path / "rep" / "robustness.html").read_text()
    assert "no records yet" in (tmp_path / "rep" / "tables" / "table3.md").read_text()
    assert (tmp_path / "rep" / "figures" / "fig1_isolation.png").exists()
    assert main(["report", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2")]) == 0
    assert "no defense records yet" in (tmp_path / "rep2" / "leaderboard.md").read_text()


@pytest.mark.slow
def test_html_leaderboard_renders_in_a_headless_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium where it can)")
    from benchmark.reports import cellpages, html

    recs = [record(a, d, ca=80, asr=asr) for a in ("badnets", "blended")
            for d, asr in (("no_defense", 100), ("abl", 5))]
    recs[1]["curves"] = {"train": [{"epoch": 1, "ca": 0.5, "asr": 0.9, "train_loss": 1.2},
                                   {"epoch": 2, "ca": 0.6, "asr": 0.1, "train_loss": 0.8}]}
    anchors = cellpages.write(recs, frame(recs), tmp_path / "cells")
    page = tmp_path / "index.html"

    def link(*labels):
        name = cellpages.anchor(*labels)
        return f"cells/index.html#{name}" if name in anchors else None

    page.write_text(html.page(leaderboard.leaderboard(frame(recs)), [tables.table1(frame(recs))], [],
                              "test report", [], link))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert 'id="leaderboard-cifar10"' in dom and "<b>abl</b>" in dom and "Table 1" in dom
    assert 'href="cells/index.html#cifar10--badnets--abl"' in dom
    cell = (tmp_path / "cells" / f"{recs[1]['id']}.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", cell], capture_output=True, text=True,
                         timeout=120).stdout
    assert "badnets / abl seed 0" in dom and 'alt="curves"' in dom and "Timings (s)" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 1000


@pytest.mark.slow
def test_the_example_plugin_runs_through_a_grid_and_compare(tiny_cifar, tmp_path, capsys):
    from pathlib import Path

    from benchmark.cli import main
    from tests.test_cli import TINY

    plugin = str(Path(__file__).parents[1] / "examples" / "loss_filter.py")
    common = ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar),
              "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY]
    assert main([*common, "--plugin", plugin, "--attacks", "badnets", "--seeds", "0,1",
                 "--defenses", "pipd,loss_filter", "--set", "loss_filter.probe_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["report", "--plugin", plugin, "--results", str(tmp_path / "res"), "--out",
                 str(tmp_path / "rep"), "--compare", "loss_filter", "--baseline", "pipd"]) == 0
    out = capsys.readouterr().out
    assert "loss_filter vs pipd" in out and "| cifar10 | badnets" in out
    assert (tmp_path / "rep" / "compare.md").exists()


def test_headline_puts_a_variant_beside_its_base_with_isolation_only_where_it_isolates():
    recs = [record("badnets", "no_defense", 0, ca=57.0, asr=94.0),
            record("badnets", "pipd", 0, ca=66.0, asr=4.0, tpr=100.0, fpr=0.2),
            record("badnets", "pipd", 1, ca=68.0, asr=6.0, tpr=98.0, fpr=0.4),
            record("badnets", "pipd_median", 0, ca=67.0, asr=5.0, tpr=99.0, fpr=0.1),
            record("badnets", "pipd", 0, sets=["pipd.rounds=2"], ca=1.0, asr=1.0, tpr=1.0, fpr=1.0)]
    text = tables.headline(frame(recs))
    head, rule, row, _, note = text.splitlines()
    assert head == ("| attack | no_defense CA / ASR | pipd_median CA / ASR | pipd_median TPR / FPR "
                    "| pipd CA / ASR | pipd TPR / FPR |")
    assert row == "| badnets | 57.00 / 94.00 | 67.00 / 5.00 | 99.00 / 0.10 | 67.00 / 5.00 | 99.00 / 0.30 |"
    assert note == "(mean of 1-2 seeds per cell; %)"  # the rounds=2 override is not a default cell


def test_isolation_grid_holds_every_isolating_method_and_only_those():
    """Detectors and isolating defenses get TPR / FPR (AUROC) per attack, averaged over seeds;
    a method that isolates nothing has no column, a missing AUROC prints as a dash."""
    recs = [record("badnets", "no_defense", 0, ca=80.0, asr=99.0),
            record("badnets", "cbd", 0, ca=62.0, asr=5.0),
            record("badnets", "ac", 0, ca=80.0, asr=99.0, tpr=97.0, fpr=0.2, auroc=98.0),
            record("badnets", "ac", 1, ca=80.0, asr=99.0, tpr=99.0, fpr=0.4, auroc=99.0),
            record("blended", "ac", 0, ca=80.0, asr=99.0, tpr=90.0, fpr=1.0, auroc=95.0),
            record("blended", "pipd", 0, ca=80.0, asr=1.0, tpr=99.7, fpr=0.03)]
    head, _, badnets, blended, _, note = tables.isolation(frame(recs)).splitlines()
    assert head == "| attack | ac TPR / FPR (AUROC) | pipd TPR / FPR (AUROC) |"
    assert badnets == "| badnets | 98.00 / 0.30 (98.50) |  |"
    assert blended == "| blended | 90.00 / 1.00 (95.00) | 99.70 / 0.03 (-) |"
    assert note == "(mean of 1-2 seeds per cell; %)"


def test_a_variant_with_fewer_attacks_does_not_shrink_the_shared_set():
    """PIPD and ABL share BadNets and Blended; a ``--set`` variant of PIPD and the registered
    variant ``pipd_median`` have BadNets only: the ranking stays on both attacks, and the
    variants are named as not ranked instead of cutting Blended out."""
    recs = [record(a, d, 0, ca=80, asr=asr) for a in ("badnets", "blended")
            for d, asr in (("no_defense", 100), ("abl", 5), ("pipd", 1))]
    recs.append(record("badnets", "pipd", 0, ["pipd.training=unlearning"], ca=50, asr=0))
    recs.append(record("badnets", "pipd_median", 0, ca=81, asr=1))
    board = leaderboard.leaderboard(frame(recs))
    assert board.shared == {"cifar10": ["badnets", "blended"]}
    assert list(board.ranked["defense"]) == ["no_defense", "pipd", "abl"]
    (note,) = [n for n in board.notes if "not ranked" in n]
    assert "pipd[training=unlearning] (lacks blended)" in note and "pipd_median (lacks blended)" in note


def test_seed_quantile_table_marks_misses_and_says_which_quantile_holds_on_every_row():
    """Quantile 1 is PIPD's max (also for records made before the option); a row per seed, each
    cell TPR / FPR, marked where it misses TPR >= 95 / FPR <= 2; the last row says yes only for
    a quantile that meets the bar on every row, and counts the rows a quantile that misses
    nowhere was not run on."""
    def iso(attack, q, tpr, fpr, seed=0, fault=None, pp=100.0):
        sets = ["pipd.selective_epochs=0"] + ([f"pipd.seed_quantile={q}"] if q != 1 else [])
        sets += [f"pipd.fault_ratio={fault}"] if fault is not None else []
        rec = record(attack, "pipd", seed, sets, ca=70.0, asr=99.0, tpr=tpr, fpr=fpr)
        rec["isolation"]["masks"]["seed_poison"] = {"precision": pp / 100}
        return rec

    recs = [iso("badnets", 1, 100.0, 0.0), iso("badnets", 0.5, 100.0, 0.0),
            iso("badnets", 0.75, 96.0, 1.0, seed=0), iso("badnets", 0.75, 98.0, 3.0, seed=1, pp=90.0),
            iso("blended", 1, 99.0, 0.1, fault=0.8, pp=20.0),
            iso("blended", 0.5, 98.8, 27.9, fault=0.8, pp=20.0),
            iso("blended", 0.75, 99.0, 0.5, fault=0.8, pp=20.0), iso("badnets", 0.9, 100.0, 0.0)]
    del recs[0]["config"]["defense_params"]["seed_quantile"]  # a record older than the option
    head, _, seed0, seed1, blended, verdict, _, note = tables.seed_quantiles(frame(recs)).splitlines()
    assert head == ("| preset | attack | fault ratio | seed | P_p precision | q = 0.5 | q = 0.75 | q = 0.9 "
                    "| q = 1 (max) |")
    assert seed0 == ("| quick | badnets | - | 0 | 100.0 | 100.00 / 0.00 | 96.00 / 1.00 | 100.00 / 0.00 "
                     "| 100.00 / 0.00 |")
    assert seed1 == "| quick | badnets | - | 1 | 90.0 |  | 98.00 / 3.00 **x** |  |  |"
    assert blended == ("| quick | blended | 0.8 | 0 | 20.0 | 98.80 / 27.90 **x** | 99.00 / 0.50 |  "
                       "| 99.00 / 0.10 |")
    assert verdict == ("| meets TPR >= 95 / FPR <= 2 on every row | | | | | no | no | not run on 2 "
                       "| not run on 1 |")
    assert note == "(TPR / FPR, %; P_p: the poisoned seed's precision)"


def test_only_pipd_and_its_variants_carry_a_seed_statistic_and_a_training_scheme():
    from benchmark.reports.records import row

    none = row(record("badnets", "none", 0, ["none.rounds=2"], ca=78, asr=2))
    q90 = row(record("badnets", "pipd_q90", 0, ca=79, asr=2))
    assert none["rounds"] == 2 and none["seed_quantile"] is None and none["training"] is None
    assert q90["seed_quantile"] == 0.9 and q90["training"] == "selective"


def test_fig5_draws_each_method_and_scheme_as_its_own_line_and_skips_isolation_only_cells():
    """A variant's (or a bf16 run's) selective training must not average into PIPD's line; a cell without
    selective epochs draws nothing; an (attack, seed) without both schemes has no panel."""
    from benchmark.reports.figures import fig5_lines

    def curve(*cas):
        return [{"ca": c / 100, "asr": 0.01} for c in cas]

    recs = [record("badnets", "pipd", 0), record("badnets", "pipd_q90", 0),
            record("badnets", "pipd", 0, ["pipd.training=unlearning"]),
            record("badnets", "pipd_q90", 0, ["pipd_q90.selective_epochs=0"]),
            record("blended", "pipd", 0), record("badnets", "pipd", 0)]
    recs[0]["curves"] = {"selective": curve(60, 70)}
    recs[5]["curves"], recs[5]["hardware"] = {"selective": curve(90, 91)}, {"precision": "bf16"}
    recs[1]["curves"] = {"selective": curve(20, 30)}
    recs[2]["curves"] = {"finetune": curve(50), "unlearning": curve(40)}
    recs[4]["curves"] = {"selective": curve(65, 75)}
    panels = fig5_lines(frame(recs))
    assert len(panels) == 1 and set(panels[0]["attack_label"]) == {"badnets"}
    by = panels[0].groupby("scheme")["CA"].apply(list).to_dict()
    assert by == {"pipd selective training": [60, 70], "pipd_q90 selective training": [20, 30],
                  "ABL's scheme on pipd's isolation: train on D_b, then unlearn D_p": [50, 40],
                  "pipd (bf16) selective training": [90, 91]}


def test_a_single_seed_row_between_two_seeded_rows_is_stepped_over():
    """DBD (one seed) ranks between ABL and D-BR (three seeds each): ABL is tested against D-BR,
    not against DBD, and DBD is the one row named untested."""
    recs = []
    for a in ("badnets", "blended"):
        for s, (abl, dbr) in enumerate(((1, 40), (2, 45), (1, 50))):
            recs += [record(a, "no_defense", s, ca=80, asr=100), record(a, "abl", s, ca=80, asr=abl),
                     record(a, "dbr", s, ca=80, asr=dbr)]
        recs.append(record(a, "dbd", 0, ca=80, asr=20))
    recs += [record("sig", d, 0, ca=80, asr=asr) for d, asr in
             (("no_defense", 90), ("abl", 2), ("dbr", 3), ("dbd", 40))]  # SIG at seed 0 only
    board = leaderboard.leaderboard(frame(recs))
    assert list(board.seeded["defense"]) == ["no_defense", "abl", "dbd †", "dbr"]
    head = "cifar10 on badnets, blended at seeds 0, 1, 2 (headline)"
    (held,) = [n for n in board.notes if n.startswith(head + ": held")]
    assert "1 over 3 by 43.67" in held  # diffs 39, 43, 49
    (single,) = [n for n in board.notes if n.startswith(head) and "single seed" in n]
    assert single.startswith(head + ": rank 2 rests on a single seed")


def test_the_headline_ranks_on_the_attacks_with_every_seed_and_tests_neighbours_paired_by_seed():
    """BadNets and Blended have seeds 0-2 for PIPD and ABL, SIG seed 0 only, DBD (†, a scale
    artefact at quick) seed 0 only: the headline ranks on BadNets and Blended at seeds 0-2 with
    intervals; the ranking over all three attacks follows on seed 0. PIPD beats ABL by 10-12
    points on every seed (held); ABL and CBD swap order between seeds (within noise)."""
    recs = []
    for a in ("badnets", "blended"):
        for s, (pipd, abl, cbd) in enumerate(((1, 11, 12), (2, 14, 11), (1, 12, 15))):
            recs += [record(a, "no_defense", s, ca=80, asr=100), record(a, "pipd", s, ca=80, asr=pipd),
                     record(a, "abl", s, ca=80, asr=abl), record(a, "cbd", s, ca=80, asr=cbd)]
        recs.append(record(a, "dbd", 0, ca=60, asr=30))
    recs += [record("sig", d, 0, ca=80, asr=asr) for d, asr in
             (("no_defense", 90), ("pipd", 1), ("abl", 2), ("cbd", 3), ("dbd", 40))]
    board = leaderboard.leaderboard(frame(recs))
    assert board.shared == {"cifar10": ["badnets", "blended", "sig"]}
    assert board.seeded_on == {"cifar10": {"attacks": ["badnets", "blended"], "seeds": [0, 1, 2]}}
    top = board.seeded.set_index("defense")
    assert list(top.index) == ["no_defense", "pipd", "abl", "cbd", "dbd †"]
    assert list(top["seeds"]) == [3, 3, 3, 3, 1]
    assert top.at["pipd", "score"] == pytest.approx(80 - 4 / 3)
    assert top.at["pipd", "CA"] - top.at["pipd", "ASR"] == pytest.approx(top.at["pipd", "score"])
    sd = statistics.stdev([79.0, 78.0, 79.0])
    assert top.at["pipd", "ci_high"] - top.at["pipd", "score"] == pytest.approx(4.303 * sd / 3 ** 0.5)
    assert list(board.ranked["seeds"]) == [1, 1, 1, 1, 1]  # every shared attack: seed 0 only
    head = "cifar10 on badnets, blended at seeds 0, 1, 2 (headline)"
    held = [n for n in board.notes if n.startswith(head + ": held")]
    assert len(held) == 1 and "1 over 2 by 11.00 (8.52 to 13.48)" in held[0]  # diffs 10, 12, 11
    assert any(n.startswith(head + ": ranks 2 (abl) and 3 (cbd) are within noise") for n in board.notes)
    assert any(n.startswith(head + ": rank 4 rests on a single seed") for n in board.notes)
    md = leaderboard.markdown(board)
    assert md.index("Headline: ranked on badnets, blended at seeds 0, 1, 2") < \
        md.index("Over every shared attack: badnets, blended, sig")
    assert leaderboard.paired_difference({0: 3.0, 1: 5.0}, {0: 1.0, 1: 1.0, 2: 9.0}) == \
        pytest.approx((3.0, 3.0 - 12.706, 3.0 + 12.706, 2))


def test_a_defense_with_older_version_records_only_is_named_not_ranked(monkeypatch):
    from defenses import DEFENSES

    recs = [record("badnets", d, 0, ca=80, asr=asr) for d, asr in
            (("no_defense", 100), ("pipd", 2), ("dbr", 3))]
    monkeypatch.setattr(DEFENSES.get("dbr"), "version", DEFENSES.get("dbr").version + 1)
    board = leaderboard.leaderboard(frame(recs))
    assert list(board.ranked["defense"]) == ["no_defense", "pipd"]
    assert any(n.endswith("(re-run them at the current version): dbr") for n in board.notes)


def test_a_defense_being_re_run_at_a_new_version_is_ranked_where_it_covers_without_shrinking_the_set(
        monkeypatch):
    """D-BR has BadNets, Blended and SIG at version 1 and, after its bump, BadNets and Blended
    (seeds 0-1, as PIPD; SIG has seed 0) at version 2: the shared set stays BadNets, Blended,
    SIG; the headline ranks D-BR on BadNets and Blended beside PIPD; over every shared attack
    it is named, not ranked."""
    from defenses import DEFENSES

    attacks = ("badnets", "blended", "sig")
    recs = [record(a, "dbr", 0, ca=80, asr=50) for a in attacks]
    monkeypatch.setattr(DEFENSES.get("dbr"), "version", DEFENSES.get("dbr").version + 1)
    for s in (0, 1):
        recs += [record(a, d, s, ca=80, asr=asr) for a in attacks[:2 if s else 3]
                 for d, asr in (("no_defense", 100), ("pipd", 2))]
        recs += [record(a, "dbr", s, ca=80, asr=4 + s) for a in ("badnets", "blended")]
    board = leaderboard.leaderboard(frame(recs))
    assert board.shared == {"cifar10": ["badnets", "blended", "sig"]}
    assert board.seeded_on == {"cifar10": {"attacks": ["badnets", "blended"], "seeds": [0, 1]}}
    assert list(board.seeded["defense"]) == ["no_defense", "pipd", "dbr"]
    assert board.seeded.set_index("defense").at["dbr", "score"] == pytest.approx(80 - 4.5)
    assert list(board.ranked["defense"]) == ["no_defense", "pipd"]
    assert any("dbr is being re-run at its current version: it has sig at an older version only"
               in n for n in board.notes)
    assert not any("dbr (lacks" in n for n in board.notes)  # one note says it


def test_a_row_with_every_attack_but_never_at_one_seed_is_named_not_ranked():
    recs = [record(a, d, 0, ca=80, asr=asr) for a in ("badnets", "blended")
            for d, asr in (("no_defense", 100), ("pipd", 2))]
    recs += [record("badnets", "pipd_median", 1, ca=80, asr=3),
             record("blended", "pipd_median", 2, ca=80, asr=3)]
    board = leaderboard.leaderboard(frame(recs))
    assert list(board.ranked["defense"]) == ["no_defense", "pipd"]
    assert any("pipd_median (no seed with every attack)" in n for n in board.notes)


def test_the_headline_names_a_variant_with_fewer_of_its_seeds_instead_of_ranking_it():
    """PIPD and ABL have BadNets and Blended at seeds 0-2 (SIG at 0): the headline is on seeds
    0-2; pipd_q90 has Blended at seed 0 only, so it is named there, not ranked on one seed."""
    recs = []
    for s in (0, 1, 2):
        recs += [record(a, d, s, ca=80, asr=asr) for a in ("badnets", "blended")
                 for d, asr in (("no_defense", 100), ("pipd", 2), ("abl", 9))]
        recs.append(record("badnets", "pipd_q90", s, ca=81, asr=1))
    recs += [record("blended", "pipd_q90", 0, ca=81, asr=1)]
    recs += [record("sig", d, 0, ca=80, asr=asr) for d, asr in (("no_defense", 90), ("pipd", 1),
                                                                 ("abl", 3))]
    board = leaderboard.leaderboard(frame(recs))
    assert board.seeded_on["cifar10"] == {"attacks": ["badnets", "blended"], "seeds": [0, 1, 2]}
    assert list(board.seeded["defense"]) == ["no_defense", "pipd", "abl"]
    assert any("pipd_q90 (has every attack at seed(s) 0 of 0, 1, 2)" in n for n in board.notes)


def test_the_versions_blocks_keep_an_older_defense_version_as_its_own_column(monkeypatch):
    from defenses import DEFENSES

    old = record("badnets", "dbr", 0, ca=80, asr=3)
    monkeypatch.setattr(DEFENSES.get("dbr"), "version", DEFENSES.get("dbr").version + 1)
    df = frame([old, record("badnets", "dbr", 0, ca=81, asr=2),
                record("badnets", "no_defense", 0, ca=80, asr=99)])
    head = tables.headline(df).splitlines()[0]
    assert "dbr CA / ASR" in head and "(v" not in head
    both = tables.headline(df, older=True).splitlines()
    version = old["config"].get("defense_version", 1)
    assert f"dbr (v{version}) CA / ASR" in both[0]
    assert both[2].startswith("| badnets | 80.00 / 99.00 | 81.00 / 2.00 |") and "80.00 / 3.00" in both[2]


def test_a_plugins_records_read_without_the_plugin_keep_their_settings_apart():
    """The report read without ``--plugin``: the defense's defaults are unknown, so each record's
    settings label its row; two settings never pool into one row, and the comparison names them
    in one line instead of a traceback."""
    from benchmark.registry import UsageError

    def plugin_record(seed, drop, asr):
        rec = record("badnets", "pipd", seed, ca=80, asr=asr)
        rec["config"] = {**rec["config"], "defense": "loss_spread",
                         "defense_params": {"drop": drop, "warmup_epochs": 2}}
        rec["id"] = f"plugin-{seed}-{drop}"
        return rec

    base = [record("badnets", "pipd", s, ca=80, asr=2) for s in (0, 1)]
    one = frame(base + [plugin_record(s, 0.05, 4) for s in (0, 1)])
    labels = set(one.loc[one["defense"] == "loss_spread", "defense_label"])
    assert labels == {"loss_spread[drop=0.05 warmup_epochs=2]"}
    table = compare.compare(one, "loss_spread", "pipd")
    assert list(table["seeds"]) == [2] and table["dASR"].iloc[0] == pytest.approx(2.0)
    two = frame(base + [plugin_record(s, d, 4) for s in (0, 1) for d in (0.05, 0.1)])
    assert two.loc[two["defense"] == "loss_spread", "defense_label"].nunique() == 2
    with pytest.raises(UsageError, match="loss_spread has several variants here"):
        compare.compare(two, "loss_spread", "pipd")


def test_a_cells_closing_line_shows_the_detectors_auroc():
    from benchmark.grid import _line

    line = _line(record("badnets", "scan", 0, ca=60, asr=90, tpr=95, fpr=2, auroc=97.5))
    assert line.endswith("CA 60.00%  ASR 90.00%  TPR 95.00%  FPR 2.00%  AUROC 97.50%  (1 s)"), line


def test_every_cell_has_a_page_that_the_tables_and_the_leaderboard_link_to(tmp_path):
    from benchmark.reports import cellpages, html

    recs = [record("badnets", d, s, ca=80, asr=asr) for d, asr in (("no_defense", 100), ("abl", 5))
            for s in (0, 1)]
    recs[2]["curves"] = {"isolation": [{"epoch": 1, "ca": 0.5, "asr": 0.9, "train_loss": 1.2},
                                       {"epoch": 2, "ca": 0.6, "asr": 0.95, "train_loss": 0.8}],
                         "unlearning": [{"epoch": 1, "ca": 0.7, "asr": 0.05, "train_loss": 2.0}]}
    recs[2]["isolation"] = {"isolated": {"tpr": 0.2, "fpr": 0.001, "precision": 0.9, "n_isolated": 222,
                                         "n_poisoned": 1000}, "masks": {"round_1": {"tpr": 0.1, "fpr": 0.0}}}
    df = frame(recs)
    anchors = cellpages.write(recs, df, tmp_path / "cells")
    assert {"cifar10--abl", "cifar10--badnets--abl", "cifar10--no_defense"} <= anchors
    abl = (tmp_path / "cells" / f"{recs[2]['id']}.html").read_text()
    assert "badnets / abl seed 0" in abl and "data:image/png;base64," in abl  # its curves
    assert "<td>round_1</td><td>10.00</td><td>0.00</td>" in abl and "<td>222</td>" in abl
    assert "<td>CA</td><td>80.00</td>" in abl
    assert "data:image" not in (tmp_path / "cells" / f"{recs[0]['id']}.html").read_text()  # no curves
    index = (tmp_path / "cells" / "index.html").read_text()
    assert all(f"href='{r['id']}.html'" in index for r in recs)

    def link(*labels):
        name = cellpages.anchor(*labels)
        return f"cells/index.html#{name}" if name in anchors else None

    page = html.page(leaderboard.leaderboard(df), [tables.table1(df)], [], "t", [], link)
    assert "<a href='cells/index.html#cifar10--abl'><b>abl</b></a>" in page  # the leaderboard row
    assert "<td><a href='cells/index.html#cifar10--badnets--abl'>" in page  # a table cell


def test_each_model_is_its_own_dataset_row_and_only_the_default_meets_the_papers_values():
    from benchmark.reports.cli import missing_cells

    recs = [record(a, d, sets=sets, ca=80, asr=asr) for a in ("badnets", "blended")
            for d, asr in (("no_defense", 100), ("pipd", 1))
            for sets in ((), ("model=preact_resnet18",))]
    gap = ("preact_resnet18", "blended", "pipd")
    recs = [r for r in recs if tuple(r["config"][k] for k in ("model", "attack", "defense")) != gap]
    df = frame(recs)
    assert set(df["dataset"]) == {"cifar10", "cifar10 (preact_resnet18)"}
    t = tables.table1(df)
    assert {k[0] for k in t.mean.index} == {"cifar10", "cifar10 (preact_resnet18)"}
    assert t.paper.loc[("cifar10", "badnets")].notna().any()  # the paper's ResNet-18 values
    assert t.paper.loc[("cifar10 (preact_resnet18)", "badnets")].isna().all()
    board = leaderboard.leaderboard(df)
    assert set(board.ranked["dataset"]) == {"cifar10", "cifar10 (preact_resnet18)"}
    (line,) = missing_cells(df, "quick")
    assert line.startswith("cifar10 (preact_resnet18): pipd seed 0 on blended")
    assert "--grid quick --models preact_resnet18 --attacks blended --defenses pipd --seeds 0`" in line


def test_compare_on_no_records_says_so_without_a_traceback():
    out = compare.compare(frame([]), "mine", "pipd")
    assert out.empty
    assert compare.markdown(out, "mine", "pipd").startswith("no attack has records of both mine and pipd")


def test_robustness_sets_each_adaptive_attack_beside_the_mean_over_the_papers_attacks():
    from benchmark.reports import robustness

    recs = [record("badnets", "pipd", ca=80, asr=1, tpr=99, fpr=0.1),
            record("blended", "pipd", seed=0, ca=80, asr=1, tpr=97, fpr=0.3),
            record("blended", "pipd", seed=1, ca=80, asr=1, tpr=95, fpr=0.5),
            record("adaptive_patch", "pipd", ca=80, asr=3, tpr=90, fpr=1),  # the paper's 5%: the mean
            record("adaptive_patch", "pipd", sets=["adaptive_patch.rate=0.003"], ca=80, asr=50, tpr=20,
                   fpr=4),
            record("adaptive_blend", "pipd", ca=80, asr=60, tpr=10, fpr=2),
            record("adaptive_blend", "pipd_q90", ca=80, asr=20, tpr=60, fpr=1),
            record("badnets", "pipd_q90", ca=80, asr=1, tpr=100, fpr=0),
            record("adaptive_blend", "pipd", sets=["pipd.rounds=2"], ca=80, asr=0, tpr=100, fpr=0),
            record("ftrojan", "pipd", ca=80, asr=0, tpr=100, fpr=0),  # not in the view
            record("adaptive_blend", "no_defense", ca=81, asr=5),
            record("tact", "no_defense", ca=81, asr=90)]
    iso, defended = robustness.robustness(frame(recs))
    tpr = iso.mean.loc[("cifar10", "pipd")]
    assert list(iso.mean.columns) == ["paper attacks (mean) TPR", "adaptive_blend TPR",
                                      "adaptive_patch 0.003/0.006 TPR", "paper attacks (mean) FPR",
                                      "adaptive_blend FPR", "adaptive_patch 0.003/0.006 FPR"]
    # blended first over its seeds (96), then the three paper attacks: (99 + 96 + 90) / 3
    assert tpr["paper attacks (mean) TPR"] == pytest.approx(95.0)
    assert iso.seeds.loc[("cifar10", "pipd"), "paper attacks (mean) TPR"] == 3
    assert tpr["adaptive_blend TPR"] == pytest.approx(10) and tpr["adaptive_patch 0.003/0.006 TPR"] == 20
    header, rows = render.cells(iso, "TPR")
    by = {r[1][0]: r for r in rows}
    # a mean over one attack is not compared with one over three: neither is bold
    assert by["pipd"][2] == ("95.00 ± 3.74 (3 attacks)", False)
    assert by["pipd_q90"][2] == ("100.00 (1 attack)", False)
    assert by["pipd_q90"][3] == ("60.00", True)  # adaptive_blend: pipd_q90 isolates more
    assert set(defended.mean.index.get_level_values(1)) == {"no_defense", "pipd", "pipd_q90"}
    assert any("adaptive_blend on cifar10 (No Defense ASR 5.00)" in n for n in iso.notes)
    assert not any("tact" in n for n in iso.notes)
    empty = robustness.robustness(frame([]))
    assert [t.name for t in empty] == ["robustness_isolation", "robustness_defense"]
    assert all(t.empty and t.title for t in empty)


def test_robustness_adds_the_lowest_rate_no_defense_learns_beside_an_attack_it_does_not():
    """Narcissus not learned at its reference rate (ASR 10): of a No Defense rate sweep, 0.002
    is not learned (40), 0.005 and 0.01 are (90, 99); 0.005 becomes a column beside Narcissus's,
    where PIPD's cell at that rate shows. An attack learned at its reference rate (TaCT) gets
    none, whatever its sweep."""
    from benchmark.reports import robustness

    recs = [record("narcissus", "no_defense", ca=80, asr=10),
            record("narcissus", "no_defense", sets=["narcissus.rate=0.002"], ca=80, asr=40),
            record("narcissus", "no_defense", sets=["narcissus.rate=0.005"], ca=80, asr=90),
            record("narcissus", "no_defense", sets=["narcissus.rate=0.01"], ca=80, asr=99),
            record("narcissus", "pipd", ca=80, asr=5, tpr=30, fpr=1),
            record("narcissus", "pipd", sets=["narcissus.rate=0.005"], ca=80, asr=4, tpr=70, fpr=2),
            record("tact", "no_defense", ca=81, asr=90),
            record("tact", "no_defense", sets=["tact.rate=0.01"], ca=81, asr=95),
            record("tact", "pipd", ca=80, asr=50, tpr=20, fpr=1)]
    iso, defended = robustness.robustness(frame(recs))
    assert list(iso.mean.columns) == ["tact TPR", "narcissus TPR", "narcissus at 0.005 (lowest learned) TPR",
                                      "tact FPR", "narcissus FPR", "narcissus at 0.005 (lowest learned) FPR"]
    assert iso.mean.loc[("cifar10", "pipd"), "narcissus at 0.005 (lowest learned) TPR"] == pytest.approx(70)
    assert defended.mean.loc[("cifar10", "no_defense"), "narcissus at 0.005 (lowest learned) ASR"] \
        == pytest.approx(90)
    assert any("not learned" in n and "narcissus on cifar10 (No Defense ASR 10.00)" in n for n in iso.notes)
    assert any(n.startswith("lowest learned") and n.endswith("narcissus at 0.005 (lowest learned)")
               for n in iso.notes)
    unswept = robustness.robustness(frame(recs[:1] + recs[4:5]))[0]
    assert "narcissus TPR" in unswept.mean.columns and len(unswept.mean.columns) == 2
    # another dataset that learns Narcissus at its reference rate keeps its 0.005 cells out of
    # the column chosen for cifar10
    other = [record("narcissus", d, sets=["dataset=gtsrb", *s], ca=70, asr=95,
                    **({"tpr": 50, "fpr": 1} if d == "pipd" else {}))
             for d in ("no_defense", "pipd") for s in ([], ["narcissus.rate=0.005"])]
    iso = robustness.robustness(frame(recs + other))[0]
    col = "narcissus at 0.005 (lowest learned) TPR"
    assert iso.mean.loc[("cifar10", "pipd"), col] == pytest.approx(70)
    gtsrb = iso.mean.loc[("gtsrb", "pipd")]
    assert math.isnan(gtsrb[col]) and gtsrb["narcissus TPR"] == pytest.approx(50)
