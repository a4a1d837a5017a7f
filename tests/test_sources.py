"""Records name the method source that made them; a change at the same version is named."""

import importlib
import json
import sys
from pathlib import Path

import pytest

import benchmark.sources as sources_module
from benchmark.sources import changed, module_digest, source_digest, stale

CODE = '''"""A module."""
# a comment
SCALE = 1


def run(x):
    """Docstring."""
    return x * SCALE
'''


def test_the_digest_follows_code_not_comments_docstrings_or_layout():
    same = CODE.replace("# a comment", "# another comment").replace('"""Docstring."""', '"""Other."""')
    same = same.replace("return x * SCALE", "return (x *\n            SCALE)")
    assert module_digest(same) == module_digest(CODE)
    assert module_digest(CODE.replace("SCALE = 1", "SCALE = 2")) != module_digest(CODE)
    assert module_digest(CODE.replace('    """Docstring."""\n', "")) == module_digest(CODE)


PARENT = '''
from defenses import Defense, DefenseResult

class Parent(Defense):
    name = "digest_parent"
    def run(self, ctx):
        return DefenseResult(model=ctx.make_model(), info={"k": {k}})
'''
CHILD = '''
from digest_parent_mod import Parent

class Child(Parent):
    name = "digest_child"
'''


def test_a_variant_digest_covers_the_module_of_the_method_it_inherits(tmp_path, monkeypatch):
    from defenses import Defense

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "digest_parent_mod.py").write_text(PARENT.replace("{k}", "1"))
    (tmp_path / "digest_child_mod.py").write_text(CHILD)
    try:
        child = importlib.import_module("digest_child_mod").Child
        before = source_digest(child, Defense)
        assert before and before != source_digest(child.__mro__[1], Defense)
        (tmp_path / "digest_parent_mod.py").write_text(PARENT.replace("{k}", "2"))
        source_digest.cache_clear()
        assert source_digest(child, Defense) != before  # only the parent's file changed
    finally:
        source_digest.cache_clear()
        for name in ("digest_parent_mod", "digest_child_mod"):
            sys.modules.pop(name, None)


def test_only_recorded_and_current_digests_that_differ_are_named():
    assert changed({"attack": "a", "defense": "d"}, {"attack": "a", "defense": "x"}) == ["defense"]
    assert changed(None, {"attack": "a"}) == []  # a record made before digests were stored
    assert changed({"attack": "a", "defense": "d"}, {"attack": "a"}) == []  # no code here to compare
    rec = {"id": "c1", "status": "ok", "config": {"attack": "badnets", "defense": "pipd"},
           "sources": {"attack": "a", "defense": "d"}}
    assert stale(rec, {"attack": "b", "defense": "d"}) == [("c1", "attack", "badnets")]
    assert stale({**rec, "status": "failed"}, {"attack": "b", "defense": "d"}) == []


def test_a_declared_result_neutral_edit_keeps_the_records_before_it_current(monkeypatch):
    """pipd edited a -> b (neutral), then b -> c (neutral): a record at a is current at c; one
    at an undeclared digest, or of another method with digest a, is not."""
    import benchmark.sources as sources

    monkeypatch.setattr(sources, "neutral_edits", lambda: {("defense pipd", "a"): "b",
                                                          ("defense pipd", "b"): "c"})
    rec = {"id": "c1", "status": "ok", "config": {"attack": "badnets", "defense": "pipd"},
           "sources": {"attack": "x", "defense": "a"}}
    assert stale(rec, {"attack": "x", "defense": "c"}) == []
    assert stale({**rec, "sources": {"attack": "x", "defense": "z"}}, {"attack": "x", "defense": "c"}) \
        == [("c1", "defense", "pipd")]
    other = {**rec, "config": {"attack": "badnets", "defense": "abl", "defense_version": 2}}
    assert stale(other, {"attack": "x", "defense": "c"}) == [("c1", "defense", "abl")]


def test_a_method_recorded_at_another_version_is_not_judged_by_todays_code():
    """ABL is at version 2: a version-1 record's changed defense digest is history (the reports
    show its row as "(v1)"), while its attack, at the registered version, is still judged."""
    from benchmark.sources import registered_version

    assert registered_version("defense", "abl") == 2 and registered_version("defense", "mine") is None
    rec = {"id": "c1", "status": "ok", "sources": {"attack": "a", "defense": "d"},
           "config": {"attack": "badnets", "attack_version": 1, "defense": "abl", "defense_version": 1}}
    assert stale(rec, {"attack": "a", "defense": "x"}) == []
    assert stale(rec, {"attack": "b", "defense": "x"}) == [("c1", "attack", "badnets")]
    current = {**rec, "config": {**rec["config"], "defense_version": 2}}
    assert stale(current, {"attack": "a", "defense": "x"}) == [("c1", "defense", "abl")]


def test_every_declared_neutral_edit_names_a_registered_method_and_says_why():
    from attacks import ATTACKS
    from benchmark.sources import neutral_edits
    from defenses import DEFENSES

    entries = json.loads((Path(sources_module.__file__).with_name("neutral_edits.json")).read_text())
    assert len(neutral_edits()) == len(entries)  # one edit per (method, digest before)
    for e in entries:
        kind, name = e["method"].split(" ")
        assert name in (ATTACKS if kind == "attack" else DEFENSES).names()
        assert e["from"] != e["to"] and len(e["why"]) > 20


def test_every_committed_record_at_its_method_version_was_made_by_todays_code():
    """A method edited without a version bump and without a declared neutral edit leaves its
    committed records (docs/results/) claiming code that no longer exists: this names them."""
    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    found, made_elsewhere = 0, []
    for path in sorted(root.rglob("*.json")):
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or rec.get("status") != "ok" or not rec.get("sources"):
            continue
        found += 1  # stale() judges each method at its registered version only
        made_elsewhere += [f"{path.relative_to(root)}: {kind} {name}" for _, kind, name in stale(rec)]
    assert found >= 100  # records made since digests were stored
    assert not made_elsewhere, (f"{len(made_elsewhere)} record(s) made by code that has changed "
                                f"at the same version (declare the edit in neutral_edits.json, or "
                                f"bump the version and re-run): {made_elsewhere[:5]}")


@pytest.mark.slow
def test_dry_run_grid_and_report_name_a_record_made_by_changed_source(tiny_cifar, tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.sources import current_sources
    from tests.test_cli import TINY

    one = ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar), "--cache-dir",
           str(tmp_path / "cache"), "--results", str(tmp_path / "res"), "--attacks", "badnets",
           "--defenses", "no_defense", "--seeds", "0", *TINY]
    assert main(one) == 0
    path = next((tmp_path / "res" / "records").glob("*.json"))
    rec = json.loads(path.read_text())
    assert rec["sources"] == current_sources(rec["config"]) and len(rec["sources"]["defense"]) == 12
    capsys.readouterr()
    assert main([*one, "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().out

    rec["sources"]["defense"] = "000000000000"  # as if made by an older copy of no_defense
    path.write_text(json.dumps(rec))
    line = (f"warning: 1 record(s) were made by source that has changed since at the same version "
            f"(defense no_defense): {rec['id']}.")
    for argv in ([*one, "--dry-run"], [*one, "--dry-run"], one,  # the second dry-run is a stored plan
                 ["report", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "rep")]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert line in out, argv
        assert argv[0] == "report" or "1 cell(s)" in out  # named, not re-run
    assert "made by source that has changed since" in (tmp_path / "rep" / "index.html").read_text()
