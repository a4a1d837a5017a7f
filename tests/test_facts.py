"""Records describe themselves: reports read what a record said when it was written, so an
edited preset never moves committed records between tables."""

import copy
import json
from pathlib import Path

import pandas as pd

from benchmark.facts import FACT_KEYS, migrate, record_facts
from benchmark.reports import records

QUICK = Path(__file__).parents[1] / "docs" / "results" / "quick"
SHOWN = ["id", "attack_label", "defense_label", "default", "variant", "detector", "trains_model",
         "caveat"]


def shown(recs: list[dict]) -> pd.DataFrame:
    return records.frame(recs)[SHOWN].sort_values("id").reset_index(drop=True)


def test_an_edited_preset_does_not_change_what_committed_records_show(monkeypatch):
    from benchmark import config

    recs = records.read_records([QUICK])
    assert recs and all(set(FACT_KEYS) <= set(r["facts"]) for r in recs)  # migrated
    before = shown(recs)
    assert before["default"].sum() > 50 and before["caveat"].notna().any()
    edited = copy.deepcopy(config.PRESETS)
    edited["quick"]["defenses"]["pipd"]["rounds"] = 9  # a different quick PIPD
    edited["quick"]["caveats"] = {}
    monkeypatch.setattr(config, "PRESETS", edited)
    assert shown(recs).equals(before)
    # a record without facts is read by today's code: there the edit shows (what facts prevent)
    legacy = [{k: v for k, v in r.items() if k != "facts"} for r in recs]
    moved = shown(legacy)
    pipd = (before["defense_label"] == "pipd") & before["default"]
    assert pipd.sum() >= 8 and not moved[pipd]["default"].any()
    assert moved["caveat"].isna().all()


def test_a_record_stores_its_facts_and_migration_adds_them_once(tmp_path):
    rec = json.loads(next(QUICK.glob("*.json")).read_text())
    facts = rec.pop("facts")
    assert record_facts(rec["config"], rec["id"]) == facts  # today's code and presets agree
    (tmp_path / "r.json").write_text(json.dumps(rec, indent=1))
    assert migrate([tmp_path]) == 1 and migrate([tmp_path]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["facts"] == facts
