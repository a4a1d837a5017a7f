"""The analyses (benchmark/analyses): every probe still runs as a plugin at smoke scale, and
every summary table (a finding's, or the results index's) renders from its committed records."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PROBES = [p for p in sorted((ROOT / "benchmark" / "analyses").glob("*.py"))
          if p.stem not in ("__init__", "summaries")]  # each a plugin file


def test_every_analysis_table_renders_from_its_committed_records():
    from benchmark.analyses import summaries
    from benchmark.reports.blocks import BLOCK

    used = set()
    results = ROOT / "docs" / "results"
    for readme in [results / "README.md", *sorted((results / "analysis").glob("*/README.md"))]:
        for m in BLOCK.finditer(readme.read_text()):
            if m.group(2) in summaries.RENDERERS:
                used.add(m.group(2))
                text = summaries.RENDERERS[m.group(2)]([ROOT / f for f in m.group(3).split(",")])
                assert text.count("\n|") >= 3, (readme, m.group(2))  # a header and rows
    assert used == set(summaries.RENDERERS)  # every renderer has its finding


@pytest.mark.slow
def test_every_probe_runs_as_a_plugin_at_smoke_scale(tiny_cifar, tmp_path, capsys):
    from benchmark.cli import main
    from tests.test_cli import TINY

    names = [n for p in PROBES for n in re.findall(r'^    name = "(\w+)"', p.read_text(), flags=re.M)]
    assert {"lga_probe", "spc_probe", "spectre_probe", "spectre_k_probe", "dbr_split"} <= set(names)
    plugins = [a for p in PROBES for a in ("--plugin", str(p))]
    argv = ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar), "--cache-dir",
            str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY, *plugins,
            "--attacks", "badnets", "--defenses", ",".join(names)]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    assert len(list((tmp_path / "res" / "records").glob("*.json"))) == len(names)
