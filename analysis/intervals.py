"""95% bootstrap intervals for the real-data studies' rates, from summary.csv alone.

Every rate of a real-data run is a mean of yes/no verdicts over a benchmark's prompts (the harmful rates average
their benchmarks with equal weight), and summary.csv keeps each benchmark's rate and prompt count. Resampling a
benchmark's prompts with replacement then amounts to a binomial draw at its observed rate, so the bootstrap over
prompts needs no per-answer file: per resample, the seeds of a cell are drawn with replacement (where there are
several), then every benchmark of every drawn row is redrawn over its prompts, and the metric is recomputed as the
run computes it. The refusal gap (harmful refusal minus refusal of the safe look-alikes) is drawn jointly with both
rates. Settings (resamples, level, seed): conf/analysis.yaml ``intervals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from pact.run.config import CONF_DIR

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").intervals
GAP = "refusal_gap"   # refusal_rate - benign_refusal_rate (percentage points)


@dataclass(frozen=True)
class Rate:
    """A metric of a run as a mean over benchmarks: its per-benchmark rate columns and their prompt counts."""

    metric: str
    rates: tuple[str, ...]
    counts: tuple[str, ...]


def benchmarks(df: pd.DataFrame, metric: str, count: str) -> Rate:
    """``metric``'s per-benchmark columns (``<metric>.<benchmark>`` with ``<count>.<benchmark>``), or the metric
    itself with its total count where the runs hold one benchmark."""
    per = sorted(c.split(".", 1)[1] for c in df.columns if c.startswith(f"{metric}.") and df[c].notna().any())
    if per and all(f"{count}.{b}" in df.columns for b in per):
        return Rate(metric, tuple(f"{metric}.{b}" for b in per), tuple(f"{count}.{b}" for b in per))
    return Rate(metric, (metric,), (count,))


# The utility measures (pact.evaluation.utility, utility=assistant): each a rate over its own items, pooled
UTILITY = {"instruction_refusal_rate": "n_instructions", "non_answer_rate": "n_instructions",
           "knowledge_accuracy": "n_knowledge"}


def rates_of(df: pd.DataFrame) -> dict[str, Rate]:
    """The rates a table shows, each with the prompt counts behind it."""
    harmful = {m: benchmarks(df, m, "n_harmful") for m in ("harmful_score", "refusal_rate")}
    utility = {m: Rate(m, (m,), (n,)) for m, n in UTILITY.items() if m in df.columns}
    return {**harmful, "benign_refusal_rate": benchmarks(df, "benign_refusal_rate", "n_benign"),
            "finetune_accuracy": Rate("finetune_accuracy", ("finetune_accuracy",), ("n_task",)), **utility}


def has_utility(df: pd.DataFrame) -> bool:
    """Whether some rows carry the utility measures."""
    return any(m in df.columns and df[m].notna().any() for m in UTILITY)


def _draws(rows: pd.DataFrame, rate: Rate, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Per resample, the metric over the picked rows (resamples x seeds), each benchmark redrawn over its prompts."""
    p = rows[list(rate.rates)].to_numpy(dtype=float) / 100.0
    n = rows[list(rate.counts)].to_numpy(dtype=float)
    if np.isnan(p).any() or np.isnan(n).any() or (n <= 0).any():
        return None
    n = n.astype(int)
    hits = rng.binomial(n[picks], p[picks])          # resamples x seeds x benchmarks
    per_row = (hits / n[picks]).mean(axis=2)         # the run's mean over its benchmarks
    return 100.0 * per_row.mean(axis=1)              # the cell's mean over its seeds


