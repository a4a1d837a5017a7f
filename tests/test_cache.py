import os
import stat

import pytest

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
    assert sorted(os.listdir(path.parent)) == sorted([path.name, path.stem + ".lock", "index.jsonl"])
    assert path.stem in (path.parent / "index.jsonl").read_text()


def test_the_clean_reference_model_is_shared_across_attacks_and_their_versions(tmp_path):
    from dataclasses import replace

    from attacks.reference import reference_model
    from tests.attack_helpers import make_attack, make_set

    ctx = make_attack("cl", cache_root=tmp_path).ctx
    train = make_set(60)
    for key in ({"data": 1, "attack": "cl", "attack_params": {"eps": 8}},
                {"data": 1, "attack": "trojan", "attack_params": {}, "attack_version": 2}):
        reference_model(replace(ctx, cache_key=key), train, epochs=1)
    assert len(list((tmp_path / "models").glob("*.pt"))) == 1
