"""The default executor: cells as Ray Tune trials on a local Ray instance."""

import json
import re

import pytest

from benchmark.grid import ray_resources
from tests.test_cli import TINY


def node(cpu: float, gpu: float = 0.0) -> dict[str, float]:
    return {"CPU": cpu, "GPU": gpu}


def test_resources_never_request_a_missing_gpu():
    assert ray_resources([node(2)], None, None) == {"cpu": 2.0, "gpu": 0.0}
    assert ray_resources([node(2)], 0.5, None) == {"cpu": 2.0, "gpu": 0.0}  # warned, CPUs
    assert ray_resources([node(16, 2)], None, None) == {"cpu": 8.0, "gpu": 1.0}
    assert ray_resources([node(16, 2)], 0.5, None) == {"cpu": 4.0, "gpu": 0.5}
    assert ray_resources([node(16, 1)], 1.0, 3.0) == {"cpu": 3.0, "gpu": 1.0}


def test_the_request_fits_one_node_never_the_clusters_sum():
    """A trial runs on one node: two 1-CPU nodes give 1-CPU trials (the sum, 2, fits nowhere and
    waited forever); a heterogeneous cluster gets its smallest node's size, so every node takes
    trials; with GPUs, one GPU's share of the CPUs of the GPU node with the fewest per GPU (a
    CPU-only head node is no GPU host)."""
    from benchmark.grid import placement

    assert ray_resources([node(1), node(1)], None, None) == {"cpu": 1.0, "gpu": 0.0}
    assert placement([node(1), node(1)], {"cpu": 1.0, "gpu": 0.0}) == "up to 2 at once on 2 of 2 node(s)"
    res = ray_resources([node(16), node(4)], None, None)
    assert res == {"cpu": 4.0, "gpu": 0.0}
    assert placement([node(16), node(4)], res) == "up to 5 at once on 2 of 2 node(s)"
    assert ray_resources([node(4), node(32, 4)], None, None) == {"cpu": 8.0, "gpu": 1.0}
    assert ray_resources([node(16, 4), node(16, 2)], None, None) == {"cpu": 4.0, "gpu": 1.0}
    assert ray_resources([node(64, 8)] * 4, None, None) == {"cpu": 8.0, "gpu": 1.0}
    explicit = ray_resources([node(8), node(2)], None, 4.0)  # fits the larger node only
    assert placement([node(8), node(2)], explicit) == \
        "up to 2 at once on 1 of 2 node(s) (the others are too small for one)"


@pytest.mark.parametrize("gpus,cpus,message", [
    (None, 3.0, "a trial of 3 CPU / 0 GPU fits on no node of the cluster: the largest has 2 CPU / 0 GPU"),
    (2.0, None, "--gpus-per-trial 2 fits on no node of the cluster: the largest has 16 CPU / 1 GPU"),
    (1.0, 24.0, "a trial of 24 CPU / 1 GPU fits on no node of the cluster: the largest has 32 CPU / 0 GPU"),
])
def test_a_request_no_node_can_hold_is_refused_naming_the_largest_node(gpus, cpus, message):
    from benchmark.registry import UsageError

    nodes = [node(2), node(2)] if gpus is None else [node(16, 1), node(32)]
    with pytest.raises(UsageError) as err:
        ray_resources(nodes, gpus, cpus)
    assert str(err.value) == message


