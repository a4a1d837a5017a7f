"""What code made a record: a digest of each method's source, stored in the record.

A cell's id holds a method's parameters and its ``version``, not its code, so an edit that keeps
both (a constant doubled inside ``run``) would leave finished cells looking current. Each record
therefore stores ``sources``: for the attack and the defense, a digest of the modules that define
the method's class and the classes it inherits from (up to the suite's ``Attack`` / ``Defense``
base). The dry-run, the grid and the report compare it with the code of today and name the
records made by source that has changed since at the same version: a warning, not a re-run.

The digest is over the syntax tree with docstrings left out, so comments, docstrings and
formatting do not count as a change; shared helpers a method calls (the trainer, feature hooks)
do not count either: a change there that alters results bumps the methods it affects.

An edit that changes a method's code but not what it computes (a check moved before training,
a checkpoint handed to a fit) is entered in ``neutral_edits.json`` beside this module: the
method, the digest before and after, and why its results stand. A record made at the digest
before still counts as current code; chains of such edits are followed. An edit that alters
results bumps the version instead.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KINDS = ("attack", "defense")


def _code_only(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def module_digest(source: str) -> str:
    """Digest of a module's code: comments, docstrings and layout do not change it."""
    return hashlib.sha256(ast.dump(_code_only(ast.parse(source))).encode()).hexdigest()[:12]


@functools.cache
def source_digest(cls: type, base: type) -> str:
    """Digest of the modules defining ``cls`` and its ancestors below ``base``, in MRO order."""
    names = dict.fromkeys(c.__module__ for c in cls.__mro__
                          if issubclass(c, base) and c is not base)
    h = hashlib.sha256()
    for name in names:
        module = sys.modules[name]
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):  # defined without a file (a REPL): nothing to compare
            return ""
        h.update(f"{name}:{module_digest(source)};".encode())
    return h.hexdigest()[:12]


def registered_version(kind: str, name: str) -> int | None:
    """The version of the method registered here as ``name`` (None: not registered, such as a
    plugin not loaded)."""
    from attacks import ATTACKS
    from defenses import DEFENSES

    registry = ATTACKS if kind == "attack" else DEFENSES
    return registry.get(name).version if name in registry else None


def current_sources(config: dict[str, Any]) -> dict[str, str]:
    """{"attack": digest, "defense": digest} of the methods a cell config names, as the code is
    now; a method not registered here (a plugin not loaded) is left out: no code to compare."""
    from attacks import ATTACKS, Attack
    from defenses import DEFENSES, Defense

    out = {}
    for kind, registry, base in (("attack", ATTACKS, Attack), ("defense", DEFENSES, Defense)):
        if config[kind] in registry:
            out[kind] = source_digest(registry.get(config[kind]), base)
    return out


@functools.cache
def neutral_edits() -> dict[tuple[str, str], str]:
    """(method, digest before) -> digest after, over the result-neutral edits declared in
    ``neutral_edits.json`` (method: "defense pipd", "attack badnets")."""
    entries = json.loads(Path(__file__).with_name("neutral_edits.json").read_text())
    return {(e["method"], e["from"]): e["to"] for e in entries}


def same_code(method: str, recorded: str, current: str) -> bool:
    """Whether ``recorded`` is ``current`` or reaches it by result-neutral edits."""
    edits, seen = neutral_edits(), set()
    while recorded != current and recorded not in seen:
        seen.add(recorded)
        recorded = edits.get((method, recorded), recorded)
    return recorded == current


def changed(recorded: dict[str, str] | None, current: dict[str, str],
            names: dict[str, str] | None = None) -> list[str]:
    """The kinds ("attack", "defense") whose recorded digest differs from today's (``names``:
    the methods' names, to follow their result-neutral edits); a record made before digests
    were stored, or a method without code here, is not judged."""
    if not recorded:
        return []
    names = names or {}
    return [k for k in KINDS if recorded.get(k) and current.get(k)
            and not same_code(f"{k} {names.get(k, '')}", recorded[k], current[k])]


def stale(record: dict[str, Any], current: dict[str, str] | None = None
          ) -> list[tuple[str, str, str]]:
    """(cell id, kind, method name) for each method of an ok ``record`` whose source has changed
    since it was made at the method's registered version (``current``: today's digests, computed
    when not given). A method made at another version is not judged: its record is history, and
    the reports already keep it apart as "(vN)"."""
    if record.get("status") != "ok" or not record.get("sources"):
        return []
    config = record["config"]
    now = current_sources(config) if current is None else current
    now = {k: d for k, d in now.items()
           if registered_version(k, config[k]) in (None, config.get(f"{k}_version", 1))}
    return [(record["id"], kind, config[kind])
            for kind in changed(record["sources"], now, {k: config[k] for k in KINDS})]


def changed_note(stale: Iterable[tuple[str, str, str]]) -> str | None:
    """One line over (cell id, kind, method name) triples, or None when there are none."""
    stale = list(stale)
    if not stale:
        return None
    methods = sorted({f"{kind} {name}" for _, kind, name in stale})
    ids = sorted({cid for cid, _, _ in stale})
    shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
    return (f"warning: {len(ids)} record(s) were made by source that has changed since at the same "
            f"version ({'; '.join(methods)}): {shown}. Their results stand; if the change alters "
            f"results, bump the method's `version` so its cells run again.")
