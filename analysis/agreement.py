"""How far the judges agree, from the per-answer verdicts the evaluate stage stores (written by the report).

Per evaluated model (one run record) and harmful benchmark (the toy world: its one harmful set): the Harmful Score
under each judge that ran, and per pair of judges the percent agreement and Cohen's kappa on the decision the
Harmful Score counts (harmful = the judge's ``compliance``). Judges disagree in the field's own reports, so every
report carries these numbers; in the toy world the oracle is one of the judges, so the keyword judge's error is a
number. A guard model that judged the same generations (``python -m experiments.judge``, pact/evaluation/guard.py) joins
the rule judges here. Kappa is undefined (left empty) when the chance agreement is 1: both judges give one class
throughout.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.tables import mean_std
from pact.data.rows import read_jsonl
from pact.evaluation.guard import generations_of
from pact.evaluation.judges import COMPLIANCE
from pact.runtime.records import IDENTITY
from pact.runtime.store import DONE

log = logging.getLogger("analysis.agreement")

GENERATIONS = "generations.jsonl"  # the evaluate artifact's judged answers (pact.run.pipeline.evaluate_stage)
COLUMNS = [*IDENTITY, "variant", "benchmark", "judge_a", "judge_b", "n", "hs_a", "hs_b", "agreement", "kappa"]


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two raters' binary decisions on the same items: (p_o - p_e) / (1 - p_e), with p_e the
    agreement expected from each rater's own rate; NaN when p_e = 1 (or no items)."""
    if len(a) != len(b):
        raise ValueError(f"the raters judged {len(a)} and {len(b)} items")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b)) / n
    rate_a, rate_b = sum(a) / n, sum(b) / n
    expected = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def pairwise(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (benchmark, judge pair, n, HS of each, percent agreement, kappa) of the judged answers to harmful
    requests of one evaluation (records of its ``generations.jsonl`` with ``set == "harmful"``)."""
    out = []
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for rec in answers:
        by_bench.setdefault(rec.get("benchmark") or rec["set"], []).append(rec)
    for bench, recs in by_bench.items():
        judges = list(recs[0]["verdicts"])
        harmful = {j: [r["verdicts"][j] == COMPLIANCE for r in recs] for j in judges}
        for a, b in itertools.combinations(judges, 2):
            same = sum(x == y for x, y in zip(harmful[a], harmful[b]))
            out.append({"benchmark": bench, "judge_a": a, "judge_b": b, "n": len(recs),
                        "hs_a": 100.0 * sum(harmful[a]) / len(recs), "hs_b": 100.0 * sum(harmful[b]) / len(recs),
                        "agreement": 100.0 * same / len(recs), "kappa": cohen_kappa(harmful[a], harmful[b])})
    return out


def collect(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run record x harmful benchmark x judge pair (:data:`COLUMNS`), read from each record's
    evaluation; records written before they named their evaluation (no ``evaluation_path``) are skipped."""
    rows, missing = [], 0
    for record in records:
        path = record.get("evaluation_path")
        if not path or not (Path(path) / GENERATIONS).is_file():
            missing += 1
            continue
        answers = read_jsonl(Path(path) / GENERATIONS, ("set", "response"))
        for name, verdicts in guard_verdicts(Path(path)).items():  # a guard's judge stage, if one ran
            for i, verdict in verdicts.items():
                answers[i]["verdicts"][name] = verdict
        answers = [r for r in answers if r["set"] == "harmful"]
        identity = {k: record.get(k) for k in (*IDENTITY, "variant")}
        rows += [{**identity, **row} for row in pairwise(answers)]
    if missing:
        log.info("judge agreement: %d record(s) without their evaluation in the store skipped", missing)
    return pd.DataFrame(rows, columns=COLUMNS)


def guard_verdicts(evaluation: Path) -> dict[str, dict[int, str]]:
    """Per guard that judged this evaluation's generations (pact.evaluation.guard's ``judge`` stage, in the same store):
    its verdict per row of ``generations.jsonl``. Two runs of one guard with other settings are told apart by key."""
    gen = generations_of(evaluation)
    out: dict[str, dict[int, str]] = {}
    if gen is None:
        return out
    for art in sorted((evaluation.parent.parent / "judge").glob(f"*/{DONE}")):
        judge_meta = json.loads((art.parent / "meta.json").read_text())
        if judge_meta["upstream"].get("generate") != gen.key:
            continue
        name = judge_meta["config"]["name"]
        name = name if name not in out else f"{name} [{art.parent.name}]"
        rows = read_jsonl(art.parent / "judgments.jsonl", ("index", "verdict"))
        out[name] = {int(r["index"]): r["verdict"] for r in rows}
    return out


def table(df: pd.DataFrame) -> str:
    """Markdown for one (experiment, model, task): rows (method, p), per benchmark and judge pair the HS under
    each judge, the percent agreement and kappa, each mean ± std over seeds."""
    out = []
    for (method, ratio), group in df.groupby(["method", "poison_ratio"], dropna=False, sort=False):
        row = {"method": method, "p": "–" if pd.isna(ratio) else f"{ratio:g}", "seeds": group["seed"].nunique()}
        for (bench, a, b), pair in group.groupby(["benchmark", "judge_a", "judge_b"], sort=False):
            tag = f"{bench}: {a} vs {b}"
            row[f"HS {a} ({bench})"] = mean_std(pair["hs_a"], 1)
            row[f"HS {b} ({bench})"] = mean_std(pair["hs_b"], 1)
            row[f"agree % ({tag})"] = mean_std(pair["agreement"], 1)
            row[f"κ ({tag})"] = mean_std(pair["kappa"], 2)
        out.append(row)
    frame = pd.DataFrame(out).fillna("–")
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
