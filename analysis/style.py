"""One figure style for every plot of the repository."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

METHOD_COLORS = {"aligned": "#4d4d4d", "base": "#999999", "sft": "#d62728", "sft_lora": "#ff9896",
                 "pact": "#1f77b4", "pact_lora": "#aec7e8"}


def apply_style() -> None:
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 150, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})


def save_figure(fig, stem: Path) -> None:
    """Save as PNG and PDF (``stem`` without suffix)."""
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        fig.savefig(stem.with_suffix(suffix), bbox_inches="tight")
    plt.close(fig)
