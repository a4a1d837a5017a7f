"""The README's commands run as written: every grid command as a dry run (its plugin example
written from the README's own code block), every report command on an empty results folder,
and the README stays a five-minute read."""

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
# not the suite's CLI, or run by CI itself (install, tests), or a GPU machine's script
NOT_CLI = ("python3 -m venv", "pip install", "python -m pytest", "python -m benchmark.gpucheck", "make ")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith(NOT_CLI):
                words = shlex.split(line)
                assert words[:2] == ["python", "run_benchmark.py"], line
                out.append(words[2:])
    return out


def test_the_first_two_commands_make_the_environment_and_ci_runs_the_second_as_written():
    first = [ln.split("#")[0].strip() for ln in blocks("bash")[0].splitlines()]
    assert first[:2] == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert re.search(r"^make test(\s|$)", ci, flags=re.M) and "pip install" not in ci
    make = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):  # each depends on the environment's stamp, built once
        assert re.search(rf"^{target}: \$\(READY\)", make, flags=re.M)
    assert re.search(r"^\$\(READY\): pyproject.toml\n(\t.*\n)+", make, flags=re.M)


def test_the_readme_is_a_five_minute_read():
    assert len(README.read_text().splitlines()) <= 200
    assert len(commands()) >= 10


GENERATED = [README, *sorted((README.parent / "docs").rglob("*.md"))]
GENERATED = [p for p in GENERATED if "<!-- generated: " in p.read_text()]


def test_the_documents_with_generated_tables_are_found():
    names = {str(p.relative_to(README.parent)) for p in GENERATED}
    assert {"README.md", "docs/results/README.md", "docs/findings/pipd-beyond-badnets.md",
            "docs/presets.md"} <= names


@pytest.mark.parametrize("doc", GENERATED, ids=[p.name for p in GENERATED])
def test_generated_tables_match_the_committed_records(doc):
    """Tables between generated-block markers are their records' rendering, never typed
    (``python -m benchmark.reports.blocks FILE`` rewrites them)."""
    from benchmark.reports import blocks

    text = doc.read_text()
    assert blocks.render(text) == text, f"stale: python -m benchmark.reports.blocks {doc.name}"


def test_the_readme_headline_block_is_the_demo_records_headline():
    from benchmark.reports import records, tables

    text = README.read_text()
    block = text.split("<!-- generated: headline docs/results/demo -->")[1].split("<!-- /generated -->")[0]
    expected = tables.headline(records.load([README.parent / "docs" / "results" / "demo"]))
    assert block.strip() == expected.split("\n\n")[0].strip()


def test_a_generated_block_is_rewritten_from_its_folder(tmp_path):
    """On a folder of one hand-made record the block holds exactly that record's row, and an
    unknown kind names the valid ones."""
    import json

    from benchmark.reports import blocks

    src, rec = next((p, r) for p in sorted((README.parent / "docs" / "results" / "demo").glob("*.json"))
                    if (r := json.loads(p.read_text()))["config"]["defense"] == "no_defense")
    rec["metrics"]["ca"], rec["metrics"]["asr"] = 0.5, 0.25
    (tmp_path / "recs").mkdir()
    (tmp_path / "recs" / src.name).write_text(json.dumps(rec))
    text = "intro\n<!-- generated: records recs -->\nold\n<!-- /generated -->\nend\n"
    out = blocks.render(text, root=tmp_path)
    body = out.split("-->\n", 1)[1].split("<!-- /generated")[0].splitlines()
    assert out.startswith("intro\n") and out.endswith("<!-- /generated -->\nend\n")
    assert len(body) == 3 and "| 50.00 | 25.00 |  |  |  |  |" in body[2]
    assert f"| {rec['id']}.json |" in body[2]
    kept = blocks.render(text.replace("recs -->", f"recs defense={rec['config']['defense']} -->"),
                         root=tmp_path)
    dropped = blocks.render(text.replace("recs -->", "recs attack=nope,none -->"), root=tmp_path)
    assert kept.count("\n|") == 3 and "no records" in dropped
    with pytest.raises(ValueError, match="valid: attack, defense"):
        blocks.render(text.replace("recs -->", "recs seed=1 -->"), root=tmp_path)
    with pytest.raises(ValueError, match="valid: headline FOLDER, isolation FOLDER, headline_versions "
                                         "FOLDER, .*, defense_context, defense_result"):
        blocks.render("<!-- generated: nope recs -->\n<!-- /generated -->", root=tmp_path)
    with pytest.raises(ValueError, match="unknown generated block 'records' "):  # needs a folder
        blocks.render("<!-- generated: records -->\n<!-- /generated -->", root=tmp_path)
    code = blocks.render("<!-- generated: defense_result -->\nstale\n<!-- /generated -->\n")
    assert "| `isolated` | `torch.Tensor \\| None` | `None` |" in code and "stale" not in code


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced by ``value`` (appended if absent)."""
    if option in argv:
        i = argv.index(option)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [*argv, option, value]


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tiny_cifar, tmp_path, monkeypatch, capsys):
    from benchmark.cli import main, parse
    from tests.conftest import write_imagefolder

    monkeypatch.chdir(Path(__file__).parents[1])
    plugin = next(b for b in blocks("python") if "register_defense" in b)
    (tmp_path / "my_defense.py").write_text(plugin)
    imagenet = write_imagefolder(tmp_path / "imagenet-subset", 4, 2, size=64)
    paths = {"my_defense.py": str(tmp_path / "my_defense.py"), "/data/imagenet-subset": str(imagenet)}
    ran = []
    for argv in commands():
        argv = [paths.get(a, a) for a in argv]
        if argv[0] == "triggers":  # it trains CL's and Dynamic's models: its options only
            parse(argv)
            continue
        if argv[0] == "report":  # on the records the grid commands left (none: dry runs)
            argv = with_option(with_option(argv, "--results", str(tmp_path / "res")),
                               "--out", str(tmp_path / "report"))
        elif argv[0] != "list":
            argv = [a for a in argv if a not in ("--report", "--fast-dev-run")]
            argv = [*argv, *([] if "--dry-run" in argv else ["--dry-run"]), "--results",
                    str(tmp_path / "res"), "--data-root", str(tiny_cifar), "--no-download"]
        code = main(argv)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
        ran.append(argv[0])
    assert "report" in ran and ran.count("report") < len(ran)
    from tests.test_cli import TINY  # the plugin's run itself, on one tiny cell

    assert main(["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar),
                 "--results", str(tmp_path / "ran"), "--cache-dir", str(tmp_path / "cache"), *TINY,
                 "--plugin", paths["my_defense.py"], "--attacks", "badnets", "--defenses",
                 "my_defense", "--set", "my_defense.epochs=1"]) == 0
