"""The paper's Figures 1, 4 and 5, and per-cell training curves, as PNG and PDF (matplotlib /
seaborn, one style). Each returns the files it wrote; a figure without records writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

STYLE = {"style": "whitegrid", "context": "paper", "palette": "colorblind"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(**STYLE)
    return plt, sns


def _save(fig, out: Path, name: str) -> list[Path]:  # noqa: ANN001
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def fig1_isolation(df: pd.DataFrame, out: Path, dataset: str = "cifar10") -> list[Path]:
    """Isolation TPR and FPR of every isolating method per attack, side by side: the default
    cells only (Table 2's), the legend outside the bars."""
    from benchmark.reports.tables import column_order, main_rows

    rows = main_rows(df)
    rows = rows[(rows["dataset"] == dataset) & rows["tpr"].notna()] if not rows.empty else rows
    if rows.empty:
        return []
    plt, sns = _plt()
    long = rows.melt(id_vars=["attack_label", "defense_label"], value_vars=["tpr", "fpr"],
                     var_name="metric", value_name="value")
    long["value"] *= 100
    long["metric"] = long["metric"].str.upper()
    hue_order = sorted(long["defense_label"].unique(), key=column_order)
    order = sorted(long["attack_label"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(order) + 5), 3.6))
    for ax, metric in zip(axes, ("TPR", "FPR"), strict=True):
        sns.barplot(data=long[long["metric"] == metric], x="attack_label", y="value", order=order,
                    hue="defense_label", hue_order=hue_order, ax=ax, errorbar="sd")
        ax.set(title=metric, xlabel="", ylabel="%")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                   frameon=False)
    fig.suptitle(f"Fig. 1: isolation quality on {dataset} (bars: mean over seeds, lines: sd)")
    return _save(fig, out, "fig1_isolation")


def fig4_fpr_vs_rounds(df: pd.DataFrame, out: Path, rate: float = 0.2) -> list[Path]:
    """FPR (and TPR) after each progressive round, per attack, at ``rate``: from the cell with
    the most rounds of each (attack, method). Colour is the attack, line style the method (two
    methods with equal rounds stay visible), the legend outside the axes."""
    rows = df[(df["status"] == "ok") & (df["rate"] == rate) & df["rounds"].notna()
              & df["fault_ratio"].isna()] if not df.empty else df
    if rows.empty:
        return []
    pts = []
    for (attack, label, defense), g in rows.groupby(["attack", "attack_label", "defense_label"]):
        cell = g.loc[g["rounds"].idxmax()]
        # the rate is in the title: the label keeps only the attack's other overrides
        shown = " ".join(w for w in label.split() if w != f"{attack}.rate={rate:g}")
        for r, (fpr, tpr) in enumerate(zip(cell["round_fpr"], cell["round_tpr"], strict=True), 1):
            pts.append({"attack": shown, "method": defense, "T": r, "FPR": 100 * fpr,
                        "TPR": 100 * tpr})
    if not pts:
        return []
    plt, sns = _plt()
    data = pd.DataFrame(pts)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric in zip(axes, ("FPR", "TPR"), strict=True):
        sns.lineplot(data=data, x="T", y=metric, hue="attack", style="method", markers=True,
                     dashes=True, ax=ax)
        low = 0 if metric == "FPR" else min(90.0, float(data[metric].min()) - 1)
        high = max(1.0, float(data[metric].max()) * 1.25) if metric == "FPR" else 100.5
        ax.set(title=f"{metric} after round T ({int(rate * 100)}% poisoned)", ylabel="%",
               ylim=(low, high), xticks=sorted(data["T"].unique()))
    axes[0].get_legend().remove()
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _save(fig, out, "fig4_fpr_vs_rounds")


def _epoch_curve(curves: dict, phases: list[str]) -> pd.DataFrame:
    pts, epoch = [], 0
    for phase in phases:
        for p in curves.get(phase, []):
            epoch += 1
            if "ca" in p:
                pts.append({"epoch": epoch, "phase": phase, "CA": 100 * p["ca"], "ASR": 100 * p["asr"]})
    return pd.DataFrame(pts)


