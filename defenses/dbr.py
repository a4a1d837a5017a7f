"""D-BR (Chen et al., NeurIPS 2022, "Effective Backdoor Defense by Exploiting Sensitivity of
Poisoned Samples"): distinguish, then remove the backdoor; no clean data.

Sample distinguishment (SD):
1. a model trains ``sd_epochs`` (2) epochs on the poisoned set with cross entropy and no
   augmentation (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128), then ``intra_epochs``
   (10) more on L_intra alone: per batch, the L2-normalised feature means of the classes present,
   and the mean of their cosine-similarity matrix with a zeroed diagonal (pushing classes apart);
2. FCT, the feature consistency towards transformations, of every training sample under it:
   mean over the penultimate features of (f(x) - f(t(x)))^2, t a random rotation of up to 180
   degrees then a random shift of up to 20% per axis (torchvision's RandomRotation and
   RandomAffine, nearest, zero fill); poisoned samples are the sensitive ones (high FCT);
3. sorted ascending: FCT <= the value at rank ``clean_ratio`` x N (0.20) is clean (D_c); of the
   rest, FCT >= the value at rank N - ``poison_ratio`` x N (0.05) is poisoned (D_p); the rest is
   uncertain. A sample is in one set at most: the reference assigns with if/elif, clean first.
Backdoor removal (BR): from the backdoored model, ``epochs`` (20) epochs of one gradient-ascent
pass over D_p then one cross-entropy pass over D_c, crop and flip, SGD at a constant lr 1e-4
(momentum 0.9, weight decay 5e-4), one optimiser throughout.

Reference: SCLBD/Effective_backdoor_defense (63fda0e): ``train_attack_noTrans.py``,
``finetune_attack_noTrans.py``, ``calculate_consistency.py``, ``calculate_gamma.py``,
``unlearn_relearn.py``, ``utils/args.py``, ``utils/dataloader_bd.py``. Departures:
- the backdoored model is the cell's cached No Defense model (the suite's standard training,
  shared with NONE and the detectors); the reference trains its own (200 epochs, lr 0.01, x0.1
  at 100 and 150);
- the SD phases run at a constant lr 0.01, the second with a fresh optimiser; the reference's
  cosine over 100 epochs moves the lr by under 4% in these 12 epochs and its second phase
  restores the first's momentum;
- the last epoch's model is kept; the reference picks the epoch of the best test accuracy minus
  ASR, which uses the test labels and the attack.
Each removal epoch records the train-mode ascent loss on D_p (what the optimiser saw) and, after
the epoch, the eval-mode cross entropy on D_p (``d_p_eval_loss``: whether the ascent has raised the loss
of the isolated samples, which the train-mode loss, under crop, flip and batch statistics of D_p
alone, does not show).
The record's isolation is D_p, its scores the FCT (the uncertain and D_c rows count as not
flagged); D_c is the named mask ``d_c`` (its TPR: the share of the poisoned samples that D_c
relearns on).

D_c is larger than ``clean_ratio`` where FCT ties at the quantile: every sample at or below it
is clean, as in the reference (``separate_samples.py``: ``<= gamma_low``, then ``elif >=
gamma_high``). Where the ties reach past rank N - ``poison_ratio`` x N both thresholds are the
tied value, and D_p is only what lies above it (version 1 also put the tied samples in D_p, so
that its ascent ran on most of the set). At quick D_c held
14,289 (BadNets) and 18,832 (Trojan) of 20,000 samples (``info.n_clean``): a tie of thousands
of floats, so FCT exactly 0, the L_intra model's features unchanged by the transformation (not
inspected further; all-zero features after the last ReLU would do it). The reference's README
runs with ``--gamma_low 0.0``, the same tie. Relearning then runs on most of the set, not a
fifth.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import devrun
from benchmark.augment import rotate_translate
from benchmark.models import classifier_head, embed
from benchmark.progress import Phase
from benchmark.train import LoopCheckpoint, Trainer
from benchmark.validate import at_least, within
from defenses.base import Defense, DefenseContext, DefenseParams, DefenseResult, register_defense


@dataclass
class DBRParams(DefenseParams):
    sd_epochs: int = field(default=2, metadata=at_least(1))
    intra_epochs: int = field(default=10, metadata=at_least(0))
    sd_lr: float = 0.01
    clean_ratio: float = field(default=0.20, metadata=within(0, 1))
    poison_ratio: float = field(default=0.05, metadata=within(0, 1))
    degrees: float = 180.0
    translate: float = 0.2
    epochs: int = field(default=20, metadata=at_least(1))
    lr: float = 1e-4
    batch_size: int = 128


def intra_class_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the cosine-similarity matrix (diagonal zeroed) of the batch's class means."""
    centres = torch.stack([features[labels == c].mean(0) for c in labels.unique()])
    centres = F.normalize(centres, dim=1)
    sim = centres @ centres.T
    return (sim * (1 - torch.eye(len(sim), device=sim.device))).mean()


