"""Load a user's attack/defense/dataset/model from a Python file outside the repository."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from benchmark.registry import UsageError


def _registries() -> list:
    from attacks import ATTACKS
    from benchmark.data import DATASETS
    from benchmark.models import MODELS
    from defenses import DEFENSES

    return [ATTACKS, DEFENSES, DATASETS, MODELS]


def load_plugin(path: str | Path) -> list[str]:
    """Import ``path`` once per process; return what it registered ("defense:name", ...)."""
    path = Path(path).expanduser().resolve()
    mod_name = "bdbench_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return []
    if not path.is_file():
        raise UsageError(f"plugin {path} does not exist")
    before = {reg.kind: set(reg.names()) for reg in _registries()}
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise UsageError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    added = [f"{reg.kind}:{n}" for reg in _registries() for n in set(reg.names()) - before[reg.kind]]
    if not added:
        del sys.modules[mod_name]
        raise UsageError(f"plugin {path} registered nothing; decorate a class with "
                         "@register_defense / @register_attack (see README: plugins)")
    return added
