"""Collect run records into ``summary.csv``, tables and figures: ``python -m analysis.report [--out DIR]``.

Reads only the run records (``runs_dir/<experiment>/*.json``) that ``experiments.run`` writes: regenerating
tables never retrains. Missing cells stay missing (shown as "–"), never zero.
"""

from __future__ import annotations

import argparse
import logging
import numbers
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import agreement
from analysis.figures import ablation_curve, hs_vs_fa, hs_vs_p, safety_utility, selectivity
from analysis.intervals import UTILITY, has_utility, interval_table, intervals_markdown
from analysis.provenance import recording
from analysis.tables import is_real, mean_std, write_paper_tables
from pact.run.cli import run_cli
from pact.runtime.fileio import write_atomic
from pact.runtime.records import IDENTITY, INTERNAL, read_records

log = logging.getLogger("analysis.report")

ID_COLUMNS = list(IDENTITY)
METRICS = ["harmful_score", "refusal_rate", "other_rate", "finetune_accuracy", "helpfulness"]
EXTRA_METRICS = ["harmful_score_keyword", "harmful_steps_rate", "benign_refusal_rate"]
UTILITY_METRICS = list(UTILITY)   # pact.evaluation.utility's measures, where the runs had utility=assistant
LABELS = {"harmful_score": "HS ↓", "refusal_rate": "Refusal ↑", "other_rate": "Other",
          "finetune_accuracy": "FA ↑", "helpfulness": "Helpful ↑", "harmful_score_keyword": "HS (keyword)",
          "harmful_steps_rate": "Steps", "benign_refusal_rate": "Benign refusal",
          "instruction_refusal_rate": "InstrRef ↓", "non_answer_rate": "NoAnswer ↓", "knowledge_accuracy": "MMLU ↑"}


DEFAULT_OUT = "outputs/report"  # a user's own runs never merge into the committed results/ unless asked
AGREEMENT_CSV = "judge_agreement.csv"
INTERVALS_NOTE = ("Percent, the mean over seeds and its 95% bootstrap interval over prompts and seeds "
                  "(analysis/intervals.py). Ref = refusal of the harmful benchmarks' requests (their mean), "
                  "OverRef = refusal of the safe look-alike requests, Gap = Ref - OverRef (selective refusal: high), "
                  "HS = Harmful Score, FA = Fine-tune Accuracy. `base` = the instruct model before alignment, "
                  "`aligned` = the reference every fine-tune starts from.\n\n")
AGREEMENT_NOTE = ("Judge agreement on the answers to harmful requests (analysis/agreement.py): per benchmark, the "
                  "Harmful Score under each judge, the percent of answers both judges call harmful or both call not "
                  "harmful, and Cohen's kappa of that decision (– where undefined: both judges give one class "
                  "throughout); mean ± std over seeds (kappa: over the seeds where it is defined). In the toy "
                  "world the oracle is exact, so its pairs measure the other judge's error.\n\n")


def label(metric: str) -> str:
    """A metric's column title: ``harmful_score.strongreject`` -> ``HS.strongreject``, ``harmful_score_keyword``
    -> ``HS (keyword)``."""
    if metric in LABELS:
        return LABELS[metric]
    name, _, bench = metric.partition(".")
    if name.startswith("harmful_score_"):
        name = f"HS ({name.removeprefix('harmful_score_')})"
    else:
        name = {"harmful_score": "HS", "benign_refusal_rate": "Benign refusal", "refusal_rate": "Refusal",
                "instruction_refusal_rate": "InstrRef", "knowledge_accuracy": "MMLU"}.get(name, name)
    return f"{name}.{bench}" if bench else name


def collect(runs_dir: str | os.PathLike, experiments: list[str] | None = None) -> pd.DataFrame:
    """One row per run record; columns: the identity, then the metrics (percent), then everything else."""
    rows = [{k: v for k, v in record.items() if k not in INTERNAL} for record in read_records(runs_dir, experiments)]
    if not rows:
        raise FileNotFoundError(f"no run records under {runs_dir}" +
                                (f" for experiment(s) {experiments}" if experiments else ""))
    df = label_variants(pd.DataFrame(rows))
    for col in ID_COLUMNS + METRICS:
        if col not in df:
            df[col] = pd.NA
    rest = [c for c in df.columns if c not in ID_COLUMNS + METRICS]
    df = df[ID_COLUMNS + METRICS + rest]
    return sort_rows(df)


