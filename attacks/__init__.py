"""Attack registry. Every module in this package registers its attack on import."""

from attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    AttackParams,
    PoisonedTrainSet,
    register_attack,
)
from benchmark.registry import import_submodules

import_submodules(__name__)

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackParams", "PoisonedTrainSet",
           "register_attack"]
