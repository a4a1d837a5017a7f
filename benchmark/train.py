"""A lean trainer: data stays a uint8 tensor on the device, augmentation is batched there.

No DataLoader, no per-image Python: each step slices a batch by a permutation of indices,
crops/flips it with tensor ops, normalises, and runs forward/backward. channels_last on both
devices (measured ~1.2-1.5x faster than NCHW for ResNet-18 on the CPU), cudnn.benchmark on CUDA,
all the cores it is given on the CPU.

Precision (``TrainConfig.precision``) applies to the training steps only: ``bf16`` autocasts
forward and backward where the device computes bf16 natively and falls back to fp32 with a
one-line note where it does not (a CPU without AVX512-BF16/AMX emulates it, ~10x slower than
fp32). Everything read as a measurement stays fp32: evaluation logits, per-sample losses (which
rank LGA's seeds), feature statistics (isolation) and metrics.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import devrun
from benchmark.augment import cutout as augment_cutout
from benchmark.cache import hashed_fields, keyed_fields
from benchmark.progress import Phase
from benchmark.registry import UsageError
from benchmark.validate import at_least

# loss_fn(logits, targets, sample_index) -> scalar loss; sample_index: rows of the training tensor
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# step(forward, x, y, rows, generator) -> (loss, logits or None): one optimisation step's loss
# from a uint8 batch on the device (the default augments, normalises and applies loss_fn);
# SimCLR's two views and MixMatch's labelled + unlabelled batches plug in here
StepFn = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor,
                   torch.Generator], "tuple[torch.Tensor, torch.Tensor | None]"]
# callback(epoch, model) -> metrics to append to the per-epoch curve (or None)
EpochCallback = Callable[[int, nn.Module], "dict[str, float] | None"]
# epoch_data(epoch) -> that epoch's (images, labels): a training set re-drawn every epoch
EpochData = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


class Checkpoint(Protocol):
    """Where ``Trainer.fit`` keeps its state between epochs, so an interrupted training goes on
    from its last saved epoch (``ArtifactCache.checkpoint`` keeps it beside the artifact). With
    ``keep_final`` the finished fit is kept too, and a re-run skips it: its weights, RNG and
    curve come back as the fit left them (``DefenseContext.checkpoint``)."""

    keep_final: bool

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


class LoopCheckpoint:
    """``Trainer.fit``'s checkpointing for a training loop of a method's own (VaB's beneficiary,
    D-BR's unlearning): after each epoch, at most every ``trainer.checkpoint_every_s`` seconds
    and always after the last, the ``carried`` objects (modules, optimisers: anything with
    ``state_dict``), the loop's generator, torch's CPU and CUDA RNG, the curve and the loop's
    extras are saved; ``resume`` brings them back where the save was ``made_by`` the same loop
    (its recipe, its precision), else starts over. With no checkpoint (a cell run without a
    cache) both do nothing."""

    def __init__(self, checkpoint: Checkpoint | None, trainer: Trainer, phase: Phase,
                 generator: torch.Generator, made_by: dict,
                 **carried: nn.Module | torch.optim.Optimizer) -> None:
        self.checkpoint, self.trainer, self.phase = checkpoint, trainer, phase
        self.generator, self.made_by, self.carried = generator, made_by, carried
        self._last_save = time.monotonic()
        self._work_from = len(trainer.work)  # the ledger entries of the loop's epochs start here

    def resume(self) -> dict | None:
        """Restore what the last save carried and return its extras with ``epochs_done`` and
        ``curve`` (its points marked ``resumed``), or None where nothing usable was saved."""
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is None or saved.get("made_by") != self.made_by:
            return None
        for name, obj in self.carried.items():
            obj.load_state_dict(saved["carried"][name])
        self.trainer.set_rng_state(self.generator, saved)
        self.trainer.restore_work(saved.get("work", []))  # the finished epochs' passes
        self.phase.resume(saved["epochs_done"])
        return {**saved["extras"], "epochs_done": saved["epochs_done"],
                "curve": [{**point, "resumed": True} for point in saved["curve"]]}

    def epoch_done(self, epochs_done: int, last: bool, curve: list[dict], **extras: object) -> None:
        """After an epoch: save, if the interval has passed since the last save or it was the last."""
        every_s = self.trainer.checkpoint_every_s
        if self.checkpoint is None or not (last or time.monotonic() - self._last_save >= every_s):
            return
        self.checkpoint.save({"epochs_done": epochs_done, "made_by": self.made_by, "curve": curve,
                              "extras": extras, "work": self.trainer.work[self._work_from:],
                              "carried": {k: v.state_dict() for k, v in self.carried.items()},
                              **self.trainer.rng_state(self.generator)})
        self._last_save = time.monotonic()


class Callback:
    """Hooks into ``Trainer.fit``'s epochs, as Lightning's callbacks: a training scheme that
    needs more than a loss (``loss_fn``) or a batch computation (``step``) overrides the hooks
    it needs, and ``fit`` keeps the loop, optimiser, schedule, precision and curves. Epochs are
    0-based except in ``on_epoch_end`` (1-based, as the curves). At most one callback of a fit
    gives ``epoch_data`` and one ``epoch_rows``. One that carries state from epoch to epoch
    returns it from ``state_dict`` and takes it back in ``load_state_dict``, so a checkpointed
    fit resumes it."""

    # 0-based epochs where the scheme changes behaviour: a development run runs them too
    boundaries: tuple[int, ...] = ()

    def epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """That epoch's images and labels, shaped as fit's (an attacker re-poisoning every epoch)."""
        return None

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """A pass of the scheme's own at the start of the epoch, the model in training mode
        (CBD's discriminator)."""

    def epoch_rows(self, epoch: int, model: nn.Module) -> torch.Tensor | None:
        """The rows the epoch trains on, for schemes that re-split every epoch (DBD, ASD); needs
        ``cfg.steps_per_epoch``, so the schedule does not depend on the split."""
        return None

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float] | None:
        """Metrics to add to the epoch's curve point (CA/ASR: ``DefenseContext.monitor``)."""
        return None

    def state_dict(self) -> dict | None:
        """The state the callback carries from one epoch to the next (a model of its own, its
        optimiser, its generator), saved with the fit's checkpoint; None: it carries none."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned, when a fit resumes from its checkpoint."""
        raise NotImplementedError(f"{type(self).__name__} returns a state but cannot load it")


class LambdaCallback(Callback):
    """A ``Callback`` from functions (Lightning's ``LambdaCallback``). ``state``, a dict of what
    the functions carry across epochs, is saved with the fit's checkpoint; when the fit resumes,
    a saved tensor is copied into the tensor the dict holds (the functions may hold it too) and
    any other value replaces the dict's."""

    def __init__(self, *, epoch_data: EpochData | None = None,
                 on_epoch_start: Callable[[int, nn.Module], None] | None = None,
                 epoch_rows: Callable[[int, nn.Module], torch.Tensor] | None = None,
                 on_epoch_end: EpochCallback | None = None, boundaries: tuple[int, ...] = (),
                 state: dict | None = None) -> None:
        self.boundaries, self.state = boundaries, state
        for name, fn in (("epoch_data", epoch_data), ("on_epoch_start", on_epoch_start),
                         ("epoch_rows", epoch_rows), ("on_epoch_end", on_epoch_end)):
            if fn is not None:
                setattr(self, name, fn)

    def state_dict(self) -> dict | None:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            held = self.state.get(key)
            if isinstance(held, torch.Tensor) and isinstance(value, torch.Tensor):
                held.copy_(value)
            else:
                self.state[key] = value


def _overrides(callbacks: Sequence[Callback], hook: str) -> list[Callback]:
    """The callbacks that implement ``hook`` (not the base's no-op)."""
    return [c for c in callbacks if hook in vars(c) or getattr(type(c), hook) is not getattr(Callback, hook)]

OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
CROP_MODES = ("zeros", "reflect")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """One training phase. Every field can be set per phase from a preset or ``--set``."""

    epochs: int = field(default=10, metadata=at_least(1))
    batch_size: int = field(default=128, metadata=at_least(1))
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)  # epochs, for schedule "step"
    # cosine: the schedule runs as if training lasted this many times ``epochs`` and stops early
    # (DBD's SimCLR: the reference's cosine spans 1000 epochs and it fine-tunes from epoch 100)
    schedule_span: float = 1.0
    gamma: float = 0.1
    warmup: float = 0.0  # fraction of the steps spent warming up linearly (onecycle: the peak)
    augment: bool = True  # random crop + horizontal flip
    crop_padding: int = 4
    crop_mode: str = "zeros"  # padding: zeros or reflect
    # after crop and flip, one square hole of this side zeroed per image (augment.cutout); 0: none
    cutout: int = field(default=0, metadata=at_least(0))
    label_smoothing: float = 0.0
    # training-step precision: auto = bf16 on CUDA, fp32 on the CPU (see resolve_precision)
    precision: str = "auto"
    compile: bool = False  # torch.compile the train step
    freeze_bn: bool = False  # BatchNorm in eval mode (NONE)
    # a fixed number of steps per epoch, cycling through the samples (MixMatch's iterations);
    # None: one pass over them
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        for name, value, valid in (("optimizer", self.optimizer, OPTIMIZERS),
                                   ("schedule", self.schedule, SCHEDULES),
                                   ("precision", self.precision, PRECISIONS),
                                   ("crop_mode", self.crop_mode, CROP_MODES)):
            if value not in valid:
                raise UsageError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
        if self.schedule_span < 1:
            raise UsageError(f"schedule_span must be at least 1, got {self.schedule_span}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown training option(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes: object) -> TrainConfig:
        return TrainConfig(**{**asdict(self), **changes})

    def key(self) -> dict:
        """The fields that identify a training run in cache keys and cell ids."""
        return hashed_fields(TrainConfig, asdict(self), keyed_fields("train"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_in_cpu_flags(cpuinfo: str) -> bool:
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo; False where that cannot be read). Elsewhere oneDNN emulates bf16: on an AVX2
    EPYC here bf16 autocast trained ResNet-18 (width 16) at 32 img/s against 340-480 in fp32."""
    try:
        return bf16_in_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision the training steps use, a note when that is not what was asked for).

    ``auto`` is bf16 on CUDA and fp32 on the CPU: bf16 on a bf16-native CPU is available as
    ``precision=bf16`` (at quick, BadNets: within 0.3 points of fp32, docs/results/analysis).
    """
    if requested == "fp32":
        return "fp32", ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", ""
        return "fp32", "" if requested == "auto" else "this GPU has no bf16 support: training in fp32"
    if requested == "bf16" and not cpu_native_bf16():
        return "fp32", ("precision=bf16: this CPU has no native bf16 (AVX512-BF16 / AMX), where "
                        "autocast runs ~10x slower than fp32; training in fp32")
    return ("bf16" if requested == "bf16" else "fp32"), ""


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """One line on stderr, once per process."""
    if message and message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


def onednn_crash_prone(model: nn.Module) -> bool:
    """Whether training ``model`` channels_last on the CPU hits a oneDNN crash seen here.

    torch 2.14.1: the backward of a 1x1 stride-2 convolution in channels_last with few input
    channels segfaults or aborts ("double free or corruption"), or spins forever; NCHW is fine.
    On an AVX2 EPYC with 2-7 input channels; on an AVX-512 BF16 EPYC with 7-15 input channels
    and an odd batch size (width 8's first projection shortcut: smoke and demo models, whose
    last batch of a subset can be odd). So every such shortcut with fewer than 16 channels.
    """
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
               and 1 < m.in_channels < 16 for m in model.modules())


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices outside [0, n) mirrored back without repeating the edge (numpy's ``reflect``)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` of ``total``."""
    t = step / max(total, 1)
    if cfg.schedule == "onecycle":  # linear up to the peak, linear down to zero
        peak = cfg.warmup if cfg.warmup > 0 else 0.25
        return t / peak if t < peak else max(0.0, (1 - t) / (1 - peak))
    warm = cfg.warmup
    if warm > 0 and t < warm:
        return t / warm
    if cfg.schedule == "cosine":
        t = t / cfg.schedule_span
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1 - warm, 1e-8)))
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


