"""Input-aware dynamic attack (Nguyen & Tran, NeurIPS 2020).

A generator G makes a per-image pattern and a mask network M a per-image mask; the poisoned
image is x + m (g - x), with m = threshold(M(x)), the original's soft step that makes masks
near-binary. As in the original (VinAIResearch/input-aware-backdoor-attack-release), M is first
trained alone (diversity loss + a per-pixel hinge on mask values above the density), then G is
trained jointly with a classifier on batches holding backdoor samples (target label), cross
samples (another image's trigger, true label) and clean samples, with G's diversity loss between
the backdoor and cross samples' inputs and patterns. Batches are augmented (crop, flip) *before*
the trigger is generated, as the original's data loader does (its 10-degree rotation is not
reproduced). C, G and M each follow the original's step schedule (gamma 0.1), its epoch
milestones given here as fractions of each phase (C 100-400 and G 200-500 of 600 epochs, M 10
and 20 of 25). The trained G and M are the attack's artifact
(cached, shared by every defense cell); the classifier is discarded. The training set is then
poisoned with them: poisoned samples get their own trigger and the target label, cross samples
(``cross_ratio`` x the poisoned count; the cover samples) another image's trigger and their
true label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import Attack, AttackParams, register_attack
from benchmark import devrun
from benchmark.data import ImageSet
from benchmark.progress import Phase
from benchmark.validate import at_least


@dataclass
class DynamicParams(AttackParams):
    mask_epochs: int = 25
    epochs: int = 100  # joint G + classifier training
    batch_size: int = 128
    lr_c: float = 0.01
    lr_g: float = 0.01
    train_attack_ratio: float = 0.1  # backdoor share of each batch while training G
    train_cross_ratio: float = 0.1  # cross share of each batch while training G
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    mask_density: float = 0.032
    cross_ratio: float = 1.0  # cross samples in the poisoned set, per poisoned sample
    width: int = 32  # channels of the first generator stage
    # down/up stages: the original's CIFAR (and larger) setting; 2 is its MNIST one
    stages: int = field(default=3, metadata=at_least(1))
    # the original's random-crop padding, applied before triggering
    augment_padding: int = field(default=5, metadata=at_least(0))
    # step schedules as fractions of each phase's epochs (the original's, see the docstring)
    milestones_c: list[float] = field(default_factory=lambda: [1 / 6, 2 / 6, 3 / 6, 4 / 6])
    milestones_g: list[float] = field(default_factory=lambda: [2 / 6, 3 / 6, 4 / 6, 5 / 6])
    milestones_m: list[float] = field(default_factory=lambda: [0.4, 0.8])


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """The original's Conv2dBlock: 3x3 conv, BN (momentum 0.05), ReLU (not on the last block)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Generator(nn.Module):
    """The original's encoder-decoder: ``stages`` x (two conv blocks, 2x max-pool) doubling the
    width, a middle block, then ``stages`` x (2x bilinear upsampling, two conv blocks) halving it
    back, the last block without its ReLU (BN kept, as the original); any input size."""

    def __init__(self, channels: int = 3, out_channels: int | None = None, width: int = 32,
                 stages: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, cout = channels, width
        for step in range(stages):
            layers += [conv_block(cin, cout), conv_block(cout, cout), nn.MaxPool2d(2)]
            cin = cout
            cout = cout * 2 if step < stages - 1 else cout
        layers.append(conv_block(cin, cin))
        for step in range(stages):
            last = step == stages - 1
            cout = (out_channels or channels) if last else cin // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       conv_block(cin, cin),
                       conv_block(cin, cout, relu=not last)]
            cin = cout
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.net(x)
        if out.shape[-2:] != (h, w):  # sizes not divisible by 2**stages
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return (torch.tanh(out) + 1) / 2  # in [0, 1]


def step_schedule(optimizer: torch.optim.Optimizer, fractions: list[float], epochs: int
                  ) -> torch.optim.lr_scheduler.MultiStepLR:
    """The original's MultiStepLR (gamma 0.1), milestones as fractions of ``epochs``."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, sorted({max(1, round(f * epochs)) for f in fractions}), gamma=0.1)


def threshold(m: torch.Tensor) -> torch.Tensor:
    """The original's soft step on the mask network's output: near-binary masks (0.5 -> 0.5)."""
    return torch.tanh(20 * m - 10) / 2 + 0.5


def spread(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS distance. The 1e-12 under the root is a departure from the original: the
    root's gradient is infinite at 0, so two identical patterns (a generator saturated to a
    constant) made every weight NaN; it moves a distance by at most 1e-6."""
    return (((a - b) ** 2).flatten(1).mean(1) + 1e-12).sqrt()


def diversity_loss(x1: torch.Tensor, x2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor
                   ) -> torch.Tensor:
    """Different inputs must get different triggers: mean of d(x1, x2) / d(t1, t2)."""
    return (spread(x1, x2) / (spread(t1, t2) + 1e-6)).mean()


