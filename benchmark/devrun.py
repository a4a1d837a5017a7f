"""The development run (``--fast-dev-run``, after PyTorch Lightning's): every cell as configured,
every loop cut to a few small batches.

A cell keeps its real configuration: model width and resolution, the whole dataset (so splits,
pools and per-class counts see the real sample counts), every phase, caches, metrics and the
record. What is cut:
- a training phase runs its first epoch and its last by their real indices (plus any boundary
  epochs the phase names, e.g. ASD's stage changes), and in each only ``batches`` batches of
  ``batch_size`` images: the first ones of the first epoch, the last ones of the last epoch, at
  the global step a full run would be at (learning-rate schedules, milestones and ramp-ups are
  evaluated at their ends);
- a pass over a set of images (evaluation, loss rankings, feature extraction, scaled passes)
  computes ``eval_images`` rows and repeats them to the set's length, so what follows gets
  tensors of the real shape;
- an attack's or defense's own loops (Trojan's optimisation, CL's PGD, Dynamic's generator,
  Refool's selection rounds) run their first and last iterations.

The setting travels with the cell: its trainer's ``loops`` (``Loops``) cut the trainer's and the
shared helpers' loops, and a method's own loop asks them (``tr.loops.indices(n)``); the cell's
artifact cache tags what a development run makes with its preset. Its records and artifacts are
kept apart (``<results>/fast-dev-run/``, a ``fast_dev_run`` key in the cell config: other cell
ids and artifact keys) and never enter tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the artifact cache reads this module too
    import torch

FOLDER = "fast-dev-run"  # under --results: the development run's records and artifacts


@dataclass(frozen=True)
class DevRun:
    batches: int = 2  # training batches run at each end of a phase
    batch_size: int = 8  # images in each (at least 2: BatchNorm trains on a batch)
    eval_images: int = 16  # rows computed per pass over a set; the rest repeat them

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ArtifactCollision(RuntimeError):
    """A development run asked for an artifact that a cell of another preset made: its cache
    key misses what tells the two apart (a real run would load the wrong artifact)."""


@dataclass(frozen=True)
class Loops:
    """How far each loop of a cell runs: every iteration (``dev`` None, a real run), or a
    development run's cut. The cell's trainer carries it (``Trainer.loops``), so the trainer and
    the shared helpers cut their own loops, and a method's own loop asks the trainer's."""

    dev: DevRun | None = None

    def indices(self, n: int, keep: Iterable[int] = ()) -> list[int]:
        """Which of ``n`` iterations (epochs, rounds, optimisation steps) to run: all of them, or
        in a development run the first ``batches`` and the last ``batches`` plus ``keep``."""
        if self.dev is None:
            return list(range(n))
        b = self.dev.batches
        return sorted({*range(min(b, n)), *range(max(0, n - b), n), *(k for k in keep if 0 <= k < n)})

    def epochs(self, n: int, keep: Iterable[int] = ()) -> list[int]:
        """The epochs of an ``n``-epoch phase to run: all, or its first and last (plus ``keep``)."""
        if self.dev is None:
            return list(range(n))
        return sorted({0, n - 1, *(k for k in keep if 0 <= k < n)}) if n > 0 else []

    def rows(self, n: int) -> int:
        """How many of ``n`` rows a pass over a set computes."""
        return n if self.dev is None else min(n, self.dev.eval_images)

    def batch(self, n: int) -> int:
        """How many images a training batch of ``n`` holds in a method's own loop: ``n``, or a
        development run's ``batch_size`` (at least 2: BatchNorm trains on a batch)."""
        return n if self.dev is None else min(n, max(2, self.dev.batch_size))


REAL = Loops()  # a real run: every loop to its end


def mark(config: dict) -> dict:
    """A resolved cell config as a development-run cell: the settings join its identity, so its
    id and every artifact key differ from the real cell's."""
    return {**config, "fast_dev_run": DevRun().as_dict()}


def fill(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` (the first rows of a pass) repeated to ``n`` rows; ``t`` itself when it has them."""
    if len(t) >= n or len(t) == 0:
        return t
    import torch

    return t[torch.arange(n) % len(t)]


def catch_up(sched: torch.optim.lr_scheduler.LRScheduler, target: int) -> None:
    """Step ``sched`` until it stands where ``target`` steps put it (the skipped epochs or steps
    of a development run), through its own ``step`` so any scheduler is exact."""
    with warnings.catch_warnings():  # stepping ahead of optimizer.step() is the point here
        warnings.simplefilter("ignore", UserWarning)
        while sched.last_epoch < target:
            sched.step()
