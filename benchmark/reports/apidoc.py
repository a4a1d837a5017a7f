"""Reference tables for method authors, read from the code: what a defense receives, what it
returns, the class attributes it may set, and the shared helpers with one line each. Rendered
into docs/authors.md by its generated blocks (``benchmark.reports.blocks``), so the page follows
the code: a renamed field or a new helper shows up on the next render, and a test keeps the
committed page equal to it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path

# (module, names): the pieces a new method reuses instead of writing its own
SHARED = (
    ("defenses.base", ("isolate_lowest_loss", "backdoored_features", "finetune_then_unlearn",
                       "own_recipe", "trusted_excluded", "inspected_rows", "TrustedSamples",
                       "BenignValidation")),
    ("benchmark.models", ("embed", "classifier_head", "conv_feature_layers", "batchnorm_layers",
                          "residual_blocks")),
    ("benchmark.robust", ("medcouple", "adjusted_outlyingness")),
    ("benchmark.losses", ("lga_loss", "selective_loss", "ascent_loss", "sce_loss", "nt_xent")),
    ("benchmark.jenks", ("jenks_break_2class", "jenks_upper")),
    ("benchmark.clustering", ("class_rows", "pca", "top_directions", "fast_ica", "kmeans")),
    ("benchmark.augment", ("cutout", "resized_crop_flip", "StrongAugment")),
    ("benchmark.semisup", ("MixMatch",)),
    ("benchmark.train", ("Callback", "LambdaCallback", "LoopCheckpoint")),
    ("benchmark.validate", ("at_least", "within", "one_of")),
)
TRAINER = ("fit", "fit_cached", "per_sample_loss", "predict", "logits", "embeddings", "augment")
CONTEXT_METHODS = ("backdoored_model", "lga_model", "trained_once", "checkpoint", "note_split")
FIELD = re.compile(r"^\s+(\w+): ([^=#]+?)(?: = [^#]*?)?\s*(?:#\s*(.*))?$")


def first_sentence(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<!Eq)(?<!al)\.(\s|$)", text)
    return text[:end.start() + 1] if end else text


def first_paragraph(obj: object) -> str:
    """A member's docstring up to its first blank line, on one line (what it returns is there)."""
    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def commented_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, annotation, comment) of a class's annotated attributes, in source order; a comment
    is the one on the line, or the comment lines just above it."""
    out, above, indent = [], [], None
    lines = inspect.getsource(cls).splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class "))
    for line in lines[start + 1:]:
        stripped = line.strip()
        if not stripped:
            continue
        here = len(line) - len(line.lstrip())
        indent = here if indent is None else indent
        if here != indent:  # a continuation or a method's body
            continue
        if stripped.startswith(("def ", "@")):  # attributes come before the methods
            break
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = FIELD.match(line)
        if m:
            out.append((m.group(1), m.group(2).strip(), " ".join([*above, m.group(3) or ""]).strip()))
        above = []
    return out


def fields_table(cls: type) -> str:
    """A dataclass's fields: name, type, default, what it holds (the source's comment)."""
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    rows = ["| field | type | default | what it holds |", "|---|---|---|---|"]
    for name, hint, comment in commented_fields(cls):
        f = defaults.get(name)
        if f is None:
            continue
        default = ("required" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   else "empty" if f.default is dataclasses.MISSING else f"`{f.default!r}`")
        rows.append(f"| `{name}` | `{_cell(hint)}` | {default} | {_cell(comment)} |")
    return "\n".join(rows) + "\n"


def class_attributes_table(cls: type) -> str:
    """The ``ClassVar`` attributes a subclass sets, with their defaults and comments."""
    rows = ["| attribute | default | what it means |", "|---|---|---|"]
    for name, hint, comment in commented_fields(cls):
        if hint.startswith("ClassVar"):
            rows.append(f"| `{name}` | `{getattr(cls, name)!r}` | {_cell(comment)} |")
    return "\n".join(rows) + "\n"


def _signature(obj: object) -> str:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    star = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    params = [star.get(p.kind, "") + p.name + ("" if p.default is inspect.Parameter.empty else "=...")
              for p in sig.parameters.values() if p.name not in ("self", "cls")]
    return f"({', '.join(params)})"


def members_list(owner: str, obj: object, names: tuple[str, ...]) -> str:
    return "".join(f"- `{owner}.{n}{_signature(getattr(obj, n))}`: {first_paragraph(getattr(obj, n))}\n"
                   for n in names)


def shared_helpers() -> str:
    out = []
    for module_name, names in SHARED:
        module = importlib.import_module(module_name)
        out.append(f"**`{module_name}`**: {first_sentence(module)}\n\n")
        out.append("".join(f"- `{n}{_signature(getattr(module, n))}`: {first_paragraph(getattr(module, n))}\n"
                           for n in names) + "\n")
    return "".join(out).rstrip("\n") + "\n"


def _context() -> str:
    from defenses import DefenseContext

    return (fields_table(DefenseContext) + "\nMethods:\n\n"
            + members_list("ctx", DefenseContext, CONTEXT_METHODS))


def _result() -> str:
    from defenses import DefenseResult

    return fields_table(DefenseResult)


def _defense_class() -> str:
    from defenses import Defense

    hooks = tuple(n for n, v in vars(Defense).items() if isinstance(v, classmethod))  # every one
    return (class_attributes_table(Defense) + "\nClass methods a defense may override (each takes "
            "its `Params`):\n\n" + members_list("Defense", Defense, hooks))


def _trainer() -> str:
    from benchmark.train import Trainer

    return members_list("ctx.trainer", Trainer, TRAINER)


def presets() -> str:
    """Every preset's settings, one row per ``--set`` key (blank: the section's or the method's
    default); a per-attack training override reads ``train.epochs (adaptive_patch)``."""
    from benchmark.presets import PRESETS
    from benchmark.reports.render import dotted

    flat: dict[str, dict[str, object]] = {}
    for preset, spec in PRESETS.items():
        row: dict[str, object] = {}
        for key, value in spec.items():
            if key in ("attacks", "defenses"):  # by method name: --set badnets.rate=...
                row.update(dotted(value))
            elif key == "attack_train":
                row.update({f"train.{k} ({attack})": v for attack, t in value.items() for k, v in t.items()})
            elif isinstance(value, dict):
                row.update(dotted(value, ("model" if key == "model_params" else key) + "."))
            else:
                row[key] = value
        flat[preset] = row
    keys = list(dict.fromkeys(k for row in flat.values() for k in row))
    lines = [f"| `{k}` | " + " | ".join(f"`{json.dumps(flat[p][k])}`" if k in flat[p] else ""
                                        for p in flat) + " |" for k in keys]
    return f"| setting | {' | '.join(flat)} |\n|---|{'---|' * len(flat)}\n" + "\n".join(lines) + "\n"


def dataset_attacks() -> str:
    """The per-dataset attack settings (``DATASET_ATTACKS``), one row per dataset and key."""
    from benchmark.presets import DATASET_ATTACKS

    lines = [f"| {ds} | `{'every attack' if attack == '*' else attack}` | `{key}` | `{json.dumps(v)}` |"
             for ds, by_attack in DATASET_ATTACKS.items() for attack, values in by_attack.items()
             for key, v in values.items()]
    return "| dataset | attack | setting | value |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"


def full_estimate() -> str:
    """The full grid's device-hours from the committed work counts (``benchmark/work/full.json``)
    over each committed calibration with the grid's model (``docs/results/perf/calibration-*``),
    and the kinds of phase that take them."""
    from benchmark.catalog import catalog
    from benchmark.cli import dev_twin
    from benchmark.cost import committed_work, grid_phases, grid_units, speed_key
    from benchmark.grid import expand_grid
    from benchmark.spec import CellSpec

    own = catalog(builtin=True)  # not the plugins a process registered
    specs = [CellSpec.from_config(c) for c in expand_grid("full", own["attacks"], list(own["defenses"]),
                                                          [0], [])]
    committed = committed_work()
    works = [committed.get(dev_twin(s)[0]) for s in specs]
    have = [w for w in works if w is not None]
    keys = {speed_key(s) for s in specs}
    total = sum(grid_units(have))
    rows = []
    for path in sorted((Path(__file__).parents[2] / "docs/results/perf").glob("calibration-*.json")):
        cal = json.loads(path.read_text())
        speeds = [cal["img_per_s"][k] for k in keys if k in cal["img_per_s"]]
        if len(speeds) != len(keys):
            continue  # calibrated for other models (a quick preset's width)
        source = "published figures, not measured here" if cal.get("published") else "measured"
        rows.append(f"| {cal['device_kind']} | {speeds[0]:,.1f} ({source}) | "
                    f"{total / speeds[0] / 3600:,.1f} |")
    out = [f"{len(have)} of {len(specs)} cells ({', '.join(sorted(keys))}), seed 0, each shared "
           "artifact counted once.", "", "| device | img/s | hours |", "|---|---|---|", *rows, "",
           "| phase | share of the grid's work |", "|---|---|"]
    for phase, u in list(grid_phases(have).items())[:8]:
        out.append(f"| {phase} | {100 * u / total:.1f}% |")
    return "\n".join(out) + "\n"


def dataset_estimates() -> str:
    """The full grid's A100 device-hours on each dataset of a known size, as ``--dry-run
    --datasets D`` counts them: a cell's own committed counts, else its CIFAR-10 twin's scaled
    by the training sets (``cli.add_stand_in``), over the published A100 calibration."""
    from benchmark.catalog import catalog
    from benchmark.cli import add_stand_in, dev_twin
    from benchmark.cost import grid_units, speed_key
    from benchmark.data import DATASETS
    from benchmark.grid import expand_grid
    from benchmark.plans import WorkCounts
    from benchmark.spec import CellSpec

    own = catalog(builtin=True)
    path = Path(__file__).parents[2] / "docs/results/perf/calibration-a100-published.json"
    speeds = json.loads(path.read_text())["img_per_s"]
    out = ["| dataset | training images | image side | cells with counts | A100 hours | counts |",
           "|---|---|---|---|---|---|"]
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        if entry.sizes is None:
            continue
        configs = expand_grid("full", own["attacks"], list(own["defenses"]), [0], [], datasets=[name])
        specs = [CellSpec.from_config(c) for c in configs]
        counts = WorkCounts(None)  # the committed counts only
        ids = [dev_twin(s)[0] for s in specs]
        for spec, config, dev_id in zip(specs, configs, ids, strict=True):
            add_stand_in(counts, spec, config, dev_id)
        works = [counts.get(i) for i in ids]
        seconds = sum(u / speeds[speed_key(s)] for u, s in zip(grid_units(works), specs, strict=True)
                      if u is not None)
        how = "own" if counts.used["committed"] and not counts.used["scaled"] else \
            f"CIFAR-10's x{entry.sizes[0] / DATASETS.get('cifar10').sizes[0]:.3f}"
        out.append(f"| {name} | {entry.sizes[0]:,} | {entry.side} px | "
                   f"{sum(w is not None for w in works)} of {len(specs)} | {seconds / 3600:,.1f} | {how} |")
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "presets": presets,
    "full_estimate": full_estimate,
    "dataset_estimates": dataset_estimates,
    "dataset_attacks": dataset_attacks,
    "defense_context": _context,
    "defense_result": _result,
    "defense_class": _defense_class,
    "trainer": _trainer,
    "shared_helpers": shared_helpers,
}
