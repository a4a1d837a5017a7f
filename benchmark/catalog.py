"""What ``--list`` prints, read from the source files instead of importing them.

Importing the method modules means importing torch, ~3 s on the 2-core machines this suite is
calibrated on, for a listing. The registries are filled by decorators in one file per method
(``@register_attack``/``@register_defense`` on a class with ``name``/``title``/``is_detector``
class attributes, ``@MODELS.register("...")``, ``DATASET_SPECS``), so ``ast`` reads the same
facts in milliseconds. A test keeps this catalog equal to the live registries; ``--plugin``
(code only an import can read) takes the importing path.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _constant(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _decorator_name(node: ast.AST) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(target)


def _classes(folder: Path) -> dict[str, dict[str, Any]]:
    """Every class in the package's modules: its bases, class-level constants, decorators."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            attrs = {}
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                        and isinstance(stmt.targets[0], ast.Name):
                    attrs[stmt.targets[0].id] = _constant(stmt.value)
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                        and stmt.value is not None:
                    attrs[stmt.target.id] = _constant(stmt.value)
            out[node.name] = {"bases": [ast.unparse(b) for b in node.bases], "attrs": attrs,
                              "decorators": [_decorator_name(d) for d in node.decorator_list]}
    return out


def _attr(classes: dict[str, dict[str, Any]], name: str, key: str, default: Any) -> Any:
    """A class attribute, looked up along the bases defined in the package."""
    seen = set()
    while name in classes and name not in seen:
        seen.add(name)
        if key in classes[name]["attrs"]:
            return classes[name]["attrs"][key]
        name = next((b for b in classes[name]["bases"] if b in classes), "")
    return default


def _registered(folder: Path, decorator: str) -> dict[str, dict[str, Any]]:
    classes = _classes(folder)
    return {_attr(classes, c, "name", ""): {"title": _attr(classes, c, "title", ""),
                                            "is_detector": _attr(classes, c, "is_detector", False)}
            for c, info in classes.items() if decorator in info["decorators"]}


def _models(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and ast.unparse(d.func) == "MODELS.register":
                    names.append(_constant(d.args[0]))
    return sorted(names)


def _datasets(path: Path) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DATASET_SPECS"
                                                for t in node.targets):
            return sorted(_constant(k) for k in node.value.keys)
    return []


def catalog(root: Path = ROOT) -> dict[str, Any]:
    return {"datasets": _datasets(root / "benchmark" / "data.py"),
            "attacks": sorted(_registered(root / "attacks", "register_attack")),
            "models": _models(root / "benchmark" / "models.py"),
            "defenses": dict(sorted(_registered(root / "defenses", "register_defense").items()))}


def listing(cat: dict[str, Any]) -> str:
    """The ``--list`` text."""
    lines = [f"{kind}: {', '.join(cat[kind])}" for kind in ("datasets", "attacks", "models")]
    lines.append("defenses:")
    width = max(map(len, cat["defenses"]), default=0)
    for name, d in cat["defenses"].items():
        kind = " [detector: isolation only]" if d["is_detector"] else ""
        lines.append(f"  {name:{width}s} {d['title'] or ''}{kind}")
    return "\n".join(lines)
