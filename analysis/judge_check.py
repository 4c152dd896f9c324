"""Judges as instruments: each refusal judge's verdicts on answers whose label is known, before any of its numbers
are read. ``python -m analysis.judge_check [--root DIR] [--out DIR]`` (after ``make data``) judges the known refusals
and known compliant answers that conf/analysis.yaml ``judge_check`` names (files of the real data, read as a run
reads them) with every rule judge: GCG's keywords, Qi et al.'s keywords and the ``openers`` judge, whose markers come
from conf/data/real.yaml ``openers`` by its fixed rule. Writes ``judge_check.csv`` (one row per judge and answer
set: n, percent judged refusal / compliance / other) and ``judge_check.md`` (recall on the refusals, and the share
of compliant answers called compliant, per judge), default under outputs/report (``--out results``: the committed
results/, as ``make judge-check`` does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.report import DEFAULT_OUT
from pact.cli import run_cli
from pact.config import CONF_DIR, compose_config
from pact.fileio import write_atomic
from pact.judges import CLASSES, COMPLIANCE, JUDGES, REFUSAL, Judge, judge_for, markers_by_rule
from pact.sources import check_sources, load_source

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").judge_check


def rule_judges(dcfg) -> tuple[list[Judge], list[str]]:
    """Every rule judge that reads no toy field, ready to judge (the openers judge with its markers from
    ``dcfg.openers``, as the data stage makes them), and those markers."""
    markers = markers_by_rule(dcfg.openers, load_source(dcfg, dcfg.openers.source))
    return [judge_for(name, markers) for name, j in JUDGES.items() if not j.toy_only], markers["markers"]


def judge_check(root: str | None = None, overrides: list[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """(one row per judge and known-label answer set, the openers judge's markers)."""
    dcfg = compose_config(["data=real", *([f"data.root={root}"] if root else []), *overrides], check=False).data
    sets = [(name, field, REFUSAL) for name, field in SETTINGS.refusal.items()]
    sets += [(name, field, COMPLIANCE) for name, field in SETTINGS.compliance.items()]
    check_sources(dcfg, [*{s for s, _, _ in sets}, dcfg.openers.source])
    judges, markers = rule_judges(dcfg)
    rows = []
    for name, field, label in sets:
        answers = [r[field] for r in load_source(dcfg, name) if r.get(field) and r.get("poison", True)]
        answers = list(dict.fromkeys(answers))  # distinct answers: a repeated one counts once
        for judge in judges:
            verdicts = judge.judge([{}] * len(answers), answers)
            rows.append({"judge": judge.name, "answers": name, "label": label, "n": len(answers),
                         **{f"{c}_pct": 100 * verdicts.count(c) / len(answers) for c in CLASSES}})
    return pd.DataFrame(rows), markers


def summary_md(df: pd.DataFrame, markers: list[str]) -> str:
    """Per judge: percent of each known-refusal set called refusal (recall), and of each known-compliance set
    called compliance."""
    cols = [(r.answers, r.label) for r in df[["answers", "label"]].drop_duplicates().itertuples()]
    head = "| judge | " + " | ".join(f"{a} ({'refusal' if lab == REFUSAL else 'compliant'}, n = "
                                      f"{int(df[df.answers == a].n.iloc[0])})" for a, lab in cols) + " |"
    lines = ["Percent of each answer set the judge puts in the set's own class: recall on known refusals, and "
             "compliant answers called compliant (analysis/judge_check.py; conf/analysis.yaml `judge_check`). "
             f"The openers judge's markers: {', '.join(repr(m) for m in markers)}.", "", head,
             "|---" * (1 + len(cols)) + "|"]
    for judge, g in df.groupby("judge", sort=False):
        cells = [g[(g.answers == a)][f"{lab}_pct"].iloc[0] for a, lab in cols]
        lines.append(f"| {judge} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.judge_check", description=__doc__)
    parser.add_argument("--root", help="the real data's folder (default: data.root, i.e. $PACT_DATA or data/real)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where judge_check.{{csv,md}} go (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    def go() -> None:
        df, markers = judge_check(args.root)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "judge_check.csv", df.to_csv(index=False, float_format="%.4g"))
        write_atomic(out / "judge_check.md", summary_md(df, markers))
        print(summary_md(df, markers))

    run_cli(go)


if __name__ == "__main__":
    main(sys.argv[1:])
