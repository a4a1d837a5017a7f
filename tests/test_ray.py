"""The default executor: cells as Ray Tune trials on a local Ray instance."""

import json
import re

import pytest

from benchmark.grid import ray_resources
from tests.test_cli import TINY


def test_resources_never_request_a_missing_gpu():
    assert ray_resources({"CPU": 2.0}, None, None) == {"cpu": 2.0, "gpu": 0.0}
    assert ray_resources({"CPU": 2.0}, 0.5, None) == {"cpu": 2.0, "gpu": 0.0}
    assert ray_resources({"CPU": 16.0, "GPU": 2.0}, None, None) == {"cpu": 8.0, "gpu": 1.0}
    assert ray_resources({"CPU": 16.0, "GPU": 2.0}, 0.5, None) == {"cpu": 4.0, "gpu": 0.5}
    assert ray_resources({"CPU": 16.0, "GPU": 1.0}, 1.0, 3.0) == {"cpu": 3.0, "gpu": 1.0}


def test_ray_executor_runs_cells_as_trials(tiny_cifar, tmp_path, capsys):
    from benchmark.cli import main

    code = main(["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
                 "--attacks", "badnets", "--defenses", "no_defense,pipd", "--cpus-per-trial", "0.5",
                 "--ship-data", "always"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[2/2 done" in out and "0 failed" in out
    assert "through the object store (every trial uses it)" in out
    # each trial's training progress reaches the driver through Ray's result stream
    assert re.search(r"cifar10/badnets/pipd seed 0 \[.*\]: \S.* \d+/\d+ ", out), out
    assert "\x1b[" not in out and "INFO" not in out and "Token authentication" not in out
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert sorted(r["config"]["defense"] for r in recs) == ["no_defense", "pipd"]
    assert all(r["status"] == "ok" for r in recs)
    # the trials read the driver's decoded data, not the node's copy (--ship-data always)
    assert all(r["data_source"].endswith("(shipped from the driver)") for r in recs)
    assert (tmp_path / "res" / "ray").is_dir()


def test_one_trial_at_a_time_runs_in_process(tiny_cifar, tmp_path, capsys, monkeypatch):
    import torch

    from benchmark.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
                 "--attacks", "badnets", "--defenses", "no_defense", "--gpus-per-trial", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "running the cells in this process" in out and "[1/1 done" in out
    assert not (tmp_path / "res" / "ray").exists()


@pytest.mark.faults
def test_ctrl_c_under_ray_records_no_failures_and_the_rerun_completes(tiny_cifar, tmp_path, faults):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "run_benchmark.py", "--grid", "smoke", "--data-root", str(tiny_cifar),
            "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
            "--set", "train.epochs=3", "--attacks", "badnets,blended,sig,trojan",
            "--defenses", "no_defense,pipd", "--cpus-per-trial", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    while "ray: 8 trial(s)" not in seen:  # Ray is up and the trials start
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "re-run the same command" in out
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert all(r["status"] == "ok" for r in recs), out  # nothing claims a failure
    assert len(recs) < 8
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(list((tmp_path / "res" / "records").glob("*.json"))) == 8
    faults["interrupts tried"] += 1
    faults["records lost"] += 0


def test_an_address_without_a_cluster_fails_in_seconds_with_one_line(tiny_cifar, tmp_path, capsys):
    import time

    from benchmark.cli import main

    t0 = time.perf_counter()
    code = main(["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
                 "--attacks", "badnets", "--defenses", "no_defense", "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.perf_counter() - t0 < 5
    assert err.startswith("error: --address 127.0.0.1:1: no Ray cluster answers there")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "res" / "records").exists()


def test_the_driver_writes_a_record_delivered_in_a_trial_result(tmp_path):
    from benchmark.grid import deliver
    from benchmark.store import ResultStore

    store = ResultStore(tmp_path)  # the driver's store: the trial wrote to another node's disk
    record = {"id": "c0ffee", "status": "ok", "config": {"attack": "badnets"}, "timings": {},
              "metrics": {"ca": 0.8, "asr": 0.02}}
    assert deliver(store, {"record": json.dumps(record)}) == record
    assert store.read("c0ffee")["metrics"] == record["metrics"]
    assert deliver(store, {"ok": True}) is None  # a result without a record (busy, old trial)
    broken = {**record, "id": "bad", "metrics": {}}
    assert deliver(store, {"record": json.dumps(broken)}) is None and store.read("bad") is None


PROBE = '''
import os, time
from dataclasses import dataclass
from defenses import Defense, DefenseParams, DefenseResult, register_defense

@dataclass
class ProbeParams(DefenseParams):
    hold: float = 4.0

@register_defense
class GpuProbe(Defense):
    """Trains nothing: records which GPU Ray gave the trial, and when it ran."""
    name = "gpu_probe"
    Params = ProbeParams

    def run(self, ctx):
        start = time.time()
        time.sleep(self.params.hold)
        return DefenseResult(model=ctx.make_model(), info={
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()})
'''


def test_fractional_gpus_share_devices_and_run_together(tiny_cifar, tmp_path, monkeypatch):
    """4 GPUs declared to a local Ray, 0.5 GPU a trial: the 8 trials run at once, two on each
    device, each told its own device through CUDA_VISIBLE_DEVICES."""
    import ray

    from benchmark.cli import main

    plugin = tmp_path / "probe.py"
    plugin.write_text(PROBE)
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda **kw: real_init(num_gpus=4, num_cpus=8, **kw))
    seeds = ",".join(str(s) for s in range(8))
    code = main(["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
                 "--plugin", str(plugin), "--attacks", "clean", "--defenses", "gpu_probe",
                 "--seeds", seeds, "--gpus-per-trial", "0.5", "--cpus-per-trial", "1",
                 "--set", "gpu_probe.hold=30"])  # longer than 8 workers take to start here
    assert code == 0
    infos = [json.loads(p.read_text())["defense_info"]
             for p in (tmp_path / "res" / "records").glob("*.json")]
    assert len(infos) == 8
    visible = sorted(i["visible"] for i in infos)
    assert visible == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert max(i["start"] for i in infos) < min(i["end"] for i in infos)  # all 8 at once


KILLER = '''
import os, signal
from pathlib import Path
from defenses import Defense, register_defense

@register_defense
class KilledOnce(Defense):
    """Its trial process dies by SIGKILL the first time (as under the OOM killer)."""
    name = "killed_once"

    def run(self, ctx):
        marker = Path(os.environ["KILLED_ONCE_MARKER"])
        if not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        from defenses.base import DefenseResult
        return DefenseResult(model=ctx.make_model())
'''


@pytest.mark.faults
def test_a_trial_killed_by_sigkill_is_recorded_failed_and_the_rerun_retries_it(
        tiny_cifar, tmp_path, monkeypatch, capsys, faults):
    from benchmark.cli import main

    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    monkeypatch.setenv("KILLED_ONCE_MARKER", str(tmp_path / "marker"))
    args = ["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir", str(tmp_path / "cache"),
            "--results", str(tmp_path / "res"), *TINY, "--plugin", str(plugin),
            "--attacks", "badnets", "--defenses", "no_defense,killed_once", "--cpus-per-trial", "1"]
    assert main(args) == 1
    recs = {json.loads(p.read_text())["config"]["defense"]: json.loads(p.read_text())
            for p in (tmp_path / "res" / "records").glob("*.json")}
    assert recs["no_defense"]["status"] == "ok"
    assert recs["killed_once"]["status"] == "failed"
    assert "died without a result" in recs["killed_once"]["error"]
    capsys.readouterr()
    assert main(args) == 0  # the re-run retries the failed cell only
    assert "1 already done, 1 to run" in capsys.readouterr().out
    faults["trials killed"] += 1
    faults["retried by the re-run"] += 1