def test_trials_unplaceable_past_the_bound_stop_the_grid_and_a_returning_node_resets_it():
    from benchmark.grid import UnplacedWatch

    now, alive = [0.0], [[node(1), node(1)]]
    watch = UnplacedWatch({"cpu": 1.0, "gpu": 0.0}, bound=60, nodes=lambda: alive[0],
                          clock=lambda: now[0], every=5)
    assert not watch()
    alive[0] = [node(0.5)]  # the 1-CPU nodes left; what remains cannot hold a trial
    for now[0] in (10.0, 40.0, 65.0):
        assert not watch()  # unplaceable since 10 s
    alive[0] = [node(1)]  # a node came back: the clock resets
    now[0] = 75.0
    assert not watch()
    alive[0] = []
    for now[0] in (80.0, 120.0, 139.0):
        assert not watch()
    now[0] = 145.0  # re-read (5 s since 139): unplaceable for 65 s
    assert watch() and watch.tripped
    assert watch.message().startswith("unplaced: for 60 s no node of the cluster could hold a "
                                      "trial of 1 CPU / 0 GPU (the largest alive node: none alive)")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_address_without_a_cluster_fails_in_seconds_with_one_line(tiny_cifar, tmp_path, capsys,
                                                                     monkeypatch):
    import time

    import ray

    from benchmark.cli import main

    def no_ray(*args, **kwargs):  # Ray's own connect retries for ~20 s: the probe answers first
        raise AssertionError("ray.init was reached")

    monkeypatch.setattr(ray, "init", no_ray)
    t0 = time.perf_counter()
    code = main(["--grid", "smoke", "--data-root", str(tiny_cifar), "--cache-dir",
                 str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
                 "--attacks", "badnets", "--defenses", "no_defense", "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    print(f"refused in {time.perf_counter() - t0:.1f} s")  # timings stay out of asserts
    assert code == 2
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A real local Ray cluster of two nodes, a head and a joined node, 1 CPU each, each with
    its own temp dir. Each ``ray start --block`` runs in its own process group, and only those
    groups are stopped at the end (never ``ray stop``, which would end every Ray here)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    base = tmp_path_factory.mktemp("raytmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    starts = [[ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false",
               "--temp-dir", str(base / "head"), "--block"],
              [ray_cli, "start", "--address", address, "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(base / "node"), "--block"]]
    procs = []
    try:
        for i, cmd in enumerate(starts):
            procs.append(subprocess.Popen(cmd, stdout=open(base / f"start{i}.log", "w"),
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True))
            if i == 0:  # the head answers before the node joins it
                deadline = time.monotonic() + 60
                while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                    assert time.monotonic() < deadline and procs[0].poll() is None, \
                        (base / "start0.log").read_text()
                    time.sleep(0.5)
        probe = subprocess.run(
            [sys.executable, "-c", "import sys, time, ray\n"
             f"from benchmark.grid import join_cluster, alive_nodes\n"
             f"join_cluster({address!r}, {{'logging_level': 40}})\n"
             "end = time.time() + 90\n"
             "while len(alive_nodes()) < 2 and time.time() < end: time.sleep(1)\n"
             "print(len(alive_nodes()))"], capture_output=True, text=True, timeout=150, env=env)
        assert probe.stdout.strip().endswith("2"), probe.stdout + probe.stderr
        yield address
    finally:
        for p in reversed(procs):  # each group: ray start, its GCS / raylet and their workers
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=wait)
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


@pytest.mark.slow
def test_a_grid_on_two_one_cpu_nodes_runs_every_cell_with_the_default_request(
        two_nodes, tiny_cifar, tmp_path):
    import subprocess
    import sys

    args = [sys.executable, "run_benchmark.py", "--grid", "smoke", "--data-root", str(tiny_cifar),
            "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
            "--attacks", "badnets,blended", "--defenses", "no_defense,pipd", "--address", two_nodes]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "ray: 4 trial(s), each 1 CPU / 0 GPU; up to 2 at once on 2 of 2 node(s)" in out
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs), out


@pytest.mark.slow
def test_an_impossible_request_on_the_cluster_is_refused_in_seconds(two_nodes, tiny_cifar, tmp_path):
    import subprocess
    import sys
    import time

    args = [sys.executable, "run_benchmark.py", "--grid", "smoke", "--data-root", str(tiny_cifar),
            "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "res"), *TINY,
            "--attacks", "badnets", "--defenses", "no_defense", "--address", two_nodes,
            "--cpus-per-trial", "4"]
    t0 = time.monotonic()
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [ln for ln in run.stderr.splitlines() if not ln.startswith("note: --set ")]  # TINY's
    assert lines == ["error: a trial of 4 CPU / 0 GPU fits on no node of the cluster: the largest "
                     "has 1 CPU / 0 GPU"], run.stderr
    assert not list((tmp_path / "res").glob("records/*.json"))
    print(f"refused in {took:.1f} s")  # the bound is 10 s; timings stay out of asserts
