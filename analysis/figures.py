"""Figures from summary.csv: Harmful Score vs poison ratio per method (error bars = std over seeds)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.style import METHOD_COLORS, apply_style, save_figure  # noqa: E402


def hs_vs_p(df: pd.DataFrame, out_stem: Path, title: str) -> None:
    """Harmful Score and refusal rate against p, one line per method, mean ± std over seeds."""
    apply_style()
    ft = df[df["poison_ratio"].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for method, group in ft.groupby("method", sort=True):
        stats = group.groupby("poison_ratio")[["harmful_score", "refusal_rate"]].agg(["mean", "std"])
        for ax, metric in zip(axes, ("harmful_score", "refusal_rate")):
            ax.errorbar(stats.index, stats[(metric, "mean")], yerr=stats[(metric, "std")].fillna(0), marker="o",
                        ms=3, capsize=2, label=method, color=METHOD_COLORS.get(method))
    ticks = sorted(ft["poison_ratio"].unique())
    for ax in axes:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].set(xlabel="poison ratio p", ylabel="Harmful Score (%)", ylim=(-3, 103))
    axes[1].set(xlabel="poison ratio p", ylabel="refusal rate (%)", ylim=(-3, 103))
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)
