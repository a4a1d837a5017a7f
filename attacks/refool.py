"""Refool (Liu et al. ECCV 2020): reflections of natural images blended into the poisoned images.

The composition follows the original's ``blend_images`` in linear light (gamma ``gamma``, 2.2),
run on the images at their own size as backdoor-toolbox runs it on CIFAR (``max_image_size`` 32):
its numbers are pixels of the image (the DreamtaleCore original first resizes to a 560-px
canvas, where the same 3-8 px ghost offsets are about 0.2-0.5 px of a 32-px image):

- transmission weight ``alpha_t`` ~ U(0.55, 0.95) per image (the original's 1 - U(0.05, 0.45));
- with probability ``ghost_rate`` (0.49) a *ghost* reflection: the reflection plus a copy shifted
  by an offset drawn in [3, 8] px per axis, weighted ``ghost_alpha`` (|s - U(0.15, 0.5)|, s a
  coin), cropped to the overlap and resized back; result ``(1 - alpha_t) r_ghost + alpha_t t``;
- otherwise an *out-of-focus* reflection: Gaussian blur with sigma ~ U(1, 5), the original's
  exposure correction (subtract the mean overshoot above 1 per channel, times 1.08-1.18), and its
  vignette (its separable Gaussian kernel over the whole image, times ``1 - alpha_t / 2``);
  result ``r_vignetted + alpha_t t``;
- back to sRGB, clipped.

Reflections come from images outside the training set the defender receives: the training images
left out of the cell's subset (non-target classes), or ``reflection_root`` (any image folder; the
original uses PASCAL VOC). Without either (a preset that uses every training image), non-target
training images are the pool and are never poisoned; the record says which.

Adversarial selection (the original's Algorithm 1), a cached attack-side step: from
``n_candidates`` candidates keep ``n_reflections``. Each of ``select_rounds`` rounds poisons the
training set with the current top ``n_reflections`` by weight, trains a model on it
(``select_epochs``), and scores each of those reflections by the share of ``select_probes``
held-out non-target images (disjoint from the candidates) it sends to the target class; the
untried candidates get the round's median score (the original gives it to every unselected one
and draws each round's reflections at random by weight; here a tried candidate keeps its
measured score and a round takes the top weights, untried ones first among equals, which makes
the selection deterministic). The original runs 16 rounds (the default; ``quick`` runs 3). The final
pool is the top ``n_reflections``. ``select_rounds=0`` draws the pool at random.

Dirty label by default (BackdoorBox's poison-label Refool, the setting of the benchmarks PIPD
compares with); the original paper's attack is clean-label: ``clean_label: true`` poisons
target-class images only and keeps their labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attacks.base import Attack, AttackParams, register_attack
from attacks.triggers import load_image, to_float, to_uint8
from benchmark.data import IMAGE_SUFFIXES, ImageSet
from benchmark.registry import UsageError
from benchmark.validate import at_least, within

MODES = ("ghost", "blur", "mixed")


@dataclass
class RefoolParams(AttackParams):
    mode: str = "mixed"  # mixed: ghost with probability ghost_rate, else blur
    ghost_rate: float = field(default=0.49, metadata=within(0, 1))
    gamma: float = field(default=2.2, metadata=at_least(0.1))
    alpha_t: list[float] = field(default_factory=lambda: [0.55, 0.95])  # transmission weight range
    ghost_offset: list[int] = field(default_factory=lambda: [3, 8])  # px per axis, [lo, hi]
    ghost_alpha: list[float] = field(default_factory=lambda: [0.15, 0.5])
    blur_sigma: list[float] = field(default_factory=lambda: [1.0, 5.0])  # px
    n_reflections: int = field(default=200, metadata=at_least(1))  # the pool the poisoned images draw from
    n_candidates: int = field(default=1000, metadata=at_least(1))  # candidates for the adversarial selection
    select_rounds: int = field(default=16, metadata=at_least(0))  # 0: a random pool
    # training epochs of each selection round's model
    select_epochs: int = field(default=5, metadata=at_least(1))
    # held-out images each reflection is scored on
    select_probes: int = field(default=100, metadata=at_least(1))
    reflection_root: str | None = None  # an ImageFolder (or flat folder) of natural images
    clean_label: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise UsageError(f"unknown Refool mode {self.mode!r}; valid: {', '.join(MODES)}")
        for name, lo_min, hi_max in (("alpha_t", 0, 1), ("ghost_alpha", 0, 1), ("blur_sigma", 0, 100),
                                     ("ghost_offset", 1, 1000)):
            value = getattr(self, name)
            if len(value) != 2 or not lo_min <= value[0] <= value[1] <= hi_max:
                raise UsageError(f"refool {name} must be a range [lo, hi] within "
                                 f"[{lo_min}, {hi_max}], got {value}")
        if self.n_candidates < self.n_reflections:
            raise UsageError(f"refool n_candidates ({self.n_candidates}) must be at least "
                             f"n_reflections ({self.n_reflections})")


def uniform(n: int, bounds: list[float], g: torch.Generator) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=g)


def gaussian_taps(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image 1-D Gaussian kernels (n, size), each cut to the original's 2 ceil(2 sigma) + 1
    taps (zeros beyond) and normalised."""
    half = size // 2
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    reach = torch.ceil(2 * sigma)[:, None]
    taps = torch.exp(-x[None] ** 2 / (2 * sigma[:, None] ** 2)) * (x[None].abs() <= reach)
    return taps / taps.sum(1, keepdim=True)


