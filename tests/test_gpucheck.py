"""The GPU check's CPU fallback: every part runs at ``--scale tiny`` and lands in one JSON."""

import json

import pytest

from benchmark.gpucheck import main

pytestmark = pytest.mark.slow  # a grid of every part, on Ray where it is installed


def test_gpu_check_runs_its_cpu_fallback_and_writes_one_json(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("BDBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "perf" / "check.json"
    assert main(["--data-root", str(tiny_cifar), "--out", str(out), "--scale", "tiny"]) == 0
    report = json.loads(out.read_text())
    assert report["scale"] == "tiny" and set(report["seconds"]) == {"throughput", "cell", "phases", "dev_run"}
    assert report["throughput"]["trainer fp32 b32"] > 0 and report["throughput"]["peer loop b32"] > 0
    assert [p["epoch"] for p in report["cell"]["epochs"]] == [1, 2]
    assert 0 <= report["cell"]["ca"] <= 1 and report["cell"]["seconds_per_epoch"] > 0
    assert {"plain training", "DBD SimCLR", "MixMatch (1024 iterations)",
            "PIPD feature extraction"} <= set(report["phases"])
    assert report["dev_run"]["cells"] >= 18 and report["dev_run"]["failed"] == {}
    assert "ray" in report["skipped"]  # no GPU to pack trials on
    assert list(report["calibration"]["img_per_s"].values())[0] > 0