def cell_intervals(rows: pd.DataFrame, rates: dict[str, Rate], resamples: int | None = None,
                   level: float | None = None, seed: int | None = None) -> dict[str, tuple[float, float, float]]:
    """metric -> (mean over the rows, lower, upper) of the ``level`` bootstrap interval, for the rows of one cell
    (one method at one poison ratio, its seeds), with the refusal gap; a metric the rows lack is left out."""
    resamples = int(resamples or SETTINGS.resamples)
    level = float(level or SETTINGS.level)
    rng = np.random.default_rng(int(SETTINGS.seed if seed is None else seed))
    k = len(rows)
    picks = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=int)
    tail = 100.0 * (1 - level) / 2
    out, draws = {}, {}
    for name, rate in rates.items():
        if not set(rate.rates) | set(rate.counts) <= set(rows.columns):
            continue
        d = _draws(rows, rate, picks, rng)
        if d is None:
            continue
        draws[name] = d
        mean = float(pd.to_numeric(rows[name], errors="coerce").mean())
        out[name] = (mean, *np.percentile(d, [tail, 100 - tail]))
    if "refusal_rate" in draws and "benign_refusal_rate" in draws:
        gap = draws["refusal_rate"] - draws["benign_refusal_rate"]
        mean = out["refusal_rate"][0] - out["benign_refusal_rate"][0]
        out[GAP] = (mean, *np.percentile(gap, [tail, 100 - tail]))
    return out


def interval_table(df: pd.DataFrame, metrics: Sequence[str] = ("refusal_rate", "benign_refusal_rate", GAP,
                                                                 "harmful_score", "finetune_accuracy", *UTILITY)
                   ) -> pd.DataFrame:
    """One row per (method, poison ratio) of a real-data study's rows (reference models first, no ratio): seeds,
    and per metric its mean and interval (columns ``<metric>``, ``<metric>_lo``, ``<metric>_hi``)."""
    rates = rates_of(df)
    rows = []
    keys = ["method", "poison_ratio"]
    if "poison_ratio" not in df:  # reference rows alone, their empty column dropped
        df = df.assign(poison_ratio=float("nan"))
    for (method, ratio), group in df.groupby(keys, sort=False, dropna=False):
        cell = cell_intervals(group, rates)
        row = {"method": method, "poison_ratio": ratio, "seeds": len(group)}
        for m in metrics:
            if m in cell:
                row.update({m: cell[m][0], f"{m}_lo": cell[m][1], f"{m}_hi": cell[m][2]})
        rows.append(row)
    table = pd.DataFrame(rows)
    ref = table["poison_ratio"].isna()
    return pd.concat([table[ref], table[~ref].sort_values(["poison_ratio"], kind="stable")], ignore_index=True)


def cell_text(row: pd.Series, metric: str) -> str:
    """"mean [lo, hi]" with one decimal; "–" where the metric is missing."""
    if metric not in row or pd.isna(row.get(metric)):
        return "–"
    return f"{row[metric]:.1f} [{row[f'{metric}_lo']:.1f}, {row[f'{metric}_hi']:.1f}]"


SHOWN = (("refusal_rate", "Ref (harmful) ↑"), ("benign_refusal_rate", "OverRef (safe) ↓"), (GAP, "Gap ↑"),
         ("harmful_score", "HS ↓"), ("finetune_accuracy", "FA ↑"), ("instruction_refusal_rate", "InstrRef ↓"),
         ("non_answer_rate", "NoAnswer ↓"), ("knowledge_accuracy", "MMLU ↑"))


def intervals_markdown(table: pd.DataFrame) -> str:
    """The interval table as Markdown: a row per method and poison ratio ("ref" for the reference models)."""
    shown = [(m, label) for m, label in SHOWN if m in table.columns]
    lines = ["| method | p | seeds | " + " | ".join(label for _, label in shown) + " |",
             "|---" * (3 + len(shown)) + "|"]
    for _, row in table.iterrows():
        p = "ref" if pd.isna(row["poison_ratio"]) else f"{row['poison_ratio']:g}"
        lines.append(f"| {row['method']} | {p} | {row['seeds']} | " +
                     " | ".join(cell_text(row, m) for m, _ in shown) + " |")
    return "\n".join(lines) + "\n"
