"""Figures from summary.csv: Harmful Score vs poison ratio per method, HS vs Fine-tune Accuracy per task,
PACT ablation curves (error bars = std over seeds); harmful vs safe refusal and safety vs utility (95% bootstrap
intervals)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.style import METHOD_COLORS, apply_style, legend_label, save_figure  # noqa: E402


def hs_vs_p(df: pd.DataFrame, out_stem: Path, title: str) -> None:
    """Harmful Score and refusal rate against p, one line per method, mean ± std over seeds."""
    apply_style()
    ft = df[df["poison_ratio"].notna()]
    # evenly spaced p values (0, 0.01, 0.02 would overlap on a linear axis; a log axis cannot show 0)
    ticks = sorted(ft["poison_ratio"].unique())
    position = {p: i for i, p in enumerate(ticks)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for method, group in ft.groupby("method", sort=True):
        stats = group.groupby("poison_ratio")[["harmful_score", "refusal_rate"]].agg(["mean", "std"])
        x = [position[p] for p in stats.index]
        for ax, metric in zip(axes, ("harmful_score", "refusal_rate")):
            ax.errorbar(x, stats[(metric, "mean")], yerr=stats[(metric, "std")].fillna(0), marker="o",
                        ms=3, capsize=2, label=legend_label(method), color=METHOD_COLORS.get(method))
    for ax in axes:
        ax.set_xticks(range(len(ticks)), [f"{t:g}" for t in ticks])
    axes[0].set(xlabel="poison ratio p (evenly spaced)", ylabel="Harmful Score (%)", ylim=(-3, 103))
    axes[1].set(xlabel="poison ratio p (evenly spaced)", ylabel="refusal rate (%)", ylim=(-3, 103))
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)


def _mean_std(group: pd.DataFrame, by: str, metrics: list[str]) -> pd.DataFrame:
    stats = group.groupby(by)[metrics].agg(["mean", "std"])
    return stats.sort_index()


def hs_vs_fa(df: pd.DataFrame, out_stem: Path, title: str) -> None:
    """Harmful Score against Fine-tune Accuracy, one panel per task, one point per method (mean ± std over
    seeds on both axes): the safety/utility trade-off at a glance (lower right is better)."""
    apply_style()
    ft = df[df["poison_ratio"].notna()]
    tasks = list(dict.fromkeys(ft["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks) + 1.6, 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        stats = _mean_std(ft[ft["task"] == task], "method", ["finetune_accuracy", "harmful_score"])
        for method, row in stats.iterrows():
            ax.errorbar(row[("finetune_accuracy", "mean")], row[("harmful_score", "mean")],
                        xerr=0 if pd.isna(row[("finetune_accuracy", "std")]) else row[("finetune_accuracy", "std")],
                        yerr=0 if pd.isna(row[("harmful_score", "std")]) else row[("harmful_score", "std")],
                        marker="o", ms=5, capsize=2, ls="none", label=legend_label(method),
                        color=METHOD_COLORS.get(method))
        ax.set(title=f"task: {task}", xlabel="Fine-tune Accuracy (%)", xlim=(-3, 103), ylim=(-3, 103))
    axes[0][0].set_ylabel("Harmful Score (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)


def ablation_curve(df: pd.DataFrame, key: str, out_stem: Path, title: str) -> None:
    """One PACT hyper-parameter swept (``key`` = the variant's override, e.g. ``method.lambda_kl``): Harmful
    Score, refusal rate, the oracle's third class (neither: broken answers) and Fine-tune Accuracy against its
    value, mean ± std over seeds."""
    apply_style()
    ft = df[df["poison_ratio"].notna()].copy()
    ft["value"] = ft["variant"].str.split("=", n=1).str[1].astype(float)
    metrics = [("harmful_score", "Harmful Score (%)"), ("refusal_rate", "refusal rate (%)"),
               ("other_rate", "other / broken (%)"), ("finetune_accuracy", "Fine-tune Accuracy (%)")]
    stats = _mean_std(ft, "value", [m for m, _ in metrics])
    values = stats.index.tolist()
    x = range(len(values))  # evenly spaced: lambda = 0, 0.1, 0.5 would overlap on a linear axis
    fig, axes = plt.subplots(1, len(metrics), figsize=(12.5, 3.3), sharex=True)
    for ax, (metric, label) in zip(axes, metrics):
        ax.errorbar(x, stats[(metric, "mean")], yerr=stats[(metric, "std")].fillna(0), marker="o", ms=4,
                    capsize=2, color=METHOD_COLORS.get("pact"))
        ax.set_xticks(x, [f"{v:g}" for v in values])
        ax.set(xlabel=f"{key.removeprefix('method.')} (evenly spaced)", ylabel=label, ylim=(-3, 103))
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)


def selectivity(table: pd.DataFrame, out_stem: Path, title: str) -> None:
    """Refusal of harmful requests against refusal of their safe look-alikes, one point per method and poison ratio
    with its 95% bootstrap interval on both axes (analysis.intervals.interval_table); the reference models (the
    instruct model before alignment: ``base``; the aligned model) as labelled squares. Upper left is selective:
    harmful refused, safe answered; the diagonal refuses by topic."""
    apply_style()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot([0, 100], [0, 100], color="#cccccc", lw=1, ls="--", zorder=0)
    markers = ["o", "^", "D", "v", "P", "X"]   # one per poison ratio; squares are the reference models
    ratios = sorted(table["poison_ratio"].dropna().unique())
    for _, row in table.iterrows():
        ref = pd.isna(row["poison_ratio"])
        x, y = row["benign_refusal_rate"], row["refusal_rate"]
        xerr = [[x - row["benign_refusal_rate_lo"]], [row["benign_refusal_rate_hi"] - x]]
        yerr = [[y - row["refusal_rate_lo"]], [row["refusal_rate_hi"] - y]]
        marker = "s" if ref else markers[ratios.index(row["poison_ratio"]) % len(markers)]
        label = legend_label(row["method"]) + ("" if ref else f", p = {row['poison_ratio']:g}")
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=marker, ms=7 if ref else 5, capsize=2, ls="none",
                    color=METHOD_COLORS.get(row["method"]), mec="black" if ref else None, label=label)
        if ref:
            ax.annotate(legend_label(row["method"]), (x, y), xytext=(5, -10), textcoords="offset points", fontsize=8)
    ax.set(xlabel="refusal of safe look-alike requests (%)", ylabel="refusal of harmful requests (%)",
           xlim=(-3, 103), ylim=(-3, 103))
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    save_figure(fig, out_stem)


def safety_utility(table: pd.DataFrame, out_stem: Path, title: str) -> None:
    """Safety against utility: refusal of harmful requests (x) against the refusals of ordinary instructions, the
    non-answers to them and the MMLU subset's accuracy (one panel each), a point per method and poison ratio with
    its 95% bootstrap interval on both axes (analysis.intervals.interval_table); the reference models as squares.
    A method that keeps refusals by refusing everything sits right and high in the first panel."""
    apply_style()
    panels = [("instruction_refusal_rate", "refusal of ordinary instructions (%)"),
              ("non_answer_rate", "non-answers to ordinary instructions (%)"),
              ("knowledge_accuracy", "MMLU subset accuracy (%)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13.5, 4.0), sharex=True)
    markers = ["o", "^", "D", "v", "P", "X"]
    ratios = sorted(table["poison_ratio"].dropna().unique())
    for ax, (metric, ylabel) in zip(axes, panels):
        for _, row in table.iterrows():
            x, y = row["refusal_rate"], row[metric]
            if pd.isna(x) or pd.isna(y):
                continue
            ref = pd.isna(row["poison_ratio"])
            marker = "s" if ref else markers[ratios.index(row["poison_ratio"]) % len(markers)]
            label = legend_label(row["method"]) + ("" if ref else f", p = {row['poison_ratio']:g}")
            ax.errorbar(x, y, xerr=[[x - row["refusal_rate_lo"]], [row["refusal_rate_hi"] - x]],
                        yerr=[[y - row[f"{metric}_lo"]], [row[f"{metric}_hi"] - y]], marker=marker,
                        ms=7 if ref else 5, capsize=2, ls="none", color=METHOD_COLORS.get(row["method"]),
                        mec="black" if ref else None, label=label)
        ax.set(xlabel="refusal of harmful requests (%)", ylabel=ylabel, xlim=(-3, 103), ylim=(-3, 103))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)
