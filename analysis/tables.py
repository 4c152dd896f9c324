"""Paper-style tables from summary.csv: rows = methods, column groups = poison ratio (or task), each group with
Harmful Score, refusal rate, helpfulness and Fine-tune Accuracy as mean ± std over seeds (real data: the mean and
its 95% bootstrap interval over prompts and seeds, analysis/intervals.py); the best mean of every column is marked.
Missing cells (a sweep still running or failed) stay missing ("–"), never zero.
Written as Markdown, LaTeX (booktabs) and CSV (means and stds as numbers).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.intervals import has_utility, interval_table


def mean_std(values: pd.Series, digits: int = 1) -> str:
    """"mean ± std" over seeds (sample std; a single seed shows its value alone) with ``digits`` decimals; "–" when
    missing."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


# (metric, short label, better is higher?)
COLUMNS = [("harmful_score", "HS", False), ("refusal_rate", "Ref", True), ("helpfulness", "Help", True),
           ("finetune_accuracy", "FA", True)]
# Real data has no helpfulness judge: the benign column is over-refusal on the benign benchmarks.
REAL_COLUMNS = [("harmful_score", "HS", False), ("refusal_rate", "Ref", True),
                ("benign_refusal_rate", "OverRef", False), ("finetune_accuracy", "FA", True)]


def is_real(df: pd.DataFrame) -> bool:
    """Whether the rows come from real-data runs (per-benchmark columns ``<metric>.<benchmark>``)."""
    return any("." in c and df[c].notna().any() for c in df.columns if c.startswith("harmful_score."))


# The utility measures (pact.evaluation.utility), where the rows have them: refusals of ordinary instructions, answers
# that are no answer, and the MMLU subset's accuracy
UTILITY_COLUMNS = [("instruction_refusal_rate", "InstrRef", False), ("non_answer_rate", "NoAnswer", False),
                   ("knowledge_accuracy", "MMLU", True)]


def columns_for(df: pd.DataFrame) -> list[tuple[str, str, bool]]:
    columns = REAL_COLUMNS if is_real(df) else COLUMNS
    return columns + (UTILITY_COLUMNS if has_utility(df) else [])
MISSING = "–"


def aggregate(df: pd.DataFrame, axis: str = "poison_ratio") -> pd.DataFrame:
    """Mean, std and seed count per (method, axis value, metric) over the fine-tuned rows (reference rows with
    no poison ratio are left out)."""
    ft = df[df["poison_ratio"].notna()]
    rows = []
    for (method, value), group in ft.groupby(["method", axis], sort=False):
        for metric, _, _ in columns_for(df):
            vals = pd.to_numeric(group[metric], errors="coerce").dropna() if metric in group else pd.Series([])
            rows.append({"method": method, axis: value, "metric": metric, "mean": vals.mean() if len(vals) else None,
                         "std": vals.std(ddof=1) if len(vals) > 1 else (0.0 if len(vals) else None),
                         "n": len(vals)})
    return pd.DataFrame(rows)


def _best(agg: pd.DataFrame, axis: str, columns: list[tuple[str, str, bool]]) -> set[tuple]:
    best = set()
    for (value, metric), group in agg.dropna(subset=["mean"]).groupby([axis, "metric"]):
        higher = dict((m, h) for m, _, h in columns)[metric]
        target = group["mean"].max() if higher else group["mean"].min()
        best |= {(m, value, metric) for m in group.loc[group["mean"] == target, "method"]}
    return best


