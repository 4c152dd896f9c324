"""One figure style for every plot of the repository."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from pact.runtime.records import variant_tag

# One fixed colour per method (tab20 pairs: a method and its LoRA / variant share a hue).
METHOD_COLORS = {"aligned": "#4d4d4d", "base": "#999999", "sft": "#d62728", "sft_lora": "#ff9896",
                 "pact": "#1f77b4", "pact_lora": "#aec7e8", "pact_bucket": "#17becf", "safety_mix": "#9467bd",
                 "freeze": "#ff7f0e", "freeze_control": "#ffbb78", "constrained_sft": "#8c564b", "lisa": "#2ca02c",
                 "vaccine": "#e377c2", "safety_mix_lora": "#c5b0d5", "lisa_lora": "#98df8a", "freeze_lora": "#e6a157",
                 "vaccine_lora": "#f7b6d2", "safelora": "#bcbd22", "booster": "#dbdb8d"}


# A method label carries its run's variant (``pact [method.lambda_kl=2.0]``); one of many overrides (a dry run's model
# paths and data pins: ~14 kB) would fill a legend and take matplotlib minutes to lay out. Figure layout only: the
# committed labels are at most 49 characters; tables keep the whole label.
LEGEND_LABEL_MAX = 60


def legend_label(label: str) -> str:
    """``label`` as a figure shows it: whole up to :data:`LEGEND_LABEL_MAX` characters, else cut there and marked with
    its variant's tag (the one in its records' file names), so that two long variants stay apart."""
    if len(label) <= LEGEND_LABEL_MAX:
        return label
    _, _, variant = label.partition(" [")
    return f"{label[:LEGEND_LABEL_MAX]}… {variant_tag(variant.removesuffix(']') if variant else label)}"


def apply_style() -> None:
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 150, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})


def save_figure(fig, stem: Path) -> None:
    """Save as PNG and PDF (``stem`` without suffix)."""
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        # no creation date in the PDF: the same numbers give the same file
        fig.savefig(stem.with_suffix(suffix), bbox_inches="tight",
                    metadata={"CreationDate": None} if suffix == ".pdf" else None)
    plt.close(fig)