class AttackDiverged(RuntimeError):
    """An attack's own training produced non-finite values: its poisoned set would be garbage."""


@register_attack
class Dynamic(Attack):
    name = "dynamic"
    Params = DynamicParams
    supports_all_to_all = False  # its generator trains towards the target
    cover_kind = "cross samples: another image's generated trigger, true labels kept"
    # 2: the original's mask threshold and per-pixel density hinge; 3: the original's CIFAR
    # generator (3 stages, BN on the last block, momentum 0.05), augmentation before
    # triggering, step schedules, diversity on the backdoor/cross samples and the mask phase's
    # image distance on normalised inputs, as the original; 4: a finite diversity gradient on
    # identical patterns, a training that diverges fails, the pattern spread in the curve
    version = 4

    @classmethod
    def uses_model(cls, params: AttackParams) -> bool:
        return True

    # -- artifact: the trained generator and mask network ---------------------------------
    def prepare(self, train: ImageSet) -> None:
        c = train.images.shape[1]
        key = {**self.ctx.cache_key, "phase": "dynamic-generator"}
        art = self.ctx.cache.get_or_create("generators", key, lambda: self.train_generators(train))
        tr = self.ctx.trainer
        p = self.params
        self.gen, self.mask_net = Generator(c, None, p.width, p.stages), Generator(c, 1, p.width, p.stages)
        self.gen.load_state_dict(art["gen"])
        self.mask_net.load_state_dict(art["mask"])
        self.gen, self.mask_net = tr.prepare_model(self.gen).eval(), tr.prepare_model(self.mask_net).eval()
        self.generator_curve = art["curve"]

    def train_generators(self, train: ImageSet) -> dict:
        p, tr = self.params, self.ctx.trainer
        torch.manual_seed(self.ctx.seed)
        c = train.images.shape[1]
        gen = tr.prepare_model(Generator(c, None, p.width, p.stages))
        mask_net = tr.prepare_model(Generator(c, 1, p.width, p.stages))
        x_all, y_all = tr.to_device(train.images), tr.to_device(train.labels)
        g = self.generator(8)
        n, bs = len(train), p.batch_size
        curve: list[dict] = []

        def batches():
            """Two independently shuffled, augmented batches in [0, 1], as the original's two
            loaders: the trigger is generated from the augmented image."""
            perm = torch.randperm(n, generator=g)
            other = torch.randperm(n, generator=g)
            dev = tr.loops.dev
            # a development run: its first batches, each cut to the backdoor and cross rows of a
            # full batch and a few clean ones
            cut = bs if dev is None else min(bs, round(p.train_attack_ratio * bs)
                                             + round(p.train_cross_ratio * bs) + dev.batch_size)
            for b in range(n // bs if dev is None else min(dev.batches, n // bs)):
                s = b * bs
                i, j = tr.to_device(perm[s:s + cut]), tr.to_device(other[s:s + cut])
                x1 = tr.augment(x_all[i], p.augment_padding, g).float() / 255
                x2 = tr.augment(x_all[j], p.augment_padding, g).float() / 255
                yield x1, y_all[i], x2

        # 1. the mask network alone: diverse masks of the given density
        opt_m = torch.optim.Adam(mask_net.parameters(), lr=p.lr_g, betas=(0.5, 0.9))
        sched_m = step_schedule(opt_m, p.milestones_m, p.mask_epochs)
        phase = Phase("Dynamic mask network", p.mask_epochs, n // bs)
        tr.note_work("Dynamic mask network", p.mask_epochs, n // bs * bs, n // bs, bs)
        for epoch in tr.loops.epochs(p.mask_epochs):
            devrun.catch_up(sched_m, epoch)
            mask_net.train()
            for i, (x1, _y, x2) in enumerate(batches(), 1):
                phase.step(epoch + 1, i)
                m1 = threshold(mask_net(tr.normalize(x1 * 255)))
                m2 = threshold(mask_net(tr.normalize(x2 * 255)))
                # per-pixel hinge, as the original: every mask pixel above the density costs;
                # the image distance on normalised inputs and the mask distance in [0, 1], as there
                loss = p.lambda_div * diversity_loss(tr.normalize(x1 * 255), tr.normalize(x2 * 255), m1, m2) \
                    + p.lambda_norm * F.relu(m1 - p.mask_density).mean()
                opt_m.zero_grad()
                loss.backward()
                opt_m.step()
            sched_m.step()
            curve.append({"phase": "mask", "epoch": epoch + 1, "mask_density": float(m1.detach().mean())})
            phase.epoch_done(epoch + 1, {"mask_density": curve[-1]["mask_density"]})
        mask_net.eval()
        for q in mask_net.parameters():
            q.requires_grad_(False)

        # 2. the generator jointly with a classifier
        clf = tr.prepare_model(self.ctx.make_model())
        opt_c = torch.optim.SGD(clf.parameters(), lr=p.lr_c, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(gen.parameters(), lr=p.lr_g, betas=(0.5, 0.9))
        sched_c = step_schedule(opt_c, p.milestones_c, p.epochs)
        sched_g = step_schedule(opt_g, p.milestones_g, p.epochs)
        n_bd, n_cross = round(p.train_attack_ratio * bs), round(p.train_cross_ratio * bs)
        phase = Phase("Dynamic generator + classifier", p.epochs, n // bs)
        tr.note_work("Dynamic generator + classifier", p.epochs, n // bs * bs, n // bs, bs)
        for epoch in tr.loops.epochs(p.epochs):
            devrun.catch_up(sched_c, epoch)
            devrun.catch_up(sched_g, epoch)
            clf.train()
            gen.train()
            correct = bd_hit = seen = 0
            pattern_spread = 0.0
            for i, (x1, y1, x2) in enumerate(batches(), 1):
                phase.step(epoch + 1, i)
                # G and M only on the samples that get a trigger, as the original
                bd_x, cross_x, cross_src = x1[:n_bd], x1[n_bd:n_bd + n_cross], x2[n_bd:n_bd + n_cross]
                g1, g2 = gen(tr.normalize(bd_x * 255)), gen(tr.normalize(cross_src * 255))
                m1 = threshold(mask_net(tr.normalize(bd_x * 255)))
                m2 = threshold(mask_net(tr.normalize(cross_src * 255)))
                bd = bd_x + m1 * (g1 - bd_x)
                cross = cross_x + m2 * (g2 - cross_x)
                inputs = torch.cat([bd, cross, x1[n_bd + n_cross:]])
                targets = torch.cat([torch.full_like(y1[:n_bd], self.params.target), y1[n_bd:]])
                logits = clf(tr.normalize(inputs * 255))
                k = min(len(g1), len(g2))  # diversity: backdoor inputs vs the cross sources
                loss = F.cross_entropy(logits, targets) \
                    + p.lambda_div * diversity_loss(bd_x[:k], cross_src[:k], g1[:k], g2[:k])
                opt_c.zero_grad()
                opt_g.zero_grad()
                loss.backward()
                opt_c.step()
                opt_g.step()
                if not torch.isfinite(loss):
                    raise AttackDiverged(f"dynamic: the generator's joint training diverged at "
                                         f"epoch {epoch + 1}, batch {i} (loss {float(loss.detach())})")
                pred = logits.argmax(1)
                correct += int((pred[n_bd:] == targets[n_bd:]).sum())
                bd_hit += int((pred[:n_bd] == self.params.target).sum())
                seen += len(x1)
                pattern_spread += float(spread(g1[:k], g2[:k]).mean().detach())
            sched_c.step()
            sched_g.step()
            # pattern_spread: the mean RMS distance between two images' patterns; near 0 the
            # generator has collapsed to one trigger for every input
            curve.append({"phase": "joint", "epoch": epoch + 1,
                          "clean_acc": correct / max(1, seen - seen * n_bd // bs),
                          "backdoor_acc": bd_hit / max(1, seen * n_bd // bs),
                          "pattern_spread": pattern_spread / max(1, i)})
            phase.epoch_done(epoch + 1, {k: curve[-1][k] for k in ("clean_acc", "backdoor_acc")})
        return {"gen": {k: v.cpu() for k, v in gen.state_dict().items()},
                "mask": {k: v.cpu() for k, v in mask_net.state_dict().items()}, "curve": curve}

    # -- triggering ----------------------------------------------------------------------
    @torch.no_grad()
    def triggered(self, images: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """x + m(s) (g(s) - x), with s = ``source`` (another image: cross) or x itself."""
        tr = self.ctx.trainer
        x = tr.to_device(images).float() / 255
        s = x if source is None else tr.to_device(source).float() / 255
        sn = tr.normalize(s * 255)
        g, m = self.gen(sn).float(), threshold(self.mask_net(sn).float())
        return ((x + m * (g - x)) * 255).round().clamp(0, 255).to(torch.uint8).cpu()

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.triggered(images)

    def cover_count(self, train: ImageSet) -> int:
        return round(self.params.cross_ratio * self.poison_count(train))

    def select_cover(self, train: ImageSet, poisoned: torch.Tensor) -> torch.Tensor:
        self.train_images = train.images
        return super().select_cover(train, poisoned)

    def cover_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # each cross sample takes the trigger of a random other training image
        donors = torch.randint(0, len(self.train_images), (len(images),),
                               generator=self.draw_generator(9 + int(index[0])))
        return self.triggered(images, self.train_images[donors])

    def describe(self) -> dict:
        return {**super().describe(), "generator_curve": getattr(self, "generator_curve", [])}
