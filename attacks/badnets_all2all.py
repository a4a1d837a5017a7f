"""BadNets all-to-all (BackdoorBench's ``badnet`` with ``attack_label_trans: all2all``): the
suite's BadNets patch (ABL's 3x3 grid, where BackdoorBench's default image is a white 3x3
square: ``--set badnets_all2all.pattern=white``), a poisoned image of class y labelled
(y + 1) mod C, drawn from every class; the ASR counts a triggered test image of class y
classified as (y + 1) mod C, over the whole test set. Every dirty-label attack takes the same
option (``--set <attack>.all_to_all=true``); this name makes it a grid row of its own."""

from __future__ import annotations

from dataclasses import dataclass

from attacks.badnets import BadNets, BadNetsParams
from attacks.base import register_attack


@dataclass
class BadNetsAllToAllParams(BadNetsParams):
    all_to_all: bool = True


@register_attack
class BadNetsAllToAll(BadNets):
    name = "badnets_all2all"
    Params = BadNetsAllToAllParams