def paper_table(df: pd.DataFrame, axis: str = "poison_ratio", methods: list[str] | None = None,
                fmt: str = "md", intervals: pd.DataFrame | None = None) -> str:
    """The table as Markdown (``fmt='md'``) or LaTeX (``'tex'``); real data: ``intervals`` (analysis.intervals.
    interval_table of ``df``, made here when not given)."""
    agg = aggregate(df, axis)
    values = sorted(agg[axis].dropna().unique().tolist()) if axis == "poison_ratio" else list(dict.fromkeys(agg[axis]))
    methods = methods or list(dict.fromkeys(agg["method"]))
    columns = columns_for(df)
    best = _best(agg, axis, columns)
    cell = {(r.method, getattr(r, axis), r.metric): r for r in agg.itertuples(index=False)}
    # real data: each mean with its 95% bootstrap interval over prompts and seeds (analysis/intervals.py)
    with_intervals = is_real(df) and axis == "poison_ratio"
    if with_intervals and intervals is None:
        intervals = interval_table(df)
    bounds = {(r["method"], r["poison_ratio"]): r for _, r in intervals.iterrows()} if with_intervals else None

    def text(method, value, metric) -> str:
        r = cell.get((method, value, metric))
        if r is None or r.mean is None or pd.isna(r.mean):
            return MISSING
        s = f"{r.mean:.1f} ± {r.std:.1f}" if r.n > 1 else f"{r.mean:.1f}"
        if bounds is not None and (method, value) in bounds and f"{metric}_lo" in bounds[(method, value)]:
            b = bounds[(method, value)]
            s = f"{r.mean:.1f} [{b[f'{metric}_lo']:.1f}, {b[f'{metric}_hi']:.1f}]"
        if (method, value, metric) in best:
            s = f"**{s}**" if fmt == "md" else f"\\textbf{{{s}}}"
        return s if fmt == "md" else s.replace("±", "$\\pm$")

    label = (lambda v: f"p = {v:g}") if axis == "poison_ratio" else str
    header = [f"{label(v)} {short}" for v in values for _, short, _ in columns]
    body = [[m] + [text(m, v, metric) for v in values for metric, _, _ in columns] for m in methods]
    if fmt == "md":
        lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    cols = "l" + "r" * len(header)
    groups = " & ".join(f"\\multicolumn{{{len(columns)}}}{{c}}{{{label(v)}}}" for v in values)
    subs = " & ".join(short for _ in values for _, short, _ in columns)
    lines = [f"\\begin{{tabular}}{{{cols}}}", "\\toprule", f" & {groups} \\\\", f"method & {subs} \\\\", "\\midrule"]
    lines += [" & ".join(r.replace("_", "\\_") if i == 0 else r for i, r in enumerate(row)) + " \\\\" for row in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_paper_tables(df: pd.DataFrame, out_dir: Path, stem: str, axis: str = "poison_ratio",
                       intervals: pd.DataFrame | None = None) -> None:
    """``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` under ``out_dir`` (real data: with ``intervals``, made once
    here when not given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    benign = ("OverRef = refusals of benign requests ↓ (mean over the benign benchmarks); HS and Ref are means "
              "over the harmful benchmarks" if is_real(df) else "Help = helpfulness ↑")
    spread = ("mean over seeds [95% bootstrap interval over prompts and seeds]" if is_real(df) and
              axis == "poison_ratio" else "mean ± std over seeds")
    utility = (", InstrRef = refusals of ordinary instructions ↓, NoAnswer = non-answers to them ↓, MMLU = "
               "multiple-choice accuracy ↑ (pact.evaluation.utility)" if has_utility(df) else "")
    note = (f"HS = Harmful Score ↓, Ref = refusal rate ↑, {benign}, FA = Fine-tune Accuracy ↑{utility}; "
            f"percent, {spread}; best mean per column in bold; – = missing.\n\n")
    if is_real(df) and axis == "poison_ratio" and intervals is None:
        intervals = interval_table(df)
    (out_dir / f"{stem}.md").write_text(note + paper_table(df, axis, fmt="md", intervals=intervals))
    (out_dir / f"{stem}.tex").write_text(paper_table(df, axis, fmt="tex", intervals=intervals))
    aggregate(df, axis).to_csv(out_dir / f"{stem}.csv", index=False, float_format="%.4g")
