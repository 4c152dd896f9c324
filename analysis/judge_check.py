"""Judges as instruments: each refusal judge's verdicts on answers whose label is known, before any of its numbers
are read. ``python -m analysis.judge_check [--root DIR] [--out DIR]`` (after ``make data``) judges the known refusals
and known compliant answers that conf/analysis.yaml ``judge_check`` names (files of the real data, read as a run
reads them) with every rule judge: GCG's keywords, Qi et al.'s keywords and the ``openers`` judge, whose markers come
from conf/data/real.yaml ``openers`` by its fixed rule. Writes ``judge_check.csv`` (one row per judge and answer
set: n, percent judged refusal / compliance / other) and ``judge_check.md`` (recall on the refusals, and the share
of compliant answers called compliant, per judge), default under outputs/report (``--out results``: the committed
results/, as ``make judge-check`` does).

``--experiment E`` checks the judges on a study's own answers instead (its run records under ``--runs``): an answer
to a harmful or benign request is a *learnt refusal* when it opens as one of the refusals the model was aligned on
and as none of its helpful answers (conf/analysis.yaml ``judge_check.learnt_refusal_words``); per model and answer
set, each judge's recall on the learnt refusals and the share of the other answers it calls refusals ->
``judge_check_<E>.{csv,md}``. Only these counts leave the store, never an answer."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from analysis.agreement import GENERATIONS
from analysis.provenance import recording
from analysis.report import DEFAULT_OUT
from pact.data.rows import read_jsonl
from pact.data.sources import check_sources, load_source
from pact.evaluation.judges import CLASSES, COMPLIANCE, JUDGES, REFUSAL, Judge, judge_for, markers_by_rule, opener
from pact.run.cli import fail, run_cli
from pact.run.config import CONF_DIR, compose_config
from pact.runtime.fileio import write_atomic
from pact.runtime.records import read_records

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


STUDY_SETS = ("harmful", "benign")  # the evaluation sets whose answers a refusal judge scores
STUDY_GROUP = ["method", "poison_ratio", "set", "judge"]  # seeds pooled


def learnt_openers(data_path: Path, words: int) -> frozenset[str]:
    """The openings (first ``words`` words, :func:`pact.evaluation.judges.opener`) of the refusals a model was aligned
    on (``align_refusals.jsonl`` of its data stage) that none of its helpful answers (``align_helpful.jsonl``) share."""
    refusals = read_jsonl(data_path / "align_refusals.jsonl", ("answer",))
    helpful = read_jsonl(data_path / "align_helpful.jsonl", ("answer",))
    shared = {opener(h["answer"], words) for h in helpful} | {""}
    return frozenset(opener(r["answer"], words) for r in refusals) - shared


def study_check(records: list[dict[str, Any]], words: int) -> pd.DataFrame:
    """Per model (method, p; seeds pooled), answer set and judge: the answers, how many are learnt refusals (their
    opening is one of :func:`learnt_openers`), the judge's recall on them and the percent of the other answers it
    calls refusals. Records whose data stage holds no alignment corpus (a model not aligned here) are refused."""
    counts: dict[tuple, dict[str, int]] = {}
    openers: dict[str, frozenset[str]] = {}
    for rec in records:
        data_path = Path(rec.get("data_path") or "")
        if not (data_path / "align_refusals.jsonl").is_file():
            raise ValueError(f"run record {rec['method']} p={rec['poison_ratio']} seed={rec['seed']}: its data stage "
                             f"({data_path}) holds no align_refusals.jsonl (only models aligned here are checked)")
        learnt = openers.setdefault(str(data_path), learnt_openers(data_path, words))
        for ans in read_jsonl(Path(rec["evaluation_path"]) / GENERATIONS, ("set", "response")):
            if ans["set"] not in STUDY_SETS:
                continue
            is_learnt = opener(ans["response"], words) in learnt
            for judge, verdict in ans["verdicts"].items():
                c = counts.setdefault((rec["method"], rec["poison_ratio"], ans["set"], judge),
                                      {"answers": 0, "learnt": 0, "learnt_hit": 0, "rest_refusal": 0})
                c["answers"] += 1
                c["learnt"] += is_learnt
                c["learnt_hit"] += is_learnt and verdict == REFUSAL
                c["rest_refusal"] += not is_learnt and verdict == REFUSAL
    rows = []
    for (method, p, set_, judge), c in counts.items():
        rest = c["answers"] - c["learnt"]
        rows.append({"method": method, "poison_ratio": p, "set": set_, "judge": judge, "answers": c["answers"],
                     "learnt_refusals": c["learnt"],
                     "recall_pct": 100 * c["learnt_hit"] / c["learnt"] if c["learnt"] else float("nan"),
                     "rest_called_refusal_pct": 100 * c["rest_refusal"] / rest if rest else float("nan")})
    df = pd.DataFrame(rows)
    return df.sort_values(["set", "poison_ratio", "method", "judge"], na_position="first", kind="stable")


def pct(value: float) -> str:
    """A percent with one decimal, or "–" where there is nothing to count (no answer of the kind)."""
    return "–" if pd.isna(value) else f"{value:.1f}"


def study_md(df: pd.DataFrame, experiment: str, words: int) -> str:
    """Per answer set, one line per model: answers, learnt refusals, and per judge its recall / the percent of the
    other answers it calls refusals."""
    judges = list(dict.fromkeys(df.judge))
    lines = [f"The judges on `{experiment}`'s own answers (analysis/judge_check.py, `--experiment {experiment}`). A "
             f"*learnt refusal* opens with the first {words} words of one of the refusals the model was aligned on "
             "and of none of its helpful answers (a label no judge's list decides). Per judge: recall on the learnt "
             "refusals / percent of the other answers it calls refusals (– where there are none). Seeds pooled. "
             "Only these counts leave the store, never an answer."]
    for set_, g in df.groupby("set", sort=False):
        lines += ["", f"**{set_} requests**", "",
                  "| model | p | answers | learnt refusals | " + " | ".join(judges) + " |",
                  "|---" * (4 + len(judges)) + "|"]
        for (method, p), m in g.groupby(["method", "poison_ratio"], sort=False, dropna=False):
            first = m.iloc[0]
            cells = [f"{pct(r.recall_pct)} / {pct(r.rest_called_refusal_pct)}" for r in
                     (m[m.judge == j].iloc[0] for j in judges)]
            lines.append(f"| {method} | {'' if pd.isna(p) else f'{p:g}'} | {first.answers} | "
                         f"{first.learnt_refusals} ({100 * first.learnt_refusals / first.answers:.1f}%) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.judge_check", description=__doc__)
    parser.add_argument("--root", help="the real data's folder (default: data.root, i.e. $PACT_DATA or data/real)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where judge_check.{{csv,md}} go (default: {DEFAULT_OUT})")
    parser.add_argument("--experiment", help="check the judges on this study's own answers instead (its run records)")
    parser.add_argument("--runs", default=os.environ.get("PACT_RUNS", "outputs/runs"),
                        help="the run records' folder (default: $PACT_RUNS or outputs/runs)")
    args = parser.parse_args(argv)

    def go() -> None:
        if args.experiment:
            records = read_records(args.runs, [args.experiment])
            if not records:
                fail(f"no run records of experiment {args.experiment!r} under {args.runs}")
            words = int(SETTINGS.learnt_refusal_words)
            df = study_check(records, words)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / f"judge_check_{args.experiment}.csv", df.to_csv(index=False, float_format="%.4g"))
            write_atomic(out / f"judge_check_{args.experiment}.md", study_md(df, args.experiment, words))
            print(study_md(df, args.experiment, words))
            return
        df, markers = judge_check(args.root)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "judge_check.csv", df.to_csv(index=False, float_format="%.4g"))
        write_atomic(out / "judge_check.md", summary_md(df, markers))
        print(summary_md(df, markers))

    with recording(args.out, "analysis.judge_check", argv):
        run_cli(go)


if __name__ == "__main__":
    main(sys.argv[1:])
