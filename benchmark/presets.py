"""The presets: values only. What each preset is for, and the measurements behind its
values, are in docs/presets.md (its table is generated from this dictionary).

Keys: ``dataset``; ``data``, ``model_params``, ``train``, ``eval`` (sections of the cell);
``attacks`` / ``defenses`` (per-method parameter overrides, by registry name; a variant takes its
base's); ``attack_train`` (training overrides for every cell of one attack); ``grid_attacks`` /
``grid_defenses`` (the grid's default selection); ``caveats`` (defenses whose rows the leaderboard
marks, with the page that says why).

``DATASET_ATTACKS``: per dataset, the attack settings the references change, under every preset
(before the preset's own ``attacks``; ``"*"``: every attack).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "cifar10",
        "data": {"train_size": 1000, "test_size": 500},
        "model_params": {"width": 8},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "onecycle"},
        "eval": {"curve_size": 250},
        "attacks": {"cl": {"ref_epochs": 2, "steps": 5},
                    "trojan": {"ref_epochs": 2, "optimize_steps": 20},
                    "dynamic": {"mask_epochs": 1, "epochs": 2, "width": 8},
                    "refool": {"n_candidates": 100, "n_reflections": 20, "select_rounds": 1,
                               "select_epochs": 1},
                    "narcissus": {"ref_epochs": 2, "warmup_epochs": 1, "rounds": 2}},
        "defenses": {"pipd": {"pre_epochs": 3, "pre_augment": False, "rounds": 2,
                              "selective_epochs": 2, "selective_lr": 0.02},
                     "abl": {"isolation_epochs": 3, "isolation_lr": 0.05, "isolation_schedule": None,
                             "weight_decay": None, "finetune_epochs": 2,
                             "finetune_lr": 0.02, "finetune_schedule": "onecycle",
                             "finetune_milestones": [], "unlearn_epochs": 2},
                     "none": {"retrain_epochs": 1},
                     "dbd": {"simclr_epochs": 1, "simclr_batch": 128, "head_epochs": 1,
                             "semi_epochs": 2, "semi_iterations": 4, "semi_batch": 32},
                     "asd": {"epochs": 4, "iterations": 4, "batch": 32, "grow_every_iterations": 4},
                     "strip": {"n": 8},
                     "cbd": {"bias_epochs": 1, "epochs": 2, "milestones": [1], "disc_step": 1},
                     "dbr": {"sd_epochs": 1, "intra_epochs": 1, "epochs": 2},
                     "ct": {"pretrain_epochs": [1, 1, 1, 1, 1, 1], "iterations": [4, 4, 4, 4, 4, 4]},
                     "vab": {"epochs": 2, "milestones": [1], "semi_start": 1, "alpha_switch": 1,
                             "split_every": 1, "warmup": 2}},
    },
    "demo": {
        "dataset": "cifar10",
        "grid_attacks": ["badnets", "blended"],
        "grid_defenses": ["no_defense", "pipd", "pipd_median"],
        "data": {"train_size": 8000, "test_size": 2000},
        "model_params": {"width": 8},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.1, "schedule": "onecycle",
                  "warmup": 0.2, "augment": False},
        "eval": {"curve_size": 500},
        "defenses": {"pipd": {"pre_epochs": 10, "pre_augment": False, "pre_lr": 0.05,
                              "rounds": 5, "selective_epochs": 6, "selective_lr": 0.05}},
    },
    "quick": {
        "dataset": "cifar10",
        "data": {"train_size": 20000, "test_size": None},
        "model_params": {"width": 16},
        "train": {"epochs": 20, "batch_size": 128, "lr": 0.1, "schedule": "onecycle",
                  "warmup": 0.2},
        "eval": {"curve_size": 1000},
        "attacks": {"cl": {"ref_epochs": 8},
                    "trojan": {"ref_epochs": 8},
                    "dynamic": {"mask_epochs": 5, "epochs": 10, "width": 8,
                                "milestones_c": [], "milestones_g": []},
                    "refool": {"select_rounds": 3, "select_epochs": 4},
                    # the surrogate is CL's and Trojan's reference model; 1,000 rounds are hours on a CPU
                    "narcissus": {"ref_epochs": 8, "rounds": 50}},
        "attack_train": {"adaptive_patch": {"epochs": 40}},
        "defenses": {"pipd": {"pre_epochs": 8, "pre_augment": False, "pre_lr": 0.05,
                              "rounds": 5, "selective_epochs": 12, "selective_lr": 0.05},
                     "abl": {"isolation_epochs": 8, "isolation_lr": 0.05, "isolation_schedule": None,
                             "weight_decay": None, "finetune_epochs": 12,
                             "finetune_lr": 0.05, "finetune_schedule": "onecycle",
                             "finetune_milestones": []},
                     "none": {"retrain_epochs": 10},
                     "dbd": {"simclr_epochs": 8, "simclr_batch": 256, "head_epochs": 5,
                             "semi_epochs": 10, "semi_iterations": 160},
                     "asd": {"epochs": 12, "iterations": 160},
                     "cbd": {"epochs": 20, "milestones": [4, 14], "disc_step": 4},
                     "strip": {"n": 20},
                     # a tenth of the reference's pretraining and iterations (~25 min a cell here)
                     "ct": {"pretrain_epochs": [10, 10, 4, 4, 4, 4],
                            "iterations": [600, 600, 600, 600, 200, 200]},
                     # the preset's 20 epochs for the reference's 200: its schedule scaled by 1/10
                     "vab": {"epochs": 20, "milestones": [5, 10, 15], "semi_start": 10,
                             "alpha_switch": 15, "split_every": 1}},
        "caveats": {"dbd": "docs/findings/dbd-and-asd-at-quick.md",
                    "asd": "docs/findings/dbd-and-asd-at-quick.md"},
    },
    "full": {
        "dataset": "cifar10",
        "data": {},
        "model_params": {"width": 64},
        "train": {"epochs": 200, "batch_size": 128, "lr": 0.1, "schedule": "cosine"},
        "eval": {"curve_size": 2000},
        "defenses": {},
    },
}


DATASET_ATTACKS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar100": {"sig": {"rate": 0.005}, "cl": {"rate": 0.005}},
    "gtsrb": {"*": {"target": 2}, "sig": {"rate": 0.0287}, "cl": {"rate": 0.0287}},
    "tiny_imagenet": {"sig": {"rate": 0.0025}, "cl": {"rate": 0.0025}},
}
