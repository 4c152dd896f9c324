"""The alignment corpus of the SmolLM2 real-data study, chosen by a rule fixed before the candidates ran: per
candidate corpus (conf/corpus/), the aligned model's refusal of harmful requests and of safe look-alikes with 95%
bootstrap intervals (analysis/intervals.py), whether it meets the bars, and the corpus the rule picks
(conf/analysis.yaml ``corpus``). Read from ``summary.csv`` (``python -m experiments.prepare experiment=smollm2_real
corpus=<c> experiment_name=<its experiment> --evaluate`` per candidate: ``make smollm2-real-corpus``).

    python -m analysis.corpus --out results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.intervals import GAP, cell_text, interval_table
from analysis.provenance import recording
from analysis.report import DEFAULT_OUT, load_summary
from pact.run.config import CONF_DIR
from pact.runtime.fileio import write_atomic

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").corpus
STEM = "smollm2_real_corpus"


def tradeoff(df: pd.DataFrame) -> pd.DataFrame:
    """One row per corpus (the candidates in the rule's order, then the ones measured beside them): its aligned
    model's rates with intervals and whether it meets both bars; the instruct model before alignment last."""
    rows = []
    named = {**SETTINGS.experiments, **SETTINGS.beside}
    for corpus, exp in named.items():
        group = df[df["experiment"] == exp]
        if group.empty:
            raise ValueError(f"no rows of experiment {exp} (corpus {corpus}) in summary.csv: run make "
                             "smollm2-real-corpus first")
        table = interval_table(group.dropna(axis=1, how="all")).set_index("method")
        aligned = table.loc["aligned"]
        rows.append({"corpus": corpus, "candidate": corpus in SETTINGS.experiments, **aligned.to_dict(),
                     "meets_bars": bool(aligned["refusal_rate"] >= SETTINGS.refusal_min and
                                        aligned["benign_refusal_rate"] <= SETTINGS.over_refusal_max)})
    base = interval_table(df[df["experiment"] == named[next(iter(named))]].dropna(axis=1, how="all"))
    rows.append({"corpus": "(instruct model, before alignment)", "candidate": False,
                 **base.set_index("method").loc["base"].to_dict(), "meets_bars": None})
    return pd.DataFrame(rows).drop(columns=["poison_ratio", "seeds"], errors="ignore")


def pick(table: pd.DataFrame) -> str:
    """The rule: the first candidate meeting both bars, else the one with the largest refusal gap (the earlier on
    a tie)."""
    candidates = table[table["candidate"].astype(bool)]
    meeting = candidates[candidates["meets_bars"].astype(bool)]
    if len(meeting):
        return str(meeting.iloc[0]["corpus"])
    return str(candidates.loc[candidates[GAP].idxmax(), "corpus"])  # idxmax keeps the first of equal maxima


def markdown(table: pd.DataFrame, chosen: str) -> str:
    head = ("# SmolLM2-135M's alignment corpus: refusal of harmful requests against refusal of safe look-alikes\n\n"
            f"The aligned model after each corpus (conf/corpus/), percent with 95% bootstrap intervals over prompts "
            f"(analysis/intervals.py): Ref = refusal of the study's harmful benchmarks (their mean), OverRef = "
            f"refusal of XSTest's safe prompts, Gap = Ref - OverRef, FA = SST-2 accuracy before fine-tuning. Bars: "
            f"Ref >= {SETTINGS.refusal_min:g}, OverRef <= {SETTINGS.over_refusal_max:g}. Rule (fixed before the "
            "candidates ran): the first candidate meeting both bars, else the largest gap. "
            f"**Picked: {chosen}.**\n\n")
    lines = ["| corpus | candidate | Ref ↑ | OverRef ↓ | Gap ↑ | FA | both bars |", "|---" * 7 + "|"]
    for _, r in table.iterrows():
        bars = "–" if r["meets_bars"] is None or pd.isna(r["meets_bars"]) else ("yes" if r["meets_bars"] else "no")
        lines.append(f"| {r['corpus']} | {'yes' if r['candidate'] else 'no'} | {cell_text(r, 'refusal_rate')} | "
                     f"{cell_text(r, 'benign_refusal_rate')} | {cell_text(r, GAP)} | "
                     f"{cell_text(r, 'finetune_accuracy')} | {bars} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", help="summary.csv to read (default: OUT/summary.csv)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where smollm2_real_corpus.{md,csv} go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = tradeoff(load_summary(args.summary or out / "summary.csv"))
    chosen = pick(table)
    with recording(out, "analysis.corpus", argv):
        write_atomic(out / f"{STEM}.md", markdown(table, chosen))
        write_atomic(out / f"{STEM}.csv", table.to_csv(index=False, float_format="%.4g"))
    print(f"{out / STEM}.md: picked {chosen}")


if __name__ == "__main__":
    main()
