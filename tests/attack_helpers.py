"""Small builders shared by the attack tests."""

from __future__ import annotations

import torch

from attacks import ATTACKS, AttackContext
from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.models import build_model
from benchmark.train import Trainer

# settings that keep the model-based attacks to a second or two on a CPU
TINY = {
    "cl": {"ref_epochs": 1, "steps": 3},
    "dynamic": {"mask_epochs": 1, "epochs": 1, "width": 4, "batch_size": 50},
    "trojan": {"optimize_steps": 3, "ref_epochs": 1},
    "refool": {"n_reflections": 10, "n_candidates": 20, "select_rounds": 1, "select_epochs": 1},
    # a step size that moves the trigger visibly in three rounds (RAdam starts slowly)
    "narcissus": {"ref_epochs": 1, "warmup_epochs": 1, "rounds": 3, "batch_size": 50, "generation_lr": 5.0},
}


def make_set(n: int = 200, size: int = 32, seed: int = 0, low: int = 0, high: int = 200) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(low, high, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % 10, [str(i) for i in range(10)])


def make_attack(name: str, seed: int = 0, cache_root=None, **params):
    cls = ATTACKS.get(name)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", threads=1)
    ctx = AttackContext(cache=ArtifactCache(cache_root), cache_key={"test": name}, seed=seed,
                        num_classes=10, trainer=trainer,
                        make_model=lambda: build_model("resnet18", 10, width=4))
    return cls(cls.Params(**{**TINY.get(name, {}), **params}), ctx)


def poisoned(name: str, train: ImageSet, seed: int = 0, **params):
    atk = make_attack(name, seed, **params)
    atk.prepare(train)
    return atk, atk.poison_train(train)