def label_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Ablation runs: the variant becomes part of the method's label (``pact [method.lambda_kl=2.0]``)."""
    if "variant" in df:
        variant = df["variant"].fillna("")
        df["method"] = df["method"].where(variant == "", df["method"] + " [" + variant + "]")
    return df


def judge_agreement(runs_dir: str | os.PathLike, out: Path, experiments: list[str] | None,
                    from_records: bool, replace: bool = False) -> pd.DataFrame:
    """The judge-agreement rows (:mod:`analysis.agreement`) of the run records, written to ``judge_agreement.csv``
    beside ``summary.csv`` (keeping, as there, the rows without a record here: see :func:`without_rows_of`);
    without records (``from_records`` false), the rows of that file."""
    path = out / AGREEMENT_CSV
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=agreement.COLUMNS)
    if not from_records:
        return old if not experiments else old[old["experiment"].isin(experiments)]
    records = read_records(runs_dir, experiments)
    df = label_variants(agreement.collect(records))
    kept = without_rows_of(old, df, [*ID_COLUMNS, "benchmark", "judge_a", "judge_b"], replace)
    parts = [part for part in (df, kept) if len(part)]
    df = pd.concat(parts, ignore_index=True) if parts else df
    if len(df):
        df = sort_rows(df)
        write_atomic(path, df.to_csv(index=False, float_format="%.6g"))
    return df


def numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns whose every value is a number or missing (a metric no run of a study has: None in its
    records) as floats, so they are written in the same number format as the rest of the file."""
    df = df.copy()
    for col in df.select_dtypes(include="object").columns:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.notna().sum() == df[col].notna().sum():
            df[col] = values.astype(float)
    return df


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by experiment, model, task; reference rows first, then methods in natural order, p, seed."""
    df = df.copy()
    df["is_reference"] = df["poison_ratio"].isna()
    df = df.sort_values(["experiment", "model", "task", "is_reference", "method", "poison_ratio", "seed"],
                        ascending=[True, True, True, False, True, True, True], na_position="first",
                        key=lambda col: col.map(natural_key) if col.name == "method" else col)
    return df.drop(columns="is_reference").reset_index(drop=True)


def without_rows_of(old: pd.DataFrame, new: pd.DataFrame, columns: list[str], replace: bool) -> pd.DataFrame:
    """The rows of ``old`` whose ``columns`` match no row of ``new`` (with ``replace``: none of the experiments in
    ``new``), so that writing ``new`` over a file loses no row it does not redo."""
    if replace:
        return old[~old["experiment"].isin(new["experiment"].unique())]

    def text(value: Any) -> str:  # NaN-safe, and a seed read back as 2.0 from a CSV with gaps is still 2
        if pd.isna(value):
            return ""
        return f"{value:g}" if isinstance(value, numbers.Real) else str(value)

    def ids(df: pd.DataFrame) -> list[tuple[str, ...]]:
        return [tuple(text(v) for v in row) for row in df[columns].itertuples(index=False)]

    redone = set(ids(new))
    return old[[key not in redone for key in ids(old)]]


def natural_key(label: str) -> str:
    """Sort key that orders numbers inside labels by value ("top_k=10" before "top_k=100")."""
    return re.sub(r"\d+(\.\d+)?", lambda m: f"{float(m.group()):020.6f}", str(label))