def blur(r: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur with reflect padding (cv2's default border)."""
    n, c, h, w = r.shape
    size = 2 * int(math.ceil(2 * float(sigma.max()))) + 1
    size = min(size, 2 * (min(h, w) - 1) - 1) | 1  # reflect padding needs pad < side
    taps = gaussian_taps(sigma, size).to(r.device)
    k = taps.repeat_interleave(c, 0)  # (n * c, size)
    x = r.reshape(1, n * c, h, w)
    pad = size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def vignette_factor(length: int, nsig: float = 3.0) -> torch.Tensor:
    """The 1-D factor of the original's ``gen_kernel(length, nsig)`` (a separable kernel of
    sqrt(Gaussian cell masses) scaled to max 1): kernel[i, j] = f[i] * f[j]."""
    interval = (2 * nsig + 1.0) / length
    x = torch.linspace(-nsig - interval / 2, nsig + interval / 2, length + 1, dtype=torch.float64)
    mass = torch.special.ndtr(x).diff()
    f = mass.sqrt()
    return (f / f.max()).float()


def ghost(r: torch.Tensor, dy: int, dx: int, weight: torch.Tensor) -> torch.Tensor:
    """The original's ghost: w * r(y, x) + (1 - w) * r(y - dy, x - dx) over the overlap, resized
    back to the image size."""
    h, w = r.shape[-2:]
    wt = weight.view(-1, 1, 1, 1)
    g = wt * r[:, :, dy:, dx:] + (1 - wt) * r[:, :, :h - dy, :w - dx]
    return F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)


@register_attack
class Refool(Attack):
    name = "refool"
    Params = RefoolParams
    supports_all_to_all = False  # its selection scores reflections towards the target
    # 2: the original's linear-light composition, random ghost offsets / blur / exposure /
    # vignette, reflections from outside the training set, adversarial selection
    version = 2

    @classmethod
    def uses_model(cls, params: AttackParams) -> bool:
        return params.select_rounds > 0

    @property
    def rate_of(self) -> str:  # type: ignore[override]
        return ("training set (all poisoned samples drawn from the target class)"
                if self.is_clean_label else "training set")

    # -- the reflection pool ---------------------------------------------------------------
    def candidates(self, train: ImageSet) -> tuple[torch.Tensor, str]:
        """Candidate reflections (uint8, at the image size) and where they come from."""
        p = self.params
        c, h, w = train.images.shape[1:]
        g = self.generator(5)
        if p.reflection_root:
            files = sorted(f for f in Path(p.reflection_root).expanduser().rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UsageError(f"no images under reflection_root {p.reflection_root}")
            pick = torch.randperm(len(files), generator=g)[:p.n_candidates]
            return (torch.stack([load_image(str(files[i]), c, h, w) for i in pick]),
                    f"{p.reflection_root} ({len(files)} images)")
        held = self.ctx.held_out
        if held is not None and int((held.labels != p.target).sum()) >= p.n_candidates:
            rows = (held.labels != p.target).nonzero().flatten()
            perm = rows[torch.randperm(len(rows), generator=g)]
            pick = perm[:p.n_candidates]
            # probes: the other held-out images (read only when indexed)
            self.probe_source = (held, perm[p.n_candidates:] if len(perm) > p.n_candidates else perm)
            return held.subset(pick).images, "training images outside the cell's subset (non-target classes)"
        # from non-target classes, so a reflection never carries the target's own features; the
        # rows in use as reflections (pool_rows) are kept out of poisoning
        rows = (train.labels != p.target).nonzero().flatten()
        self.candidate_rows = rows[torch.randperm(len(rows), generator=g)[:p.n_candidates]]
        self.pool_rows = self.candidate_rows[:p.n_reflections]
        return (train.images[self.candidate_rows], "non-target training images (the reflections "
                "are kept clean, never poisoned: no images outside the training set were available)")

    def prepare(self, train: ImageSet) -> None:
        p = self.params
        self.pool_rows = torch.zeros(0, dtype=torch.long)
        cands, self.reflection_source = self.candidates(train)
        self.selection: dict = {}
        if p.select_rounds > 0 and len(cands) > p.n_reflections:
            key = {**self.ctx.cache_key, "phase": "refool-selection"}
            self.selection = self.ctx.cache.get_or_create(
                "refool", key, lambda: self.select(train, cands))
            chosen = self.selection["chosen"]
        else:
            chosen = torch.arange(min(p.n_reflections, len(cands)))
        self.use_pool(cands, chosen)

    def use_pool(self, cands: torch.Tensor, chosen: torch.Tensor) -> None:
        self.pool = cands[chosen]
        if hasattr(self, "candidate_rows"):  # training images: those in use stay unpoisoned
            self.pool_rows = self.candidate_rows[chosen].sort().values

    def select(self, train: ImageSet, cands: torch.Tensor) -> dict:
        """The original's adversarial selection: train on poisoned data, score each selected
        reflection by its success on held-out images, keep the most effective."""
        from benchmark.train import TrainConfig

        p, tr = self.params, self.ctx.trainer
        if tr is None or self.ctx.make_model is None:
            raise RuntimeError("refool's selection needs a trainer and a model factory")
        g = self.generator(11)
        weights = torch.ones(len(cands))
        tried = torch.zeros(len(cands), dtype=torch.bool)
        order = torch.randperm(len(cands), generator=g)

        def top_m() -> torch.Tensor:
            """The n_reflections best by weight; among equal weights untried candidates first
            (so a round explores instead of re-testing failures), then a seeded random order."""
            idx = order[tried[order].float().argsort(stable=True)]
            return idx[weights[idx].argsort(descending=True, stable=True)][:p.n_reflections]

        probes = self.probe_images(train, g)
        cfg = TrainConfig(epochs=p.select_epochs, lr=0.1, schedule="onecycle", warmup=0.2,
                          precision=self.ctx.precision)
        curve = []
        for rnd in tr.loops.indices(p.select_rounds):
            top = top_m()
            self.use_pool(cands, top)
            poisoned = self.poison_train(train)
            model = tr.prepare_model(self.ctx.make_model())
            tr.fit(model, poisoned.images, poisoned.labels, cfg, seed=self.ctx.seed + rnd,
                   desc=f"refool selection {rnd + 1}/{p.select_rounds}")
            model.eval()
            scores = torch.zeros(len(top))  # a development run scores a few (the rest: 0)
            for j in tr.loops.indices(len(top)):  # one batch per reflection: probes x that reflection
                which = torch.full((len(probes),), j, dtype=torch.long)
                hit = tr.predict(model, self.reflect(probes, which, g)) == p.target
                scores[j] = hit.float().mean()
            weights[top] = scores
            tried[top] = True
            # the original gives the unselected the median weight; here only the untried ones
            # (a tried candidate keeps its measured score, so a failure is not forgotten)
            weights[~tried] = scores.median()  # this round's median, as the original
            curve.append({"round": rnd + 1, "mean_success": float(scores.mean()),
                          "best_success": float(scores.max())})
        tried[:] = True  # the final pick trusts measured weights over untried ones
        chosen = top_m()
        return {"chosen": chosen, "weights": weights, "curve": curve}

    def probe_images(self, train: ImageSet, g: torch.Generator) -> torch.Tensor:
        """Non-target images to score reflections on: held out when there are any."""
        source, rows = getattr(self, "probe_source", None) or (
            train, (train.labels != self.params.target).nonzero().flatten())
        return source.subset(rows[torch.randperm(len(rows), generator=g)[:self.params.select_probes]]).images

    def eligible(self, train: ImageSet) -> torch.Tensor:
        mask = super().eligible(train)
        if hasattr(self, "pool_rows"):
            mask[self.pool_rows] = False
        elif not self.params.reflection_root and self.ctx.held_out is None:
            # before prepare() (the pre-run check): n_reflections training images will be kept out
            mask[mask.nonzero().flatten()[:self.params.n_reflections]] = False
        return mask

    # -- composition -----------------------------------------------------------------------
    def reflect(self, images: torch.Tensor, which: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Blend reflection ``pool[which[i]]`` into image i, every random draw from ``g``."""
        p = self.params
        n, _, h, w = images.shape
        dev = images.device
        gamma = p.gamma
        t = to_float(images) ** gamma
        r = to_float(self.pool[which].to(dev))
        if r.shape[-2:] != (h, w):  # a pool of another size (e.g. a folder of photos)
            r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False)
        r = r ** gamma
        alpha_t = uniform(n, p.alpha_t, g).to(dev).view(-1, 1, 1, 1)
        rate = {"ghost": 1.0, "blur": 0.0, "mixed": p.ghost_rate}[p.mode]
        is_ghost = torch.rand(n, generator=g) < rate
        out = torch.empty_like(t)

        # ghost reflections, grouped by offset (a handful of groups, no per-image loop)
        gi = is_ghost.nonzero().flatten()
        if len(gi):
            lo, hi = p.ghost_offset
            hi = max(lo, min(hi, h - 1, w - 1))
            off = torch.randint(lo, hi + 1, (len(gi), 2), generator=g)
            coin = (torch.rand(len(gi), generator=g) > 0.5).float()
            weight = (coin - uniform(len(gi), p.ghost_alpha, g)).abs()
            for dy, dx in off.unique(dim=0).tolist():
                sel = ((off[:, 0] == dy) & (off[:, 1] == dx)).nonzero().flatten()
                rows = gi[sel].to(dev)
                layer = ghost(r[rows], dy, dx, weight[sel].to(dev)) * (1 - alpha_t[rows])
                out[rows] = layer + alpha_t[rows] * t[rows]

        # out-of-focus reflections: blur, exposure correction, vignette
        bi = (~is_ghost).nonzero().flatten()
        if len(bi):
            rows = bi.to(dev)
            sigma = uniform(len(bi), p.blur_sigma, g)
            rb = blur(r[rows], sigma)
            tb = t[rows]
            att = (1.08 + torch.rand(len(bi), generator=g) / 10).to(dev).view(-1, 1)
            mix = (rb + tb).flatten(2)
            over = mix > 1
            mean = ((mix * over).sum(2) / (over.sum(2) + 1e-6)).clamp(min=1.0)  # (n, c)
            rb = (rb - ((mean - 1) * att)[:, :, None, None]).clamp(0, 1)
            side = max(h, w)  # the original's canvas: max_image_size, here the image itself
            f = vignette_factor(side).to(dev)
            span_h, span_w = side - h - 10, side - w - 10
            top = torch.randint(0, max(1, span_h), (len(bi),), generator=g)
            left = torch.randint(0, max(1, span_w), (len(bi),), generator=g)
            ys = (top[:, None] + torch.arange(h)[None]).clamp(max=side - 1).to(dev)
            xs = (left[:, None] + torch.arange(w)[None]).clamp(max=side - 1).to(dev)
            mask = f[ys][:, None, :, None] * f[xs][:, None, None, :]  # (n, 1, h, w)
            a = alpha_t[rows]
            out[rows] = rb * mask * (1 - a / 2) + a * tb
        return to_uint8(out.clamp(0, 1) ** (1 / gamma))

    def reflect_any(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Each image with a reflection drawn from the whole pool."""
        return self.reflect(images, torch.randint(0, len(self.pool), (len(images),), generator=g), g)

    def poison_images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # seeded by the chunk's first row
        return self.reflect_any(images, self.draw_generator(6 + int(index[0])))

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        # seeded by the batch's content: each chunk of the test set gets its own draws
        seed = self.ctx.seed * 1000 + 7 + int(images[:, 0, 0, :8].sum())
        return self.reflect_any(images, torch.Generator().manual_seed(seed))

    def describe(self) -> dict:
        info = {**super().describe(), "reflection_source": self.reflection_source,
                "reflections": len(self.pool)}
        if self.selection:
            info["selection"] = self.selection["curve"]
        return info
