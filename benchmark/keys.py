"""What each kind of artifact depends on: one declared table, the only place that picks a
cell's fields for a cache key.

An artifact (a poisoned set, a trained model) is computed once and reused by every cell whose
key is equal, so a key that leaves out something the artifact depends on reuses a stale one
without a word, and a key with something it does not depend on recomputes what could be shared.
Each kind below names the fields of the cell's identity (``benchmark.config.identity``: the
resolved config, versions present once past 1) it depends on; ``section-field`` leaves one
field of a section out, and ``precision`` is the training precision where a cell sets one. A
method adds its own settings (a phase name, its recipe) to the key of the kind it builds on.
"""

from __future__ import annotations

from typing import Any

_UPSTREAM = ("dataset", "data", "attack", "attack_params", "attack_version", "model", "model_params",
             "train", "seed", "fast_dev_run")
# re-poisoning changes how training uses the poisoned set, not the set nor the trigger: the
# fixed-set cells' attack artifacts (generator, selection, epoch-1 set) serve it too
_ATTACK = ("dataset", "data", "attack", "attack_params-repoison_every_epoch", "attack_version", "seed",
           "fast_dev_run")
_MODEL = ("model", "model_params", "precision")

ARTIFACTS: dict[str, tuple[str, ...]] = {
    # the poisoned set and what an attack computes without a model (Refool's selection)
    "attack": _ATTACK,
    # ... and with a model it trains (Dynamic's generator, Trojan's trigger, CL's perturbations)
    "attack_model": _ATTACK + _MODEL,
    # the clean reference model CL and Trojan share: nothing of the attack
    "clean_reference": ("dataset", "data", "seed", "fast_dev_run") + _MODEL,
    # a defense's own artifacts (CBD's backdoored model): everything upstream of the defense and
    # its version
    "defense": _UPSTREAM + ("defense_version",),
    # models defenses share (what No Defense trains; the LGA model PIPD and ABL train at equal
    # settings, keyed further by its recipe): not a defense's version
    "shared": _UPSTREAM,
    # what the training images decide alone (DBD's SimCLR backbone): not the training recipe
    "images": tuple(f for f in _UPSTREAM if f != "train"),
}


def _value(ident: dict[str, Any], field: str) -> tuple[bool, Any]:
    """(present, value) of one table entry for a cell's identity."""
    if field == "precision":  # hashed off its default only: absent means "auto"
        precision = ident["train"].get("precision", "auto")
        return precision != "auto", precision
    name, _, left_out = field.partition("-")
    if name not in ident:  # a version while it is 1, a development run's settings
        return False, None
    value = ident[name]
    return True, {k: v for k, v in value.items() if k != left_out} if left_out else value


def artifact_key(ident: dict[str, Any], kind: str) -> dict[str, Any]:
    """The key of the artifacts of ``kind`` (``ARTIFACTS``) of the cell whose identity is
    ``ident`` (``CellSpec.identity``)."""
    out = {}
    for field in ARTIFACTS[kind]:
        present, value = _value(ident, field)
        if present:
            out[field.partition("-")[0]] = value
    return out