class Trainer:
    """Trains and evaluates classifiers on uint8 image tensors; owns device and speed settings."""

    # the least time between two checkpoints of a fit given one (each is a model and its
    # optimiser state: ResNet-18's 90 MB)
    checkpoint_every_s: float = 60.0

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], *,
                 device: torch.device | str | None = None, channels_last: bool = True,
                 threads: int | None = None,
                 eval_batch_size: int = 512, loops: devrun.Loops = devrun.REAL) -> None:
        self.loops = loops  # how far loops run: all the way, or a development run's cut
        self.device = torch.device(device) if device is not None else default_device()
        self.cuda = self.device.type == "cuda"
        self.channels_last = channels_last
        self.precisions_used: set[str] = set()  # what the training steps ran in (for records)
        # what the phases would process at their configured size (each fit's epochs x steps x
        # batch, each pass over a set): the cost model's inputs, read by a development run
        self.work: list[dict[str, object]] = []
        self.step_index = 0  # the global optimisation step of the current fit (0-based)
        self.eval_batch_size = eval_batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))

    # ---------------------------------------------------------------- tensors on the device
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def restore_work(self, entries: list[dict[str, object]]) -> None:
        """Put back the ledger entries a checkpoint's finished epochs added; an entry of an
        artifact the ledger already holds is left out, as ``ArtifactCache`` counts an artifact
        once a cell. (A checkpoint made before checkpoints kept them restores nothing.)"""
        present = {e.get("artifact") for e in self.work} - {None}
        self.work.extend(e for e in entries if e.get("artifact") not in present)

    def rng_state(self, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
        """The random state a checkpoint keeps: the loop's generator, torch's CPU RNG and, on a
        GPU, its CUDA RNG (``set_rng_state`` restores it)."""
        return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None}

    def set_rng_state(self, generator: torch.Generator, saved: dict) -> None:
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if self.cuda and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last and not self.cuda and onednn_crash_prone(model):
            # inputs must follow too (a channels_last input crashes an NCHW conv the same way),
            # so this trainer stays NCHW from here on
            note_once("a 1x1 stride-2 conv with < 16 input channels: training NCHW on the CPU "
                      "(channels_last crashes oneDNN there)")
            self.channels_last = False
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32, channels_last when configured."""
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @staticmethod
    def augment(x: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                mode: str = "zeros", cutout: int = 0) -> torch.Tensor:
        """Batched random crop (zero or reflect padding) plus horizontal flip, on uint8 images,
        then, with ``cutout`` > 0, one zeroed square of that side per image."""
        b, c, h, w = x.shape
        dev = x.device
        if padding > 0:
            shift = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device="cpu").to(dev)
            rows = (torch.arange(h, device=dev)[None, :] + shift[0][:, None])  # (B, H)
            cols = (torch.arange(w, device=dev)[None, :] + shift[1][:, None])  # (B, W)
            if mode == "reflect":  # index the image itself, mirrored at the border (no padding copy)
                padded, rows, cols = x, reflect_index(rows - padding, h), reflect_index(cols - padding, w)
            else:
                padded = F.pad(x, (padding,) * 4)
            x = padded[torch.arange(b, device=dev)[:, None, None, None],
                       torch.arange(c, device=dev)[None, :, None, None],
                       rows[:, None, :, None], cols[:, None, None, :]]
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return augment_cutout(x, cutout, generator) if cutout > 0 else x

    def training_precision(self, cfg: TrainConfig) -> str:
        """The precision ``cfg``'s training steps run in here (notes a fallback once)."""
        used, note = resolve_precision(cfg.precision, self.device)
        note_once(note)
        self.precisions_used.add(used)
        return used

    def autocast(self, precision: str):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def epoch_batches(self, rows: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
                      ) -> Iterator[torch.Tensor]:
        """One epoch's batches of row indices: a shuffled pass over ``rows``, or with
        ``cfg.steps_per_epoch`` that many batches, reshuffling whenever the rows run out."""
        perm = rows[torch.randperm(len(rows), generator=gen)]
        if cfg.steps_per_epoch is None:
            yield from self.batches(len(perm), cfg.batch_size, perm)
            return
        pos = 0
        for _ in range(cfg.steps_per_epoch):
            if pos + cfg.batch_size > len(perm) and pos > 0:
                perm, pos = rows[torch.randperm(len(rows), generator=gen)], 0
            yield perm[pos:pos + cfg.batch_size]
            pos += cfg.batch_size

    def note_work(self, phase: str, epochs: int, images_per_epoch: int, steps_per_epoch: int,
                  batch_size: int) -> None:
        """Add a training phase at its configured size to ``work`` (``benchmark.cost`` reads it)."""
        self.work.append({"phase": phase, "epochs": epochs, "images_per_epoch": images_per_epoch,
                          "steps_per_epoch": steps_per_epoch, "batch_size": batch_size})

    def numbered_batches(self, rows: torch.Tensor, cfg: TrainConfig, gen: torch.Generator,
                         epoch: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(1-based position in the epoch, batch rows): the whole epoch, or in a development run
        the first batches of the first epoch and the last of the last, each cut to a few images."""
        dev = self.loops.dev
        if dev is None:
            yield from enumerate(self.epoch_batches(rows, cfg, gen), 1)
            return
        batches = list(self.epoch_batches(rows, cfg, gen))
        n, b = len(batches), dev.batches
        keep = set(range(min(b, n))) if epoch < cfg.epochs - 1 or epoch == 0 else set()
        if epoch == cfg.epochs - 1:  # the schedule's last steps
            keep |= set(range(max(0, n - b), n))
        for i in sorted(keep):
            yield i + 1, batches[i][:max(2, dev.batch_size)]

    def batches(self, n: int, batch_size: int, perm: torch.Tensor | None = None
                ) -> Iterator[torch.Tensor]:
        order = perm if perm is not None else torch.arange(n)
        # drop a trailing batch of one sample: BatchNorm cannot train on it
        end = n - 1 if n % batch_size == 1 and n > 1 else n
        for start in range(0, end, batch_size):
            yield order[start:start + batch_size]

    # ---------------------------------------------------------------- training
    def fit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            cfg: TrainConfig, *, indices: torch.Tensor | None = None,
            loss_fn: LossFn | None = None, step: StepFn | None = None,
            callbacks: Sequence[Callback | None] = (), seed: int = 0, desc: str = "train",
            checkpoint: Checkpoint | None = None) -> list[dict[str, float]]:
        """Train ``model`` in place on ``images[indices]``; return one metrics dict per epoch.

        ``loss_fn`` receives the logits, the targets and the row indices (into ``images``) of
        the batch, so per-sample rules (LGA, selective training, unlearning) plug in here.
        ``step`` replaces the whole per-batch computation (augmentation included) for training
        schemes with another batch shape; the loop, optimiser, schedule, precision and curves
        stay this one. ``callbacks`` (``Callback``; None entries are skipped) hook into the
        epochs: each epoch's data, a pass of its own, each epoch's rows, metrics at its end.
        With ``checkpoint``, the state after an epoch (model, optimiser, schedule, the batch
        generator and torch's global RNG, the curve) is saved at most every
        ``checkpoint_every_s`` seconds, and a fit that finds one goes on from it: the result is
        the uninterrupted fit's, bit for bit, when each callback either holds no state across
        epochs (a function of the epoch and the model, as fit_cached's are) or saves it through
        ``state_dict`` / ``load_state_dict`` (CBD's discriminator).
        """
        callbacks = [c for c in callbacks if c is not None]
        data_from, rows_from = _overrides(callbacks, "epoch_data"), _overrides(callbacks, "epoch_rows")
        starts, ends = _overrides(callbacks, "on_epoch_start"), _overrides(callbacks, "on_epoch_end")
        boundaries = tuple(b for c in callbacks for b in c.boundaries)
        rows = torch.arange(len(labels)) if indices is None else indices.cpu()
        if len(rows) == 0:
            raise ValueError(f"{desc}: no samples to train on")
        if rows_from and cfg.steps_per_epoch is None:
            raise ValueError(f"{desc}: a per-epoch split needs cfg.steps_per_epoch")
        x_all, y_all = self.to_device(images), self.to_device(labels)
        model = self.prepare_model(model)
        precision = self.training_precision(cfg)
        # the compiled module shares the model's parameters; evaluation uses the plain model
        forward = torch.compile(model) if cfg.compile else model
        opt = self._optimizer(model, cfg)
        steps_per_epoch = cfg.steps_per_epoch or len(list(self.batches(len(rows), cfg.batch_size)))
        total = steps_per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(cfg, s, total, steps_per_epoch))
        dev = self.loops.dev
        self.note_work(desc, cfg.epochs, len(rows) if cfg.steps_per_epoch is None
                       else steps_per_epoch * cfg.batch_size, steps_per_epoch, cfg.batch_size)
        work_from = len(self.work)  # the ledger entries of the epochs' own passes start here
        gen = torch.Generator().manual_seed(seed)
        loss_fn = loss_fn or (lambda logits, y, _idx: F.cross_entropy(
            logits, y, label_smoothing=cfg.label_smoothing))

        def supervised(forward, x, y, idx, g):  # noqa: ANN001, ANN202 - the default StepFn
            if cfg.augment:
                x = self.augment(x, cfg.crop_padding, g, cfg.crop_mode, cfg.cutout)
            logits = forward(self.normalize(x))
            return loss_fn(logits.float(), y, idx), logits

        step = step or supervised
        curve = []
        phase = Phase(desc, cfg.epochs, steps_per_epoch)
        start = 0  # the first epoch this call runs
        # what the checkpoint must have been made by: a checkpoint of another fit is ignored
        made_by = {"desc": desc, "cfg": cfg.key(), "seed": seed, "rows": len(rows),
                   "precision": precision}
        stateful = [c for c in callbacks if c.state_dict() is not None] if checkpoint is not None else []
        saved = checkpoint.load() if checkpoint is not None else None
        if (saved is not None and saved.get("made_by") == made_by
                and len(saved.get("callbacks", [])) == len(stateful)):
            for c, state in zip(stateful, saved.get("callbacks", []), strict=True):
                c.load_state_dict(state)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["schedule"])
            self.set_rng_state(gen, saved)
            curve = [{**point, "resumed": True} for point in saved["curve"]]
            self.restore_work(saved.get("work", []))  # the finished epochs' passes (evaluations)
            start = saved["epochs_done"]
            phase.resume(start)
        last_save = time.monotonic()
        for epoch in self.loops.epochs(cfg.epochs, boundaries):
            if epoch < start:
                continue
            model.train()
            if cfg.freeze_bn:  # running statistics and batch normalisation as in evaluation
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            if data_from:
                t_data = time.perf_counter()
                for c in data_from:
                    x_all, y_all = (self.to_device(t) for t in c.epoch_data(epoch))
                data_s = time.perf_counter() - t_data
            for c in starts:
                c.on_epoch_start(epoch, model)
            t_split = time.perf_counter()
            for c in rows_from:
                rows = c.epoch_rows(epoch, model).cpu()
            t0 = time.perf_counter()
            split_s = t0 - t_split
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = scored = 0
            for i, idx in self.numbered_batches(rows, cfg, gen, epoch):
                phase.step(epoch + 1, i)
                self.step_index = epoch * steps_per_epoch + i - 1
                if dev is not None:  # the learning rate where a full run would be at this step
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * lr_factor(cfg, self.step_index, total,
                                                                      steps_per_epoch)
                dev_idx = self.to_device(idx)
                with self.autocast(precision):
                    loss, logits = step(forward, x_all[dev_idx], y_all[dev_idx], idx, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if dev is None:
                    sched.step()
                loss_sum += loss.detach() * len(idx)
                seen += len(idx)
                if logits is not None:  # steps without class logits (SimCLR) report no accuracy
                    correct += (logits.argmax(1) == y_all[dev_idx]).sum()
                    scored += len(idx)
            stats = {"epoch": epoch + 1, "train_loss": float(loss_sum) / seen,
                     "train_acc": float(correct) / scored if scored else float("nan"),
                     "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                     "img_per_s": seen / (time.perf_counter() - t0)}
            if data_from:
                stats["data_s"] = data_s  # drawing this epoch's poisoned set
            if rows_from:
                stats["split_s"] = split_s  # choosing this epoch's rows (DBD, ASD: a loss ranking)
            if ends:
                t_cb = time.perf_counter()
                for c in ends:
                    stats.update(c.on_epoch_end(epoch + 1, model) or {})
                stats["callback_s"] = time.perf_counter() - t_cb
            curve.append(stats)
            phase.epoch_done(epoch + 1, stats)
            last = epoch + 1 == cfg.epochs
            if checkpoint is not None and ((last and checkpoint.keep_final) or (
                    not last and time.monotonic() - last_save >= self.checkpoint_every_s)):
                checkpoint.save({
                    "epochs_done": epoch + 1, "made_by": made_by, "curve": curve,
                    "work": self.work[work_from:], "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "schedule": sched.state_dict(), "callbacks": [c.state_dict() for c in stateful],
                    **self.rng_state(gen)})
                last_save = time.monotonic()
        return curve

    def fit_cached(self, cache, kind: str, key: dict, make_model: Callable[[], nn.Module],
                   images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, *, seed: int,
                   loss_fn: LossFn | None = None, step: StepFn | None = None,
                   callbacks: Sequence[Callback | None] = (), desc: str = "train"
                   ) -> tuple[nn.Module, list[dict], bool]:
        """A model trained from scratch once per ``key`` and kept in ``cache`` (an
        ``ArtifactCache``) as its state dict and curve: (prepared model, curve, whether it came
        from the cache). The initialisation is seeded here, so whichever cell asks first
        trains the same model. An interrupted training goes on from its last checkpoint (kept
        beside the artifact until the artifact is written)."""
        def train() -> dict:
            torch.manual_seed(seed)
            model = make_model()
            curve = self.fit(model, images, labels, cfg, loss_fn=loss_fn, step=step,
                             callbacks=callbacks, seed=seed, desc=desc,
                             checkpoint=cache.checkpoint(kind, key))
            return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "curve": curve,
                    "precision": self.training_precision(cfg)}

        reused = cache.exists(kind, key)
        art = cache.get_or_create(kind, key, train)
        if reused and art.get("precision"):  # a reused model's precision is the cell's too
            self.precisions_used.add(art["precision"])
        model = make_model()
        model.load_state_dict(art["state"])
        curve = [{**point, "from_cache": True} for point in art["curve"]] if reused else art["curve"]
        return self.prepare_model(model), curve, reused

    def _optimizer(self, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "radam":  # Narcissus's warm-up
            return torch.optim.RAdam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)

    # ---------------------------------------------------------------- evaluation
    def eval_batches(self, images: torch.Tensor) -> Callable[[], Iterator[torch.Tensor]]:
        """A re-iterable source of normalised device batches (eval order, no augmentation); in a
        development run of the first rows only (``devrun.fill`` repeats what they give)."""
        self.work.append({"phase": "eval", "images": len(images)})
        images = images[:self.loops.rows(len(images))]

        def gen() -> Iterator[torch.Tensor]:
            for start in range(0, len(images), self.eval_batch_size):
                yield self.normalize(self.to_device(images[start:start + self.eval_batch_size]))
        return gen

    @torch.no_grad()
    def logits(self, model: nn.Module, images: torch.Tensor,
               head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Eval-mode logits for every image (or ``head(model, x)``'s output), computed in fp32
        (metrics and loss rankings read them), returned on the CPU."""
        model = self.prepare_model(model)
        was_training = model.training
        model.eval()
        out = []
        for x in self.eval_batches(images)():
            out.append((model(x) if head is None else head(model, x)).float().cpu())
        model.train(was_training)
        return devrun.fill(torch.cat(out), len(images)) if out else torch.empty(0)

    def embeddings(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The pooled features the linear head reads (``models.embed``), fp32 on the CPU: what
        the feature-space detectors inspect."""
        from benchmark.models import embed

        return self.logits(model, images, head=embed)

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Predicted class of every image (eval mode), on the CPU."""
        return self.logits(model, images).argmax(1)

    def per_sample_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
        """Cross-entropy of every sample under the model (eval mode, no augmentation)."""
        return F.cross_entropy(self.logits(model, images), labels.cpu(), reduction="none")
