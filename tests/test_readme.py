"""The README's commands run as written: every grid command as a dry run (its plugin example
written from the README's own code block), every report command on an empty results folder,
and the README stays a five-minute read."""

import re
import shlex
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
# not the suite's CLI, or run by CI itself (install, tests), or a GPU machine's script
NOT_CLI = ("python3 -m venv", "pip install", "python -m pytest", "python -m benchmark.gpucheck")


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


def test_the_readme_is_a_five_minute_read():
    assert len(README.read_text().splitlines()) <= 200
    assert len(commands()) >= 10


def test_the_readme_table_is_the_demo_records_headline():
    """The first table is generated from the committed demo records, never typed."""
    from benchmark.reports import records, tables

    text = README.read_text()
    block = text.split("<!-- headline:")[1].split("-->", 1)[1].split("<!-- /headline -->")[0]
    root = README.parent / "docs" / "results" / "demo"
    expected = tables.headline(records.load([root])).split("\n\n")[0]
    assert block.strip() == expected.strip()


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced by ``value`` (appended if absent)."""
    if option in argv:
        i = argv.index(option)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [*argv, option, value]


def test_every_readme_command_runs_as_written(tiny_cifar, tmp_path, monkeypatch, capsys):
    from benchmark.cli import main
    from benchmark.gallery import build_parser as gallery_parser
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
            gallery_parser().parse_args(argv[1:])
            continue
        if argv[0] == "report":  # on the records the grid commands left (none: dry runs)
            argv = with_option(with_option(argv, "--results", str(tmp_path / "res")),
                               "--out", str(tmp_path / "report"))
        else:
            argv = [a for a in argv if a not in ("--report", "--fast-dev-run")]
            argv = [*argv, *([] if "--dry-run" in argv else ["--dry-run"]), "--results",
                    str(tmp_path / "res"), "--data-root", str(tiny_cifar), "--no-download"]
        code = main(argv)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
        ran.append(argv[0])
    assert "report" in ran and ran.count("report") < len(ran)
