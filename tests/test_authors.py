"""The method authors' page (docs/authors.md): its plugin runs as written, and its reference
tables cover the interface they describe."""

import dataclasses
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).parents[1] / "docs" / "authors.md"


def page_plugin(tmp_path: Path) -> str:
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    path = tmp_path / "my_defense.py"
    path.write_text(code)
    return str(path)


@pytest.mark.slow
def test_the_page_plugin_runs_a_grid_and_a_comparison_with_pipd(tiny_cifar, tmp_path, capsys):
    from benchmark.cli import main
    from tests.test_cli import TINY

    plugin = page_plugin(tmp_path)
    common = ["--grid", "smoke", "--executor", "serial", "--data-root", str(tiny_cifar), "--cache-dir",
              str(tmp_path / "cache"), "--results", str(tmp_path / "res"), "--plugin", plugin, *TINY]
    grid = [*common, "--attacks", "badnets", "--defenses", "pipd,class_loss_filter", "--seeds", "0,1",
            "--set", "class_loss_filter.warmup_epochs=1"]
    assert main(grid) == 0
    capsys.readouterr()
    assert main(["report", "--plugin", plugin, "--results", str(tmp_path / "res"), "--out",
                 str(tmp_path / "rep"), "--compare", "class_loss_filter", "--baseline", "pipd"]) == 0
    assert "class_loss_filter vs pipd" in capsys.readouterr().out
    # from the records alone (the plugin not loaded): the same comparison, no traceback
    assert main(["report", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "rep2"),
                 "--compare", "class_loss_filter", "--baseline", "pipd"]) == 0
    assert "class_loss_filter vs pipd" in capsys.readouterr().out

    assert main([*grid, "--set", "class_loss_filter.drop=1.5"]) == 2
    assert capsys.readouterr().err.strip() == ("error: class_loss_filter.drop: must be strictly "
                                               "between 0 and 1, got 1.5")
    assert main([*grid, "--set", "class_loss_filter.drop=0", "--dry-run"]) == 2  # flags nothing


def test_every_field_of_the_interface_is_described_on_the_page():
    """A field added to DefenseContext or DefenseResult without a comment, or a listed helper
    without a docstring, leaves an empty cell in the generated tables: caught here."""
    from benchmark.reports import apidoc
    from defenses import Defense, DefenseContext, DefenseResult

    for cls in (DefenseContext, DefenseResult):
        described = {name: text for name, _, text in apidoc.commented_fields(cls)}
        assert set(described) == {f.name for f in dataclasses.fields(cls)}, cls
        assert all(described.values()), [k for k, v in described.items() if not v]
    assert all(text for _, hint, text in apidoc.commented_fields(Defense) if hint.startswith("ClassVar"))
    for text in (apidoc.shared_helpers(), apidoc.RENDERERS["trainer"](),
                 apidoc.RENDERERS["defense_context"]()):
        assert not re.search(r"`: *$", text, re.M), text  # a member without a first sentence


@pytest.mark.parametrize("line, expected", [
    ("    seed: int  # the cell's seed", ("seed", "int", "the cell's seed")),
    ("    x: dict[str, int] = field(default_factory=dict)  # a map", ("x", "dict[str, int]", "a map")),
    ("    name: ClassVar[str] = ''", ("name", "ClassVar[str]", None)),
])
def test_a_field_line_is_read_with_its_type_and_comment(line, expected):
    from benchmark.reports.apidoc import FIELD

    assert FIELD.match(line).groups() == expected
