"""The defense interface: train on a (possibly poisoned) set, return a model and an isolation.

A defense never sees the ground truth: it gets the images and labels, a model factory, a
trainer and the base training recipe. It returns the trained model, its predicted-poison mask
and per-sample scores when it has them, per-epoch curves, and any further named masks (e.g.
per-round isolations) which the metrics step judges against the ground truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.models import stage_output
from benchmark.registry import Registry
from benchmark.train import Callback, Checkpoint, EpochData, LambdaCallback, LossFn, TrainConfig, Trainer

DEFENSES: Registry[type[Defense]] = Registry(
    "defense", hint="a defense of your own is named with --plugin FILE, which registers it")


@dataclass
class DefenseParams:
    """Options common to every defense (subclass to add a defense's own)."""


@dataclass
class DefenseContext:
    train: ImageSet  # the training set as received: images and (possibly poisoned) labels
    make_model: Callable[[], nn.Module]  # a fresh, randomly initialised model
    trainer: Trainer  # fits, predicts and ranks on the cell's device (ctx.trainer.fit, ...)
    train_cfg: TrainConfig  # the base recipe (a No Defense run uses exactly this)
    seed: int  # the cell's seed: pass it to fit() and to any generator of your own
    cache: ArtifactCache  # for defense-side artifacts shared across cells (e.g. a pre-isolation model)
    # key of the defense's own artifacts: everything upstream (dataset, attack, model, recipe,
    # seed) and the defense's version (benchmark.keys: "defense")
    cache_key: dict
    monitor: Callback | None = None  # CA/ASR at each epoch's end: pass it in fit(callbacks=[...])
    trusted: ImageSet | None = None  # a small clean set, for defenses that assume one
    # trusted clean samples (Defense.trusted_per_class): held-out images in ``trusted``, or rows
    # of the training set in ``trusted_rows`` (then left out of TPR/FPR); how, in words
    trusted_rows: torch.Tensor | None = None
    trusted_source: str = ""  # where the trusted samples came from, in words (for the record)
    # the poison mask, given only to analyses that declare needs_ground_truth (PIPD's Table 3
    # fault-ratio study); None in every defense run
    ground_truth: torch.Tensor | None = None
    # the harness's reading of a split the defense re-draws every epoch (DBD, ASD): it takes the
    # rows the defense currently leaves out and puts their TPR/FPR in the epoch's curve point;
    # nothing comes back to the defense
    split_probe: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None
    # an attack that controls training (``attack.repoison_every_epoch``): each epoch's images and
    # labels for the backdoored model; only defenses with ``accepts_repoisoning`` get one
    epoch_data: EpochData | None = None
    # keys of the shared artifacts a defense builds on ("shared", "images": benchmark.keys)
    keys: dict[str, dict] = field(default_factory=dict)
    # what the defense's own checkpoints are kept under: {"cell": id, "code": digests}
    checkpoint_scope: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def key(self, kind: str) -> dict:
        """The cell's key for artifacts of ``kind`` (``benchmark.keys.ARTIFACTS``); a context
        built by hand (tests) without ``keys`` gets its own key marked with the kind."""
        return self.keys.get(kind, {**self.cache_key, "kind": kind})

    def checkpoint(self, phase: str) -> Checkpoint | None:
        """A checkpoint for the defense's own ``fit`` named ``phase`` (pass it as
        ``fit(checkpoint=...)``): an interrupted cell's re-run goes on from its last epoch, and
        skips it once finished. Only for a fit whose loss and step hold no state of their own
        across epochs, and whose callbacks hold none or save it through ``Callback.state_dict``
        (CBD's discriminator); a loop of the defense's own passes it to ``LoopCheckpoint``.
        Kept under the cell's id and its methods' code digests (``checkpoint_scope``, set by
        the harness; None without one), so no other cell and no edited code resumes them; the
        harness clears the cell's once the defense has returned."""
        if self.cache is None or self.checkpoint_scope is None:
            return None
        return self.cache.checkpoint(self._checkpoint_kind(), {**self.checkpoint_scope, "phase": phase},
                                     keep_final=True)

    def clear_checkpoints(self) -> None:
        """Remove every checkpoint ``checkpoint`` handed out for this cell (the harness, once
        the defense has returned), with those of phases this run no longer asked for."""
        if self.cache is not None and self.cache.root is not None and self.checkpoint_scope is not None:
            shutil.rmtree(self.cache.root / self._checkpoint_kind(), ignore_errors=True)

    def _checkpoint_kind(self) -> str:
        return f"fits/{self.checkpoint_scope['cell']}"

    def note_split(self, left_out: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """Show the harness this epoch's split (bool (N,), True: not trusted) and, if it ranked
        one, the score it split by (higher: less trusted); see split_probe."""
        if self.split_probe is not None:
            self.split_probe(left_out.cpu(), None if scores is None else scores.cpu())

    # ---------------------------------------------------------- models shared across defenses
    def backdoored_model(self) -> tuple[nn.Module, list[dict], bool]:
        """The model standard training gives on this training set (what No Defense trains,
        what the detectors inspect and NONE starts from): trained once per (data, attack,
        model, recipe, seed), cached, and shared by every defense. Returns (model, per-epoch
        curve, whether it came from the cache)."""
        return self.trained_once("backdoored", {**self.key("shared"), "phase": "backdoored"},
                                 self.train_cfg, None, "train",
                                 callbacks=[LambdaCallback(epoch_data=self.epoch_data)]
                                 if self.epoch_data is not None else ())

    def lga_model(self, cfg: TrainConfig, gamma: float, batch_mean: bool
                  ) -> tuple[nn.Module, list[dict], bool]:
        """A model trained from scratch with ABL's LGA loss: PIPD's pre-isolation model and
        ABL's isolation model. Cached by its settings, so PIPD and ABL share it when their
        settings agree (and a sweep over later PIPD steps trains it once)."""
        from benchmark.losses import lga_loss

        # "pipd-pre-isolation": the phase name of caches made before ABL shared the model
        key = {**self.key("shared"), "phase": "pipd-pre-isolation", "cfg": cfg.key(), "gamma": gamma,
               "batch_mean": batch_mean}
        return self.trained_once("models", key, cfg, lga_loss(gamma, batch_mean), "LGA isolation")

    def trained_once(self, kind: str, key: dict, cfg: TrainConfig, loss_fn: LossFn | None,
                     desc: str, callbacks: Sequence[Callback] = ()
                     ) -> tuple[nn.Module, list[dict], bool]:
        """A model trained from scratch on the whole training set once per ``key`` (cached under
        ``kind``): the shared models above, and a defense's own (CBD's backdoored model)."""
        return self.trainer.fit_cached(self.cache, kind, key, self.make_model, self.train.images,
                                       self.train.labels, cfg, seed=self.seed, loss_fn=loss_fn,
                                       callbacks=[*callbacks, self.monitor], desc=desc)


@dataclass
class DefenseResult:
    model: nn.Module  # the defended model: the cell's CA / ASR are measured on it
    isolated: torch.Tensor | None = None  # bool (N,): samples the defense flags as poisoned
    # float (N,): higher = more suspicious; AUROC ranks all N rows at once (not per class)
    scores: torch.Tensor | None = None
    # per phase, one dict per epoch (what fit() returns with callbacks=[ctx.monitor]: CA/ASR curves)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # further named isolations
    excluded: torch.Tensor | None = None  # bool (N,): rows left out of TPR/FPR (trusted ones)
    # anything else for the record's defense_info: plain values (numbers, strings, lists, dicts)
    info: dict[str, Any] = field(default_factory=dict)


class Defense:
    """Base class. Subclasses set ``name`` and ``Params`` and implement ``run``."""

    name: ClassVar[str] = ""  # the registry name: lower-case, used by --defenses and --set NAME.key
    title: ClassVar[str] = ""  # what --list and records print beside the name
    column: ClassVar[str] = ""  # the name in table columns, where it differs from ``name``
    Params: ClassVar[type[DefenseParams]] = DefenseParams  # the options dataclass (--set NAME.field)
    is_detector: ClassVar[bool] = False  # isolation only (SCALE-UP, DBALFA); no defended model
    version: ClassVar[int] = 1  # bump when results change for the same params (re-keys cells)
    # runs against an attack that re-poisons every epoch (training-time control): only a defense
    # that trains plainly on what it gets; others are refused with that setting
    accepts_repoisoning: ClassVar[bool] = False

    def __init__(self, params: DefenseParams) -> None:
        self.params = params

    def trusted(self, ctx: DefenseContext) -> ImageSet:
        """The context's trusted clean samples; one clear error where a harness gave none."""
        if ctx.trusted is None:
            raise ValueError(f"{self.name} needs trusted clean images (ctx.trusted): the harness "
                             "gives them to a defense whose trusted_per_class is above 0")
        return ctx.trusted

    @classmethod
    def validation_fraction(cls, params: DefenseParams) -> float:
        """A share of the clean test set the defense gets as a benign validation set
        (``ctx.trusted``); CA/ASR are then measured on the rest, and the record says so."""
        return 0.0

    @classmethod
    def trusted_per_class(cls, params: DefenseParams) -> int:
        """Clean samples per class the defense may trust (ASD's seed): held-out training images
        where the cell has them, else ground-truth-clean rows of the training set."""
        return 0

    @classmethod
    def trains_final_model(cls, params: DefenseParams) -> bool:
        """Whether the cell's CA/ASR are those of a model the defense trained to defend (False
        for detectors and isolation-only settings): only such cells enter a CA/ASR ranking."""
        return not cls.is_detector

    @classmethod
    def needs_ground_truth(cls, params: DefenseParams) -> bool:
        """True only for analysis settings that are defined by the ground truth (the record
        then says ``defense_info.ground_truth_used``); a defense proper never sees it."""
        return False

    @classmethod
    def check_model(cls, params: DefenseParams, model: nn.Module) -> None:
        """Raise ``ValueError`` saying what the defense needs where ``model`` lacks it (named
        layers, block kinds): the cell then refuses it in one line before anything trains. Use
        the walkers the defense itself uses (``benchmark.models``), not a list of model names."""

    def run(self, ctx: DefenseContext) -> DefenseResult:
        raise NotImplementedError


class BenignValidation:
    """Mixed into a defense whose Params has ``validation``: that share of the clean test set
    becomes its benign validation set (``ctx.trusted``), as SCALE-UP, STRIP, SCAn and DBALFA take
    theirs (their references draw it from the test set; a newer method takes trusted training
    images instead: ``Defense.trusted_per_class``)."""

    @classmethod
    def validation_fraction(cls, params: DefenseParams) -> float:
        return params.validation


class TrustedSamples:
    """Mixed into a defense whose Params has ``per_class``: that many trusted clean samples of
    each class (``ctx.trusted``: held-out training images, else ground-truth-clean training rows,
    which its result leaves out with ``trusted_excluded``), as IBD-PSC, PSBD, ASSET and CT take
    their clean data."""

    @classmethod
    def trusted_per_class(cls, params: DefenseParams) -> int:
        return params.per_class


class GroundTruthAnalysis:
    """Mixed into a defense's subclass, it makes an analysis plugin (docs/results/analysis/): an
    isolation-only cell that reads the poison mask (``ctx.ground_truth``) for its report; never
    a defense of the tables' rows."""

    is_detector = True

    @classmethod
    def needs_ground_truth(cls, params: DefenseParams) -> bool:
        return True


def own_recipe(cfg: TrainConfig, schedule: str | None = None, weight_decay: float | None = None
               ) -> TrainConfig:
    """``cfg`` with a method's own schedule (fixed: no warm-up) and weight decay where it sets
    them; None keeps the base recipe's. ABL's and PIPD's LGA phases go through here, so equal
    settings give equal configs and one cached LGA model."""
    changes: dict[str, Any] = {}
    if schedule is not None:
        changes.update(schedule=schedule, warmup=0.0)
    if weight_decay is not None:
        changes["weight_decay"] = weight_decay
    return cfg.replace(**changes)


def isolate_lowest_loss(ctx: DefenseContext, model: nn.Module, ratio: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the ``ratio`` lowest-loss training samples, the losses): ABL's isolation and
    PIPD's poisoned seed. Losses in eval mode without augmentation, fp32."""
    losses = ctx.trainer.per_sample_loss(model, ctx.train.images, ctx.train.labels)
    mask = torch.zeros(len(losses), dtype=torch.bool)
    mask[losses.argsort()[:max(1, round(ratio * len(losses)))]] = True
    return mask, losses


def finetune_then_unlearn(ctx: DefenseContext, model: nn.Module, isolated: torch.Tensor,
                          finetune: TrainConfig, unlearn: TrainConfig, seed: int
                          ) -> dict[str, list[dict]]:
    """ABL's second and third phases: train on the samples outside ``isolated``, then gradient
    ascent on the isolated ones. Shared by ABL and PIPD's ``training=unlearning`` (Fig. 5)."""
    from benchmark.losses import ascent_loss

    rest, iso = (~isolated).nonzero().flatten(), isolated.nonzero().flatten()
    curves = {"finetune": [], "unlearning": []}
    if finetune.epochs > 0 and len(rest):
        curves["finetune"] = ctx.trainer.fit(model, ctx.train.images, ctx.train.labels, finetune,
                                             indices=rest, callbacks=[ctx.monitor], seed=seed,
                                             desc="train on the rest",
                                             checkpoint=ctx.checkpoint("finetune"))
    if unlearn.epochs > 0 and len(iso):
        curves["unlearning"] = ctx.trainer.fit(model, ctx.train.images, ctx.train.labels, unlearn,
                                               indices=iso, loss_fn=ascent_loss(),
                                               callbacks=[ctx.monitor], seed=seed + 1, desc="unlearning",
                                               checkpoint=ctx.checkpoint("unlearning"))
    return curves


def backdoored_features(ctx: DefenseContext, layer: str = "penultimate"
                        ) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """The cached backdoored model, the features of every training image under it (eval mode,
    no augmentation, fp32 CPU) and the record's note on where the model came from: what the
    feature-space detectors (Spectral Signatures, AC, SPECTRE, SCAn) inspect. ``layer``:
    ``penultimate`` (the pooled features the head reads) or ``layer3`` (stage 3's last block
    before its ReLU, flattened: ``models.stage_output``)."""
    model, _, reused = ctx.backdoored_model()
    if layer == "layer3":
        feats = ctx.trainer.logits(model, ctx.train.images, head=lambda m, x: stage_output(m, x, 3))
    else:
        feats = ctx.trainer.embeddings(model, ctx.train.images)
    return model, feats, {"inspected_model": "reused from cache" if reused else "trained",
                          "feature_dim": int(feats.shape[1])}


def trusted_excluded(ctx: DefenseContext) -> torch.Tensor | None:
    """The rows a defense's result leaves out of TPR/FPR (``DefenseResult.excluded``): the
    training rows it was given as trusted clean samples, or None (held-out images)."""
    if ctx.trusted_rows is None:
        return None
    mask = torch.zeros(len(ctx.train), dtype=torch.bool)
    mask[ctx.trusted_rows] = True
    return mask


def inspected_rows(ctx: DefenseContext) -> torch.Tensor:
    """The training rows a detector inspects: every row, less those it was given as trusted
    clean samples (``ctx.trusted_rows``). A reference's clean set lies outside the set it
    inspects (test images), so a training row taken as trusted is not also a suspect, nor
    trained on as one."""
    rows = torch.arange(len(ctx.train))
    excluded = trusted_excluded(ctx)
    return rows if excluded is None else rows[~excluded]


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: ``@register_defense class MyDefense(Defense): name = "my_defense"``."""
    DEFENSES.register(cls.name, cls)
    return cls
