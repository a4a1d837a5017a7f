import os
import stat

import pytest
import torch

from benchmark import cache
from benchmark.cache import atomic_write_bytes


def test_atomic_write_honours_umask_and_leaves_no_temp(tmp_path):
    path = tmp_path / "records" / "a.json"
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~cache._UMASK  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_bytes(path, b"old")

    def boom(*_a):
        raise OSError("disk full")
    monkeypatch.setattr(cache.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.json"]


def test_artifacts_are_computed_once_shared_like_records_and_indexed(tmp_path):
    store = cache.ArtifactCache(tmp_path)
    calls = []
    key = {"attack": "badnets", "seed": 0}
    first = store.get_or_create("poisoned", key, lambda: calls.append(1) or {"x": 1})
    again = store.get_or_create("poisoned", key, lambda: calls.append(1) or {"x": 2})
    assert first == again == {"x": 1} and calls == [1]
    path = store.path("poisoned", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~cache._UMASK
    assert sorted(os.listdir(path.parent)) == sorted([path.name, path.stem + ".lock",
                                                      path.stem + ".sha256", "index.jsonl"])
    assert path.stem in (path.parent / "index.jsonl").read_text()


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "drop_checksum_and_truncate"])
def test_a_damaged_artifact_is_set_aside_and_recomputed(tmp_path, capsys, damage, faults):
    store = cache.ArtifactCache(tmp_path)
    key = {"kind": "model", "seed": 0}
    value = {"state": {"w": torch.arange(1000.0)}, "curve": [{"epoch": 1, "ca": 0.5}]}
    store.get_or_create("models", key, lambda: value)
    path = store.path("models", key)
    data = path.read_bytes()
    if damage == "flip_a_byte":  # still a loadable file: only the checksum catches it
        i = data.rindex(torch.arange(1000.0)[500].numpy().tobytes())
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    else:
        path.write_bytes(data[: len(data) // 2])
        if damage == "drop_checksum_and_truncate":
            path.with_suffix(".sha256").unlink()
    calls = []
    again = store.get_or_create("models", key, lambda: calls.append(1) or value)
    assert calls == [1] and torch.equal(again["state"]["w"], value["state"]["w"])
    assert "is unusable" in capsys.readouterr().err
    assert path.with_name(path.name + ".corrupt").exists()
    ok, loaded = store.load(path)  # the recomputed artifact verifies
    assert ok and loaded["curve"] == value["curve"]
    faults["artifacts corrupted"] += 1
    faults["artifacts recovered"] += 1


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.faults
def test_a_planted_pickle_is_refused_not_run(tmp_path, capsys, monkeypatch, faults):
    monkeypatch.chdir(tmp_path)
    store = cache.ArtifactCache(tmp_path / "cache")
    key = {"kind": "poisoned", "seed": 0}
    path = store.path("poisoned", key)
    path.parent.mkdir(parents=True)
    torch.save({"train": _Payload()}, path)  # someone with write access to a shared cache
    value = store.get_or_create("poisoned", key, lambda: {"train": torch.zeros(2)})
    assert torch.equal(value["train"], torch.zeros(2))
    assert not (tmp_path / "pwned").exists()
    assert "is unusable" in capsys.readouterr().err
    faults["pickles planted"] += 1
    faults["pickles run"] += 0


def test_cached_dataclasses_load_without_pickled_code(tmp_path):
    from attacks.base import PoisonedTrainSet
    from benchmark.data import ImageSet

    assert ImageSet in cache.SAFE_TYPES and PoisonedTrainSet in cache.SAFE_TYPES
    images = ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    store = cache.ArtifactCache(tmp_path)
    store.get_or_create("poisoned", {"k": 1}, lambda: {"test": images})
    ok, loaded = store.load(store.path("poisoned", {"k": 1}))
    assert ok and isinstance(loaded["test"], ImageSet) and loaded["test"].classes == ["a", "b"]


def test_the_clean_reference_model_is_shared_across_attacks_and_their_versions(tmp_path):
    from dataclasses import replace

    from attacks.reference import reference_model
    from benchmark.grid import expand_grid
    from benchmark.spec import CellSpec
    from tests.attack_helpers import make_attack, make_set

    ctx = make_attack("cl", cache_root=tmp_path).ctx
    train = make_set(60)
    cells = expand_grid("smoke", ["cl", "trojan"], ["no_defense"], [0], [])
    assert {c["attack"] for c in cells} == {"cl", "trojan"}
    for c in cells:  # the cells' own keys, as benchmark.cell gives them
        spec = CellSpec.from_config(c)
        reference_model(replace(ctx, cache_key=spec.artifact_key("attack_model"),
                                keys=spec.artifact_keys(("clean_reference",))), train, epochs=1)
    assert len(list((tmp_path / "models").glob("*.pt"))) == 1


def test_the_reference_model_trains_in_the_cells_precision(tmp_path):
    """``--set train.precision=fp32`` must reach the models an attack trains (on CUDA ``auto``
    is bf16), and a model of another precision is another artifact."""
    from dataclasses import replace

    from attacks.reference import reference_model
    from tests.attack_helpers import make_attack, make_set

    ctx = make_attack("cl", cache_root=tmp_path).ctx
    asked = []
    real = ctx.trainer.fit_cached

    def fit_cached(cache, kind, key, *a, **kw):  # noqa: ANN001, ANN202
        asked.append(a[3].precision)
        return real(cache, kind, key, *a, **kw)

    ctx.trainer.fit_cached = fit_cached
    train = make_set(60)
    for precision in ("auto", "fp32"):
        reference_model(replace(ctx, precision=precision), train, epochs=1)
    assert asked == ["auto", "fp32"] and len(list((tmp_path / "models").glob("*.pt"))) == 2


def test_an_artifacts_work_is_tagged_and_comes_back_with_it_when_loaded(tmp_path):
    """The cell that computes an artifact and a cell that loads it get the same work entries
    (the loader's marked reused); an artifact computed inside another keeps its own tag."""
    first: list[dict] = []
    store = cache.ArtifactCache(tmp_path, ledger=first)

    def outer() -> int:
        first.append({"phase": "train outer", "epochs": 2, "images_per_epoch": 10})
        return store.get_or_create("inner", {"k": 1}, inner) + 1

    def inner() -> int:
        first.append({"phase": "train inner", "epochs": 1, "images_per_epoch": 5})
        return 41

    assert store.get_or_create("outer", {"k": 2}, outer) == 42
    tags = [e["artifact"].split("/")[0] for e in first]
    assert tags == ["outer", "inner"]
    second: list[dict] = [{"phase": "eval", "images": 3}]
    again = cache.ArtifactCache(tmp_path, ledger=second)
    assert again.get_or_create("outer", {"k": 2}, lambda: 0) == 42
    assert again.get_or_create("inner", {"k": 1}, lambda: 0) == 41  # already in: not twice
    assert [{k: v for k, v in e.items() if k != "reused"} for e in second[1:]] == first
    assert all(e["reused"] for e in second[1:]) and len(second) == 3