def _scheme(cell: pd.Series) -> str:
    """A Fig. 5 line's name: the method whose isolation it trains on (PIPD or a variant, with
    its overrides other than ``training``, its version and precision marks) and the scheme."""
    from benchmark.config import label

    def name(own: dict) -> str:
        return cell["column"] + (f"[{label(own)}]" if own else "")

    own = cell["defense_overrides"]
    marks = cell["defense_label"][len(name(own)):]  # " (v2)", " (bf16)"
    who = name({k: v for k, v in own.items() if k != "training"}) + marks
    if cell["training"] == "selective":
        return f"{who} selective training"
    return f"ABL's scheme on {who}'s isolation: train on D_b, then unlearn D_p"


def fig5_lines(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Per (dataset, attack, seed) with both schemes: the per-epoch CA / ASR after isolation,
    one ``scheme`` per method, so a variant's selective training (``pipd_q90``) is its own line,
    never averaged into PIPD's. Isolation-only cells (no selective epochs) draw nothing."""
    rows = df[(df["status"] == "ok") & df["training"].isin(["selective", "unlearning"])] \
        if not df.empty and "training" in df else pd.DataFrame()
    panels = []
    for _, g in (rows.groupby(["dataset", "attack_label", "seed"]) if not rows.empty else []):
        parts = []
        for _, cell in g.iterrows():
            phases = ["selective"] if cell["training"] == "selective" else ["finetune", "unlearning"]
            c = _epoch_curve(cell["curves"], phases)
            if not c.empty:
                parts.append(c.assign(scheme=_scheme(cell), training=cell["training"],
                                      attack_label=cell["attack_label"], seed=cell["seed"]))
        if len({p["training"].iloc[0] for p in parts}) == 2:
            panels.append(pd.concat(parts, ignore_index=True))
    return panels


def fig5_selective_vs_unlearning(df: pd.DataFrame, out: Path) -> list[Path]:
    """CA and ASR per epoch after isolation: PIPD's selective training against ABL's
    train-then-unlearn scheme on the same isolation (pipd.training=unlearning); a dotted line
    where unlearning starts, the legend below the panels."""
    panels = fig5_lines(df)
    if not panels:
        return []
    plt, sns = _plt()
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 3.2 * len(panels)), squeeze=False)
    handles, labels = [], []
    for i, data in enumerate(panels):
        unlearning = data[data["phase"] == "unlearning"]
        unlearn_from = unlearning["epoch"].min() - 0.5 if not unlearning.empty else None
        for ax, metric in zip(axes[i], ("CA", "ASR"), strict=True):
            sns.lineplot(data=data, x="epoch", y=metric, hue="scheme", marker=".", ax=ax)
            ax.set(title=f"{data['attack_label'].iloc[0]} seed {data['seed'].iloc[0]}: {metric}",
                   ylabel="%", ylim=(0, 100))
            if unlearn_from is not None:
                ax.axvline(unlearn_from, color="grey", linestyle=":", linewidth=1)
                ax.text(unlearn_from + 0.3, 95, "unlearning", fontsize=7, color="grey", va="top")
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
            ax.get_legend().remove()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=1,
               frameon=False)
    fig.suptitle("Fig. 5: selective training vs unlearning on one isolation", y=1.0)
    fig.tight_layout()
    return _save(fig, out, "fig5_selective_vs_unlearning")


def cell_curves(df: pd.DataFrame, out: Path, ids: list[str]) -> list[Path]:
    """Every phase's per-epoch CA / ASR (and training loss) of the named cells."""
    written: list[Path] = []
    for _, cell in df[df["id"].isin(ids)].iterrows():
        phases = [k for k, v in cell["curves"].items() if v]
        data = _epoch_curve(cell["curves"], phases)
        if data.empty:
            continue
        plt, sns = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.4))
        long = data.melt(id_vars=["epoch", "phase"], value_vars=["CA", "ASR"], var_name="metric")
        sns.lineplot(data=long, x="epoch", y="value", hue="phase", style="metric", ax=ax)
        ax.set(title=f"{cell['attack_label']} / {cell['defense_label']} seed {cell['seed']}",
               ylabel="%", ylim=(0, 100))
        written += _save(fig, out, f"curves_{cell['id']}")
    return written
