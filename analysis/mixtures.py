"""The official fine-tuning mixtures against ours, cell by cell: the rows of a study on the official files
(``data=pact_official``) beside the rows of the same study on our mixture builder (``data=real_git``), for every
(method, p, seed) the second study ran, plus the reference models of both (the same alignment corpus and seed, so
the same numbers when the aligned models agree). Read from ``summary.csv``; written as Markdown and CSV.

    python -m analysis.mixtures --official smollm2_real --ours smollm2_real_ours --out results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.provenance import recording
from analysis.report import DEFAULT_OUT, load_summary, to_markdown
from analysis.tables import REAL_COLUMNS
from pact.runtime.fileio import write_atomic

REFERENCES = ("base", "aligned")   # rows without a poison ratio: the models before fine-tuning
BENCH_PREFIX = "harmful_score."


def columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, label) of the compared metrics: the real-data paper table's HS and refusal, HS per harmful
    benchmark, then its over-refusal and accuracy."""
    main = [(metric, label) for metric, label, _ in REAL_COLUMNS]
    benches = sorted(c for c in df.columns if c.startswith(BENCH_PREFIX) and df[c].notna().any())
    return [*main[:2], *((c, f"HS {c[len(BENCH_PREFIX):]}") for c in benches), *main[2:]]


def cell_key(row: pd.Series) -> tuple[str, str, int]:
    ratio = "–" if pd.isna(row["poison_ratio"]) else f"{float(row['poison_ratio']):g}"
    return str(row["method"]), ratio, int(row["seed"])


def compare_mixtures(df: pd.DataFrame, official: str, ours: str) -> pd.DataFrame:
    """One row per (cell, mixture): every fine-tuned cell of ``ours`` and the same cell of ``official``, the
    reference models first; a cell the official study lacks is an error naming it."""
    off = {cell_key(r): r for _, r in df[df["experiment"] == official].iterrows()}
    mine = df[df["experiment"] == ours]
    if mine.empty:
        raise ValueError(f"no rows of experiment {ours!r} (run it first)")
    cols = columns(df[df["experiment"].isin([official, ours])])
    order = sorted(mine.iterrows(), key=lambda x: (x[1]["method"] not in REFERENCES, *map(str, cell_key(x[1]))))
    out = []
    for _, row in order:
        key = cell_key(row)
        if key not in off:
            raise ValueError(f"experiment {official!r} has no row for method={key[0]} p={key[1]} seed={key[2]} "
                             f"that {ours!r} has")
        for name, r in ((f"official ({official})", off[key]), (f"ours ({ours})", row)):
            out.append({"method": key[0], "p": key[1], "seed": key[2], "mixture": name,
                        **{label: "–" if pd.isna(r.get(c)) else f"{float(r[c]):.1f}" for c, label in cols}})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.mixtures", description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="the study on the official files (experiment name)")
    parser.add_argument("--ours", required=True, help="the same study on our mixture builder (experiment name)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder with summary.csv (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = compare_mixtures(load_summary(out / "summary.csv", [args.official, args.ours]), args.official, args.ours)
    stem = out / "tables" / f"{args.official}_official_vs_ours"
    stem.parent.mkdir(parents=True, exist_ok=True)
    with recording(out, "analysis.mixtures", argv):
        write_atomic(stem.with_suffix(".csv"), table.to_csv(index=False))
        write_atomic(stem.with_suffix(".md"),
                     f"The official mixtures ({args.official}) against ours ({args.ours}), cell by cell; percent, one "
                     "seed per cell; HS = Harmful Score (primary judge), Ref = refusal rate, OverRef = refusals of "
                     "benign requests, FA = Fine-tune Accuracy.\n\n" + to_markdown(table))
    print(f"wrote {stem}.md and .csv ({len(table)} rows)")


if __name__ == "__main__":
    main()
