"""Generated blocks in Markdown files, so that a document's tables come from records and are
never typed. A block is

    <!-- generated: KIND FOLDER [attack=A,B] [defense=X,Y] -->
    ...
    <!-- /generated -->

(or ``<!-- generated: KIND -->`` for a table read from the code: ``apidoc.RENDERERS``; an
analysis's table reads its folders' raw records: ``benchmark.analyses.summaries.RENDERERS``),
where KIND names a renderer below, FOLDER a records folder relative to the repository root (or
several, comma-separated) and
the optional filters keep the records of those attacks / defenses (registry names; or
``attack_label=`` / ``defense_label=``, the tables' labels: ``pipd_median[selective_epochs=0]``).
``python -m benchmark.reports.blocks FILE...`` rewrites every block of the files; the tests
check that the committed files equal their regenerated text."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmark.analyses import summaries
from benchmark.reports import apidoc, leaderboard, records, robustness, tables

ROOT = Path(__file__).parents[2]
KINDS: dict[str, Callable[[pd.DataFrame], str]] = {
    "headline": lambda df: tables.headline(df).split("\n\n")[0] + "\n",
    "isolation": tables.isolation,
    # the same with older method versions' records as columns of their own ("dbr (v1)")
    "headline_versions": lambda df: tables.headline(df, older=True).split("\n\n")[0] + "\n",
    "isolation_versions": lambda df: tables.isolation(df, older=True),
    "records": tables.inventory,
    "seed_quantile": tables.seed_quantiles,
    # the attacks built to beat isolation beside the paper's (benchmark.reports.robustness)
    "robustness": lambda df: robustness.markdown(robustness.robustness(df)),
    # the report's leaderboard (its rankings, intervals and notes) without its page heading
    "leaderboard": lambda df: leaderboard.markdown(leaderboard.leaderboard(df)).split("\n", 2)[2],
}
# a block from the code has no folder: <!-- generated: defense_context --> (benchmark.reports.apidoc)
BLOCK = re.compile(r"(<!-- generated: (\S+)(?: ([^\s=]+))?((?: \w+=\S+)*) -->\n)(.*?)(<!-- /generated -->)",
                   re.S)
# registry names, or the tables' row and column labels (those without spaces)
FILTERS = ("attack", "defense", "attack_label", "defense_label")


def select(df: pd.DataFrame, filters: str) -> pd.DataFrame:
    """The rows of ``df`` whose columns match ``filters`` (" attack=a,b defense=x")."""
    for item in filters.split():
        key, values = item.split("=", 1)
        if key not in FILTERS:
            raise ValueError(f"unknown block filter {key!r}; valid: {', '.join(FILTERS)}")
        df = df[df[key].isin(values.split(","))]
    return df


def render(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated block's body replaced by its renderer's output."""
    def fill(m: re.Match) -> str:
        kind, folder = m.group(2), m.group(3)
        if kind in apidoc.RENDERERS and folder is None:
            return m.group(1) + apidoc.RENDERERS[kind]() + m.group(6)
        if kind in summaries.RENDERERS and folder is not None:
            return m.group(1) + summaries.RENDERERS[kind]([root / f for f in folder.split(",")]) + m.group(6)
        if kind not in KINDS or folder is None:
            raise ValueError(f"unknown generated block {kind!r} {folder or ''}; valid: "
                             f"{', '.join(f'{k} FOLDER' for k in [*KINDS, *summaries.RENDERERS])}, "
                             f"{', '.join(apidoc.RENDERERS)}")
        rows = select(records.load([root / f for f in folder.split(",")]), m.group(4))
        return m.group(1) + KINDS[kind](rows) + m.group(6)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        text = path.read_text()
        new = render(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