def method_table(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows (method, p) with mean ± std over seeds for each metric; reference models first."""
    out = []
    for (method, ratio), group in df.groupby(["method", "poison_ratio"], dropna=False, sort=False):
        row = {"method": method, "p": "–" if pd.isna(ratio) else f"{ratio:g}", "seeds": group["seed"].nunique()}
        row.update({label(m): mean_std(group[m]) if m in group else "–" for m in metrics})
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def swept_key(ft: pd.DataFrame) -> str | None:
    """The override a one-axis numeric sweep varies (every fine-tuned run's variant is ``key=<number>`` with the
    same key, e.g. ``method.lambda_kl``), else None."""
    variants = ft["variant"].fillna("") if "variant" in ft else pd.Series([], dtype=str)
    parts = variants.str.split("=", n=1)
    if variants.empty or (parts.str.len() != 2).any() or variants.str.contains(",").any():
        return None
    keys = set(parts.str[0])
    if len(keys) != 1 or pd.to_numeric(parts.str[1], errors="coerce").isna().any():
        return None
    return keys.pop()


def load_summary(path: str | os.PathLike, experiments: list[str] | None = None) -> pd.DataFrame:
    """A ``summary.csv`` written by :func:`report` (its method labels already carry the variants)."""
    df = pd.read_csv(path)
    if experiments:
        df = df[df["experiment"].isin(experiments)]
    if df.empty:
        raise FileNotFoundError(f"no rows in {path}" + (f" for experiment(s) {experiments}" if experiments else ""))
    df["variant"] = df["variant"].fillna("") if "variant" in df else ""
    return df.reset_index(drop=True)


def report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, experiments: list[str] | None = None,
           summary: str | os.PathLike | None = None, replace: bool = False) -> pd.DataFrame:
    """Write ``summary.csv``, per (experiment, model, task) a detailed Markdown table and a paper-style table
    (Markdown, LaTeX, CSV), and the figures, under ``out_dir``. A run record replaces the row of an existing
    ``summary.csv`` with its identity; the rows without a record here stay (the committed SmolLM2 study after a
    toy-only `make reproduce`, the seeds a partial rerun did not reach), unless ``replace`` drops those of the
    experiments that have records (a study whose sweep changed). With
    ``summary``, the rows come from that ``summary.csv`` instead of the run records (a fresh clone has the committed
    one but no records), and it is not rewritten."""
    out = Path(out_dir)
    if summary is None:
        df = collect(runs_dir, experiments)
        n_records = len(df)
        if (out / "summary.csv").is_file():  # keep the rows that have no record here
            kept = without_rows_of(pd.read_csv(out / "summary.csv"), df, ID_COLUMNS, replace)
            if len(kept):
                counts = kept.groupby("experiment").size()
                log.info("keeping %d rows of %s without a run record under %s: %s%s", len(kept), out / "summary.csv",
                         runs_dir, ", ".join(f"{exp} {n}" for exp, n in counts.items()),
                         "" if replace else " (--replace drops those of the experiments that have records)")
                # the file's columns keep their order (new ones at the end) and their number format, so that
                # adding one study's rows leaves every other line of the file as it was
                df = sort_rows(numeric(pd.concat([kept, df], ignore_index=True)))
        # 6 significant digits: percentages of a few hundred prompts (e.g. 315/320 = 98.4375) survive exactly
        write_atomic(out / "summary.csv", df.to_csv(index=False, float_format="%.6g"))
    else:
        df = load_summary(summary, experiments)
    agree = judge_agreement(runs_dir, out, experiments, from_records=summary is None, replace=replace)
    for (exp, model, task), group in df.groupby(["experiment", "model", "task"], sort=True):
        title = f"# {exp}: {model}, task {task}\n\n"
        pairs = agree[(agree["experiment"] == exp) & (agree["model"] == model) & (agree["task"] == task)]
        if len(pairs):
            write_atomic(out / "tables" / f"{exp}_{model}_{task}_judges.md", title + AGREEMENT_NOTE +
                         agreement.table(pairs))
        if is_real(group):
            # the toy world's columns (oracle, helpfulness) are empty; the identity columns stay (a study of
            # reference models alone has no poison ratio)
            group = group.loc[:, group.notna().any() | group.columns.isin(ID_COLUMNS)]
            judge = "/".join(sorted(group["judge"].dropna().unique())) if "judge" in group else "?"
            metrics = ["harmful_score", "refusal_rate", "benign_refusal_rate", "finetune_accuracy"]
            metrics += [c for c in group.columns if c.startswith(("harmful_score.", "benign_refusal_rate."))]
            metrics += [c for c in group.columns if c.startswith("harmful_score_") and "." not in c]
            metrics += [m for m in UTILITY_METRICS if m in group]
            note = (f"Percent, mean ± std over seeds. HS = Harmful Score ({judge} judge) and Refusal, each the mean "
                    "over the harmful benchmarks (each benchmark weighs the same; `HS.<benchmark>` columns per "
                    "benchmark, `HS (<judge>)` by every judge that ran); Benign refusal = over-refusal on the benign "
                    "benchmarks; FA = Fine-tune Accuracy on the task's test set. `base`/`aligned` rows are the "
                    "reference models before fine-tuning.\n\n")
        else:
            metrics = METRICS + [m for m in EXTRA_METRICS if m in group]
            metrics += [m for m in UTILITY_METRICS if m in group and group[m].notna().any()]
            note = ("Percent, mean ± std over seeds. HS = Harmful Score (oracle judge) on held-out harmful prompts; "
                    "Refusal/Other = the oracle's other two classes; FA = Fine-tune Accuracy on the task's test set; "
                    "Helpful = helpful answers to held-out benign look-alike requests. `base`/`aligned` rows are the "
                    "reference models before fine-tuning.\n\n")
        table = method_table(group, metrics)
        write_atomic(out / "tables" / f"{exp}_{model}_{task}.md", title + note + to_markdown(table))
        # 95% intervals, once per study: every rate of a real-data study; the utility measures (and the harmful
        # refusal they are set against) of a toy-prompt study that has them
        bounds = (interval_table(group) if is_real(group) else
                  interval_table(group, ("refusal_rate", *UTILITY_METRICS)) if has_utility(group) else None)
        if group["poison_ratio"].notna().any():  # fine-tuned rows (a study of reference models alone has none)
            write_paper_tables(group, out / "tables", f"{exp}_{model}_{task}_paper", intervals=bounds)
        if bounds is not None:  # selectivity: harmful refused vs safe look-alikes refused, with intervals
            stem = f"{exp}_{model}_{task}"
            write_atomic(out / "tables" / f"{stem}_intervals.md", title + INTERVALS_NOTE + intervals_markdown(bounds))
            write_atomic(out / "tables" / f"{stem}_intervals.csv", bounds.to_csv(index=False, float_format="%.4g"))
            if {"refusal_rate_lo", "benign_refusal_rate_lo"} <= set(bounds.columns):
                selectivity(bounds, out / "figures" / f"{stem}_selectivity",
                            f"{exp}: {model}, {task} (95% bootstrap intervals)")
            if {"refusal_rate_lo", *(f"{m}_lo" for m in UTILITY_METRICS)} <= set(bounds.columns):
                safety_utility(bounds, out / "figures" / f"{stem}_safety_utility",
                               f"{exp}: {model}, {task} (95% bootstrap intervals)")
        if group["poison_ratio"].dropna().nunique() > 1:
            hs_vs_p(group, out / "figures" / f"{exp}_{model}_{task}_hs_vs_p",
                    f"{exp}: {model}, {task} (mean ± std over seeds)")
    for (exp, model), group in df.groupby(["experiment", "model"], sort=True):
        ft = group[group["poison_ratio"].notna()]
        p_label = "p = " + "/".join(f"{p:g}" for p in sorted(ft["poison_ratio"].unique()))
        if ft["task"].nunique() > 1:  # a cross-task study: columns = tasks, and the trade-off per task
            write_paper_tables(group, out / "tables", f"{exp}_{model}_paper", axis="task")
            hs_vs_fa(group, out / "figures" / f"{exp}_{model}_hs_vs_fa", f"{exp}: {model}, {p_label}")
        key = swept_key(ft)
        if key is not None:
            for task, tgroup in group.groupby("task"):
                ablation_curve(tgroup, key, out / "figures" / f"{exp}_{model}_{task}_ablation",
                               f"{exp}: {model}, {task}, {p_label} (mean ± std over seeds)")
    log.info("%d rows (%s); tables and figures under %s", len(df),
             f"from {summary}" if summary else f"{n_records} from the run records under {runs_dir}", out)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.environ.get("PACT_RUNS", "outputs/runs"),
                        help="run records directory (default: outputs/runs)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where summary.csv, tables/ and figures/ go (default: "
                        f"{DEFAULT_OUT}; the committed results/ only when asked: --out results, as make figures does)")
    parser.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    parser.add_argument("--replace", action="store_true",
                        help="drop the summary.csv rows of the experiments that have records here, also those no "
                             "record redoes (default: keep them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = Path(args.out) / "summary.csv"

    def build() -> pd.DataFrame:
        if not any(Path(args.runs).glob("*/*.json")) and summary.is_file():
            print(f"no run records under {args.runs}: regenerating tables and figures from {summary}")
            return report(args.runs, args.out, args.experiment, summary=summary)
        if not Path(args.runs).is_dir():
            raise FileNotFoundError(f"--runs {args.runs}: no such directory, and no {summary} to report from "
                                    "(run `python -m experiments.run` first)")
        return report(args.runs, args.out, args.experiment, replace=args.replace)

    with recording(args.out, "analysis.report", argv):
        df = run_cli(build)
    print(f"summary: {Path(args.out) / 'summary.csv'} ({len(df)} rows)")


if __name__ == "__main__":
    main()