@torch.no_grad()
def consistency(model: nn.Module, trainer: Trainer, images: torch.Tensor, degrees: float,
                translate: float, generator: torch.Generator) -> torch.Tensor:
    """FCT of every uint8 image: mean over features of (f(x) - f(t(x)))^2, one draw of t each."""
    model = trainer.prepare_model(model).eval()
    out = []
    for s in range(0, trainer.loops.rows(len(images)), trainer.eval_batch_size):
        x = trainer.to_device(images[s:s + trainer.eval_batch_size]).float()
        moved = rotate_translate(x / 255, degrees, translate, generator) * 255
        a, b = embed(model, trainer.normalize(x)), embed(model, trainer.normalize(moved))
        out.append(((a.float() - b.float()) ** 2).mean(1).cpu())
    return devrun.fill(torch.cat(out), len(images)) if out else torch.empty(0)


def split_by_quantiles(fct: torch.Tensor, clean_ratio: float, poison_ratio: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_c mask, D_p mask), disjoint: D_c is FCT <= sorted[int(clean_ratio N)], D_p the rest
    with FCT >= sorted[N - int(poison_ratio N)] (the reference's if/elif: a tie is clean)."""
    ordered, n = fct.sort().values, len(fct)
    low = ordered[min(int(n * clean_ratio), n - 1)]
    high = ordered[min(n - int(n * poison_ratio), n - 1)]
    clean = fct <= low
    return clean, (fct >= high) & ~clean


def eval_loss(trainer: Trainer, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              mask: torch.Tensor) -> float | None:
    """Mean eval-mode cross entropy over the masked samples (None for an empty mask)."""
    if not bool(mask.any()):
        return None
    return float(trainer.per_sample_loss(model, images[mask], labels[mask]).mean())


@register_defense
class DBR(Defense):
    name = "dbr"
    title = "D-BR (transformation-sensitivity split, unlearn and relearn; NeurIPS 2022)"
    Params = DBRParams
    version = 2  # 2: D_p excludes D_c (the reference's if/elif); was: both masks took FCT ties

    def sd_model(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, list[dict]]]:
        """The sample-distinguishment model: cross entropy, then L_intra."""
        p: DBRParams = self.params
        cfg = ctx.train_cfg.replace(epochs=p.sd_epochs, lr=p.sd_lr, batch_size=p.batch_size,
                                    schedule="constant", warmup=0.0, augment=False, momentum=0.9,
                                    nesterov=False, weight_decay=5e-4, optimizer="sgd",
                                    label_smoothing=0.0)
        model = ctx.make_model()
        curves = {"sd": ctx.trainer.fit(model, ctx.train.images, ctx.train.labels, cfg,
                                        seed=ctx.seed + 3, desc="D-BR distinguishment",
                                        checkpoint=ctx.checkpoint("sd"))}
        if p.intra_epochs:
            head = classifier_head(model)

            def intra(_forward, x, y, _idx, _g):  # noqa: ANN001, ANN202 - a StepFn
                feats = embed(model, ctx.trainer.normalize(x))
                return intra_class_loss(feats.float(), y), head(feats)

            curves["intra"] = ctx.trainer.fit(model, ctx.train.images, ctx.train.labels,
                                              cfg.replace(epochs=p.intra_epochs), step=intra,
                                              seed=ctx.seed + 4, desc="D-BR L_intra",
                                              checkpoint=ctx.checkpoint("intra"))
        return model, curves

    def distinguish(self, ctx: DefenseContext
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, list[dict]]]:
        """Sample distinguishment: (FCT, D_c mask, D_p mask, the SD model's curves)."""
        p: DBRParams = self.params
        sd, curves = self.sd_model(ctx)
        fct = consistency(sd, ctx.trainer, ctx.train.images, p.degrees, p.translate,
                          torch.Generator().manual_seed(ctx.seed + 5))
        clean, poisoned = split_by_quantiles(fct, p.clean_ratio, p.poison_ratio)
        return fct, clean, poisoned, curves

    def run(self, ctx: DefenseContext) -> DefenseResult:
        fct, clean, poisoned, curves = self.distinguish(ctx)
        backdoored, _, reused = ctx.backdoored_model()
        model = ctx.trainer.prepare_model(copy.deepcopy(backdoored))
        curves["removal"] = self.remove(ctx, model, clean, poisoned)
        info = {"backdoored_model": "reused from cache" if reused else "trained",
                "n_clean": int(clean.sum()), "n_poisoned": int(poisoned.sum())}
        return DefenseResult(model=model, isolated=poisoned, scores=fct, curves=curves, info=info,
                             masks={"d_c": clean})

    def remove(self, ctx: DefenseContext, model: nn.Module, clean: torch.Tensor,
               poisoned: torch.Tensor) -> list[dict]:
        """Per epoch, gradient ascent over D_p then descent over D_c, one SGD optimiser."""
        p: DBRParams = self.params
        tr = ctx.trainer
        cfg = ctx.train_cfg.replace(epochs=p.epochs, batch_size=p.batch_size, augment=True)
        opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, weight_decay=5e-4)
        x_all, y_all = tr.to_device(ctx.train.images), tr.to_device(ctx.train.labels)
        parts = [(-1.0, poisoned.nonzero().flatten()), (1.0, clean.nonzero().flatten())]
        steps = sum(len(list(tr.batches(len(r), p.batch_size))) for _, r in parts)
        tr.note_work("D-BR unlearn and relearn", p.epochs, int(clean.sum() + poisoned.sum()), steps,
                     p.batch_size)
        phase = Phase("D-BR unlearn and relearn", p.epochs, steps)
        gen = torch.Generator().manual_seed(ctx.seed + 6)
        precision = tr.training_precision(cfg)
        loop = LoopCheckpoint(ctx.checkpoint("unlearn and relearn"), tr, phase, gen,
                              {"cfg": cfg.key(), "precision": precision, "rows": [len(r) for _, r in parts]},
                              model=model, optimizer=opt)
        saved = loop.resume()  # an interrupted run's epochs
        curve, start = (saved["curve"], saved["epochs_done"]) if saved is not None else ([], 0)
        for epoch in tr.loops.epochs(p.epochs):
            if epoch < start:
                continue
            t0 = time.perf_counter()
            model.train()
            done, sums = 0, {-1.0: 0.0, 1.0: 0.0}
            for sign, rows in parts:
                for _, idx in tr.numbered_batches(rows, cfg, gen, epoch):
                    done += 1
                    phase.step(epoch + 1, done)
                    i = tr.to_device(idx)
                    x = tr.augment(x_all[i], cfg.crop_padding, gen, cfg.crop_mode)
                    with tr.autocast(precision):
                        loss = sign * F.cross_entropy(model(tr.normalize(x)).float(), y_all[i])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sums[sign] += float(loss.detach()) * len(idx)
            stats = {"epoch": epoch + 1, "lr": p.lr, "seconds": time.perf_counter() - t0,
                     "ascent_loss": -sums[-1.0] / max(1, len(parts[0][1])),
                     "relearn_loss": sums[1.0] / max(1, len(parts[1][1])),
                     "d_p_eval_loss": eval_loss(tr, model, ctx.train.images, ctx.train.labels,
                                                poisoned)}
            if ctx.monitor is not None:
                stats.update(ctx.monitor.on_epoch_end(epoch + 1, model) or {})
            curve.append(stats)
            phase.epoch_done(epoch + 1, stats)
            loop.epoch_done(epoch + 1, epoch + 1 == p.epochs, curve)
        return curve
