"""Defense registry. Every module in this package registers its defense on import."""

from benchmark.registry import import_submodules
from defenses.base import (
    DEFENSES,
    Defense,
    DefenseContext,
    DefenseParams,
    DefenseResult,
    register_defense,
)

import_submodules(__name__)

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseParams", "DefenseResult",
           "register_defense"]
