"""The SmolLM2 study on real requests (conf/experiment/smollm2_real.yaml, `make smollm2-real`): its config, its stop
on missing data, and the analysis pieces it adds (real-data token-confidence rows, step-0 rows by model and task)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import token_confidence as TC
from experiments import pact_step0
from pact.run.config import compose_config, validate

ROOT = Path(__file__).resolve().parent.parent


def test_the_study_composes_with_the_official_mixtures_and_its_benchmarks():
    cfg = validate(compose_config(["experiment=smollm2_real", "hydra.mode=RUN", "poison.ratio=0.05"]))
    assert cfg.data.mixture[cfg.task.name]["0.05"] == "pact_sst2_p005"
    assert list(cfg.data.harmful_eval) == ["harmbench", "strongreject"]
    assert list(cfg.data.benign_eval) == ["xstest_safe"]
    # at least 100 prompts per harmful benchmark, every XSTest safe prompt, and SST-2 rows enough for a 95% interval
    # of accuracy under +-4 points at any accuracy (the normal approximation at 50%)
    assert all(cfg.data.benchmarks[b].limit >= 100 for b in cfg.data.harmful_eval)
    assert not cfg.data.benchmarks.xstest_safe.get("limit")
    assert 1.96 * (0.25 / (cfg.task.test_rows or 872)) ** 0.5 < 0.04
    assert cfg.eval.dtype == "bfloat16" and cfg.model.dtype == "float32"   # the answers only
    # the corpus: the experiment's default (conf/corpus/), one override away from every candidate
    for corpus in ("lookalike_0", "lookalike_20", "lookalike_40"):
        other = compose_config(["experiment=smollm2_real", f"corpus={corpus}"])
        sources = [s.source for part in ("refusals", "helpful") for s in other.data.align_corpus[part]]
        assert sources[0] == "safety_only" and ("phtest_mistral" in sources) == (corpus != "lookalike_0")
        rows = sum(int(s.limit) for part in ("refusals", "helpful") for s in other.data.align_corpus[part])
        assert rows == cfg.model.align_train.max_steps * cfg.model.align_train.batch_size * \
            cfg.model.align_train.grad_accum == 1440  # one pass, as many rows in every corpus
    # p exact at every ratio of the sweep: round(p * n) = p * n
    n = int(cfg.finetune.n)
    for p in (0.0, 0.05, 0.1):
        assert abs(p * n - round(p * n)) < 1e-9


def test_missing_data_stops_the_study_in_seconds_naming_the_files(tmp_path):
    """`make smollm2-real`'s first command, before `make data`: one line with the files and the fetch command,
    exit 2, before any model loads."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "experiments.prepare", "experiment=smollm2_real", "method=pact_lora",
                           "--evaluate", f"data.root={tmp_path / 'nothing'}", f"store_dir={tmp_path / 'store'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "missing" in lines[0] and "alpaca_asft_1k.json" in lines[0] and "pact_sst2_p005.json" in lines[0]
    assert "python -m experiments.fetch_data" in lines[0]
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("model.safetensors"))
    assert time.time() - start < 60


def test_real_data_curves_teacher_force_the_aligned_models_unanimous_refusals(tmp_path):
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    recs = [{"set": "harmful", "prompt": "a", "response": "No, sorry.", "verdicts": {"k": "refusal", "q": "refusal"}},
            {"set": "harmful", "prompt": "b", "response": "Sure.", "verdicts": {"k": "compliance", "q": "compliance"}},
            {"set": "harmful", "prompt": "c", "response": "I can't.", "verdicts": {"k": "other", "q": "refusal"}},
            {"set": "benign", "prompt": "d", "response": "No.", "verdicts": {"k": "refusal", "q": "refusal"}},
            {"set": "task", "prompt": "e", "response": "positive", "label": "positive"},
            {"set": "harmful", "prompt": "f", "response": "I won't.", "verdicts": {"k": "refusal", "q": "refusal"}}]
    (evaluation / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows, where = TC.refusal_rows({"evaluation_path": str(evaluation), "data_path": "x"})
    assert rows == [{"prompt": "a", "refusal": "No, sorry."}, {"prompt": "f", "refusal": "I won't."}]
    assert where == str(evaluation / "generations.jsonl")
    assert TC.refusal_rows({"evaluation_path": str(evaluation)}, n_prompts=1)[0] == rows[:1]
    (evaluation / "generations.jsonl").write_text(json.dumps(recs[1]) + "\n")
    with pytest.raises(SystemExit):
        TC.refusal_rows({"evaluation_path": str(evaluation)})


def test_step0_rows_replace_only_the_same_model_and_task(tmp_path):
    out = tmp_path / "step0.csv"
    row = {"rows": "all", "n_rows": 1, "kl_gate_on": 1.0}
    pact_step0.write(pd.DataFrame([{"model": "m", "task": "sentiment", **row},
                                   {"model": "toy", "task": "sentiment", **row}]), out)
    pact_step0.write(pd.DataFrame([{"model": "m", "task": "sst2", **row, "kl_gate_on": 2.0}]), out)
    pact_step0.write(pd.DataFrame([{"model": "m", "task": "sst2", **row, "kl_gate_on": 3.0}]), out)
    got = pd.read_csv(out)
    assert list(zip(got["model"], got["task"], got["kl_gate_on"])) == [("m", "sentiment", 1.0), ("m", "sst2", 3.0),
                                                                       ("toy", "sentiment", 1.0)]
    # the same measurements written in another order give the same bytes (a fresh clone leaves git status clean)
    other = tmp_path / "other.csv"
    pact_step0.write(pd.DataFrame([{"model": "m", "task": "sst2", **row, "kl_gate_on": 3.0}]), other)
    pact_step0.write(pd.DataFrame([{"model": "toy", "task": "sentiment", **row}]), other)
    pact_step0.write(pd.DataFrame([{"model": "m", "task": "sentiment", **row}]), other)
    assert other.read_bytes() == out.read_bytes()
