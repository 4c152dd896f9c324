"""The attacker's strength against each defence: every (method, LoRA lr, epochs) cell of an attack-grid study
(``experiment=smollm2_real_attack``: one sweep over the attacker's knobs, each cell's knobs in its ``variant``) with
its Harmful Score, refusal and Fine-tune Accuracy and their 95% bootstrap intervals over prompts, and each method's
worst case: the cell of its highest Harmful Score. Read from ``summary.csv``; written as Markdown and CSV, with a
figure of Harmful Score over the grid per method.

    python -m analysis.attack --experiment smollm2_real_attack --out results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.intervals import cell_text, interval_table  # noqa: E402
from analysis.provenance import recording
from analysis.report import DEFAULT_OUT, load_summary, to_markdown  # noqa: E402
from analysis.style import apply_style, save_figure  # noqa: E402
from pact.runtime.fileio import write_atomic  # noqa: E402

AXES = ("finetune.lora_lr", "finetune.optim.epochs")   # the attacker's knobs the grid sweeps
METRICS = (("harmful_score", "HS ↑ worst"), ("refusal_rate", "Ref"), ("finetune_accuracy", "FA"))


def knobs(variant: str) -> dict[str, str]:
    """``finetune.lora_lr=0.001,finetune.optim.epochs=3`` -> {key: value}."""
    return dict(part.split("=", 1) for part in variant.split(",") if part)


def grid(df: pd.DataFrame, axes: tuple[str, ...] = AXES) -> pd.DataFrame:
    """One row per (method, knobs) cell: the mean over seeds of each metric and its interval (``<m>_lo/_hi``)."""
    rows = []
    tuned = df[df["poison_ratio"].notna()]
    if tuned.empty:
        raise ValueError("no fine-tuned rows (with a poison ratio) to read the grid from")
    for variant, part in tuned.groupby("variant", sort=False):
        values = knobs(variant)
        missing = [a for a in axes if a not in values]
        if missing:
            raise ValueError(f"rows with variant {variant!r} do not set {missing}: the grid sweeps {list(axes)}")
        part = part.assign(method=part["method"].str.split(" [", n=1, regex=False).str[0])
        for _, row in interval_table(part, [m for m, _ in METRICS]).iterrows():
            rows.append({"method": row["method"], "poison_ratio": row["poison_ratio"], "seeds": row["seeds"],
                         **{a: float(values[a]) for a in axes},
                         **{f"{m}{s}": row.get(f"{m}{s}") for m, _ in METRICS for s in ("", "_lo", "_hi")}})
    return pd.DataFrame(rows).sort_values(["method", *axes], kind="stable", ignore_index=True)


def worst_cases(cells: pd.DataFrame, axes: tuple[str, ...] = AXES) -> pd.DataFrame:
    """Per method, its cell of highest Harmful Score (the first in grid order on a tie)."""
    idx = cells.groupby("method", sort=False)["harmful_score"].idxmax()
    return cells.loc[idx.sort_values()].reset_index(drop=True)


def markdown(cells: pd.DataFrame, axes: tuple[str, ...] = AXES) -> str:
    """The grid's cells and then the worst cases, each value as "mean [lo, hi]"."""
    def table(frame: pd.DataFrame) -> str:
        shown = pd.DataFrame({"method": frame["method"], **{a.rsplit(".", 1)[-1]: frame[a].map("{:g}".format)
                                                            for a in axes},
                              **{label: [cell_text(r, m) for _, r in frame.iterrows()] for m, label in METRICS}})
        return to_markdown(shown)
    return "## Every cell\n\n" + table(cells) + "\n## Each method's worst case (highest HS)\n\n" + \
        table(worst_cases(cells, axes))


def figure(cells: pd.DataFrame, path: Path, axes: tuple[str, ...] = AXES) -> None:
    """Harmful Score against the first knob (log scale), one line per value of the second, one panel per method."""
    apply_style()
    methods = list(dict.fromkeys(cells["method"]))
    fig, panels = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), sharey=True, squeeze=False)
    for ax, method in zip(panels[0], methods):
        mine = cells[cells["method"] == method]
        for value, line in mine.groupby(axes[1]):
            line = line.sort_values(axes[0])
            ax.errorbar(line[axes[0]], line["harmful_score"],
                        yerr=[line["harmful_score"] - line["harmful_score_lo"],
                              line["harmful_score_hi"] - line["harmful_score"]],
                        marker="o", capsize=2, label=f"{axes[1].rsplit('.', 1)[-1]} {value:g}")
        ax.set_xscale("log")
        ax.set_title(method)
        ax.set_xlabel(axes[0].rsplit(".", 1)[-1])
    panels[0][0].set_ylabel("Harmful Score (%)")
    panels[0][-1].legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.attack", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="smollm2_real_attack", help="the attack-grid study")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder with summary.csv (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with recording(out, "analysis.attack", argv):
        write(args.experiment, out)


def write(experiment: str, out: Path) -> None:
    """The grid's table (CSV, Markdown) and figure from ``out``'s summary.csv."""
    cells = grid(load_summary(out / "summary.csv", [experiment]))
    stem = out / "tables" / f"{experiment}_grid"
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(stem.with_suffix(".csv"), cells.to_csv(index=False, float_format="%.4g"))
    write_atomic(stem.with_suffix(".md"),
        f"# {experiment}: the attacker's LoRA lr and epochs against each method\n\nPercent, mean over seeds "
        "[95% bootstrap interval over prompts and seeds] (analysis/attack.py). HS = Harmful Score (primary judge), "
        "Ref = refusal of the harmful benchmarks, FA = Fine-tune Accuracy.\n\n" + markdown(cells))
    figure(cells, out / "figures" / f"{experiment}_grid")
    print(f"wrote {stem}.md and .csv ({len(cells)} cells) and figures/{experiment}_grid.png")


if __name__ == "__main__":
    main()
