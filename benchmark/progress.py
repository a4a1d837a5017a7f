"""Progress of a grid and of the training inside its cells, in one line format.

Training code calls ``emit`` with plain events; one sink per process turns them into output:
``Console`` in the driver (an updating line on a terminal, whole lines at most every
``interval`` seconds in a log file), ``RayReporter`` in a Ray trial (events travel in the
trial's result stream and the driver's callback prints them, so a trial on another node shows
its progress too). With no sink, ``emit`` does nothing.

Events (``Phase`` makes them): ``{"kind": "step", "phase", "epoch", "epochs", "step",
"steps", "eta_s"}`` at most once a second inside an epoch, and ``{"kind": "epoch", ...,
"metrics"}`` after each epoch. Fractions print as percent, times as seconds/minutes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Event = dict[str, Any]
Sink = Callable[[Event], None]

_sink: Sink | None = None

# metric keys whose values are fractions (printed as percent)
PERCENT = {"train_acc": "acc", "ca": "CA", "asr": "ASR", "tpr": "TPR", "fpr": "FPR",
           "clean_acc": "clean acc", "poison_acc": "poison acc", "backdoor_acc": "backdoor acc",
           "mask_density": "mask density",
           "split_tpr": "split TPR", "split_fpr": "split FPR", "split_auroc": "split AUROC"}
HIDDEN = {"epoch", "lr", "seconds", "img_per_s", "split_s", "callback_s", "data_s", "from_cache", "resumed",
          "split_score_poisoned", "split_score_benign"}


def set_sink(sink: Sink | None) -> Sink | None:
    """Install ``sink`` for this process; returns the previous one (to restore it)."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def emit(event: Event) -> None:
    if _sink is not None:
        _sink(event)


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def metric_text(key: str, value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if key in PERCENT:
        return f"{PERCENT[key]} {100 * value:.1f}%"
    if key.endswith("loss"):
        return f"{key.replace('_', ' ')} {value:.3f}"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


def event_line(ev: Event) -> str:
    """One event as one line, e.g.
    ``pipd selective 8/12  train loss 0.558  acc 75.5%  CA 76.9%  ASR 2.1%  52 s  ETA 3.5 min``."""
    head = f"{ev['phase']} {ev['epoch']}/{ev['epochs']}"
    if ev["kind"] == "step":
        return f"{head}  step {ev['step']}/{ev['steps']}  ETA {duration(ev['eta_s'])}"
    m = ev.get("metrics", {})
    parts = [metric_text(k, v) for k, v in m.items() if k not in HIDDEN]
    speed = f" ({m['img_per_s']:.0f} img/s)" if m.get("img_per_s") else ""
    parts.append(f"{duration(m.get('seconds', float('nan')))}{speed}")
    if ev["epoch"] < ev["epochs"]:
        parts.append(f"ETA {duration(ev['eta_s'])}")
    return "  ".join([head, *[p for p in parts if p]])


class Console:
    """Prints events to ``stream``: on a terminal the step events rewrite one line; in a log,
    epoch lines always and step lines at most every ``interval`` seconds (no bar fragments)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 interval: float = 30.0, prefix: str = "  ") -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval, self.prefix = interval, prefix
        self._last = -math.inf
        self._open = False  # an unfinished updating line is on the terminal

    def __call__(self, ev: Event) -> None:
        now = time.monotonic()
        line = self.prefix + event_line(ev)
        if ev["kind"] == "step":
            if self.tty:
                self.stream.write("\r" + line + "\x1b[K")
                self._open = True
            elif now - self._last >= self.interval:
                self.stream.write(line + "\n")
                self._last = now
            else:
                return
        else:
            self.stream.write(("\r" + line + "\x1b[K" if self._open else line) + "\n")
            self._open, self._last = False, now
        self.stream.flush()


class RayReporter:
    """Sends events through ``ray.tune.report`` (rate-limited to one every ``interval``
    seconds, the latest winning), for the driver's callback to print."""

    def __init__(self, interval: float = 20.0) -> None:
        self.interval = interval
        self._last = -math.inf

    def __call__(self, ev: Event) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        from ray import tune

        self._last = now
        tune.report({"progress": event_line(ev)})


class Phase:
    """The progress of one training phase (or any long loop): ``step`` emits a step event at
    most every ``beat`` seconds, ``epoch_done`` an epoch event; both carry the phase's ETA from
    the time its steps have taken so far. An epoch event without ``seconds`` gets the time since
    the previous one."""

    def __init__(self, name: str, epochs: int, steps: int, beat: float = 1.0) -> None:
        self.name, self.epochs, self.steps, self.beat = name, epochs, max(steps, 1), beat
        self.t0 = self._last = self._epoch_t0 = time.perf_counter()
        self.skipped = 0  # steps a resumed phase took before this process (not timed here)

    def resume(self, epochs_done: int) -> None:
        """The phase goes on from a checkpoint after ``epochs_done`` epochs: say so (stderr),
        and time the ETA on this process's steps only."""
        self.skipped = epochs_done * self.steps
        print(f"{self.name}: resumed from its checkpoint after epoch {epochs_done}/{self.epochs}",
              file=sys.stderr, flush=True)

    def eta(self, epoch: int, step: int) -> float:
        """Seconds left after ``step`` steps of 1-based ``epoch``."""
        done = (epoch - 1) * self.steps + step
        left = self.epochs * self.steps - done
        return (time.perf_counter() - self.t0) / max(done - self.skipped, 1) * left

    def step(self, epoch: int, step: int) -> None:
        if time.perf_counter() - self._last >= self.beat:
            self._last = time.perf_counter()
            emit({"kind": "step", "phase": self.name, "epoch": epoch, "epochs": self.epochs,
                  "step": step, "steps": self.steps, "eta_s": self.eta(epoch, step)})

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        metrics = {**metrics, "seconds": metrics.get("seconds", now - self._epoch_t0)}
        self._epoch_t0 = now
        emit({"kind": "epoch", "phase": self.name, "epoch": epoch, "epochs": self.epochs,
              "metrics": metrics, "eta_s": self.eta(epoch + 1, 0)})


class GridClock:
    """Done/total and an ETA for a grid from the mean time of its finished cells."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.t0 = time.perf_counter()

    def tick(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.done
        eta = f", ETA {duration(elapsed / self.done * left)}" if left else ""
        return f"{self.done}/{self.total} done, {duration(elapsed)}{eta}"
