"""Micro end-to-end runs of the toy world through the real stages (seconds, not minutes)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import ID_COLUMNS, METRICS, report
from experiments.run import run
from tests.conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]


def test_micro_run_writes_records_and_report_and_is_cached(micro, tmp_path):
    cfg = micro("poison.ratio=0.1", "seed=0")
    t0 = time.time()
    metrics = run(cfg)
    first = time.time() - t0
    assert 0 <= metrics["harmful_score"] <= 100 and metrics["n_harmful"] == 24
    records = sorted((tmp_path / "runs" / "default").glob("*.json"))
    assert [p.name.split("-")[1] for p in records] == ["aligned", "base", "sft"]
    store = tmp_path / "store"
    built = {s: sorted(p.name for p in (store / s).iterdir()) for s in ("world", "base", "align", "finetune")}
    t0 = time.time()
    again = run(cfg)
    assert again == metrics
    assert {s: sorted(p.name for p in (store / s).iterdir()) for s in built} == built  # nothing rebuilt
    assert time.time() - t0 < first
    df = report(tmp_path / "runs", tmp_path / "report")
    assert list(df.columns[: len(ID_COLUMNS + METRICS)]) == ID_COLUMNS + METRICS
    assert set(df["method"]) == {"base", "aligned", "sft"}
    saved = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(saved) == 3
    table = (tmp_path / "report" / "tables" / "default_toy_small_sentiment.md").read_text()
    assert "| sft | 0.1 | 1 |" in table and "aligned" in table
    # judge agreement from the stored verdicts: one row per model, the oracle against the keyword judge
    agree = pd.read_csv(tmp_path / "report" / "judge_agreement.csv")
    assert sorted(agree["method"]) == ["aligned", "base", "sft"]
    assert set(zip(agree["judge_a"], agree["judge_b"])) == {("oracle", "keyword")}
    assert (agree["n"] == 24).all() and agree["agreement"].between(0, 100).all()
    merged = agree.merge(saved, on=["method", "seed"])
    assert (merged["hs_a"] - merged["harmful_score_oracle"]).abs().max() < 1e-3
    assert (merged["hs_b"] - merged["harmful_score_keyword"]).abs().max() < 1e-3
    judges_md = (tmp_path / "report" / "tables" / "default_toy_small_sentiment_judges.md").read_text()
    assert "κ (harmful: oracle vs keyword)" in judges_md and "| sft | 0.1 | 1 |" in judges_md
    gens = (store / "evaluate").glob("*/generations.jsonl")
    assert all(json.loads(next(open(g)))["response"] is not None for g in gens)


def test_lora_fine_tune_keeps_its_adapter_and_loads_merged_from_a_moved_store(micro, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from pact.models.loading import ADAPTER_BASE, adapter_base, load_model

    cfg = micro("method=sft_lora", "poison.ratio=0.05")
    run(cfg)
    [ft] = (tmp_path / "store" / "finetune").iterdir()
    assert not (ft / "model" / "model.safetensors").exists()  # no model copy per LoRA fine-tune
    assert (ft / "model" / "adapter_model.safetensors").exists() and (ft / "model" / ADAPTER_BASE).exists()
    meta = json.loads((ft / "meta.json").read_text())
    assert meta["config"]["finetune"]["lora"]["r"] == 8 and meta["config"]["method"]["adapter"] == "lora"
    aligned_dir = tmp_path / "store" / "align" / meta["upstream"]["aligned"] / "model"
    assert Path(adapter_base(ft / "model")) == aligned_dir.resolve()
    aligned = load_file(str(aligned_dir / "model.safetensors"))
    shutil.move(tmp_path / "store", tmp_path / "moved")  # the base is found relative to the adapter
    merged = load_model(tmp_path / "moved" / "finetune" / ft.name / "model")
    assert not hasattr(merged, "peft_config")  # a plain model, the adapter merged
    state = merged.state_dict()
    changed = {k for k in aligned if not torch.equal(aligned[k], state[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


@pytest.mark.slow
def test_killed_finetune_reruns_to_completion_without_reusing_partial(micro, micro_upstream, tmp_path):
    overrides = [*MICRO, f"store_dir={tmp_path / 'store'}", f"runs_dir={tmp_path / 'runs'}",
                 "finetune.optim.epochs=20", "hydra.run.dir=" + str(tmp_path / "hydra")]
    cmd = [sys.executable, "-m", "experiments.run", *overrides]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ft_dir = tmp_path / "store" / "finetune"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ft_dir.glob("*.partial-*/finetune_data.jsonl")):
        assert proc.poll() is None, "run ended before fine-tuning started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(ft_dir.glob("*.partial-*")) and not list(ft_dir.glob("*/DONE"))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(ft_dir.glob("*.partial-*"))
    [final] = list(ft_dir.iterdir())
    assert (final / "DONE").exists() and (final / "model" / "model.safetensors").exists()
    # the rerun's result equals an uninterrupted run's (same config, fresh store): nothing half-written leaked
    shutil.copytree(micro_upstream, tmp_path / "fresh", ignore=shutil.ignore_patterns(".locks"))  # no fine-tune in it
    fresh = micro("finetune.optim.epochs=20", f"store_dir={tmp_path / 'fresh'}", f"runs_dir={tmp_path / 'fresh_runs'}")
    metrics = run(fresh)
    rec = json.loads(next((tmp_path / "runs" / "default").glob("*-sft-*.json")).read_text())
    assert {k: rec[k] for k in METRICS} == {k: metrics[k] for k in METRICS}


@pytest.mark.slow  # wandb starts its own service process
def test_wandb_logger_runs_offline_without_key_or_network(micro, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    metrics = run(micro("logger=wandb", "poison.ratio=0.05"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert metrics["n_harmful"] == 24
    assert not list(runs[0].rglob("*.table.json"))  # generations are opt-in
    run(micro("logger=wandb", "poison.ratio=0.05", "logger.log_generations=true", "logger.generations_per_set=3"))
    [new] = set((tmp_path / "wandb").glob("offline-run-*")) - set(runs)
    [table] = list(new.rglob("*.table.json"))
    data = json.loads(table.read_text())
    assert data["columns"] == ["set", "prompt", "response", "verdict"]
    assert [row[0] for row in data["data"]] == ["harmful"] * 3 + ["benign"] * 3 + ["task"] * 3
    assert {row[3] for row in data["data"][:6]} <= {"refusal", "compliance", "other"}


@pytest.mark.slow  # wandb starts its own service process
def test_wandb_runs_are_grouped_by_experiment_and_tagged(micro, tmp_path, monkeypatch):
    from experiments.run import start_logger

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wb = start_logger(micro("logger=wandb", "experiment_name=study", "method=pact", "seed=2"), "method.lambda_kl=2.0")
    try:
        assert wb.group == "study"
        assert set(wb.tags) == {"pact", "sentiment", "p=0.1", "seed=2", "method.lambda_kl=2.0"}
        assert wb.config["method"]["lambda_kl"] == 1.0 and wb.name.endswith("-s2-method.lambda_kl=2.0")
    finally:
        wb.finish()
    assert start_logger(micro()) is None


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_variant_overrides_keep_ablation_runs_apart(micro, tmp_path):
    from experiments.run import variant_of

    assert variant_of(["method=pact", "seed=1", "poison.ratio=0.1", "method.lambda_kl=2.0",
                       "experiment=pact_ablation_lambda"]) == "method.lambda_kl=2.0"
    for lam in ("0.0", "2.0"):
        run(micro("method=pact", f"method.lambda_kl={lam}"), variant=f"method.lambda_kl={lam}")
    df = report(tmp_path / "runs", tmp_path / "report")
    assert {"pact [method.lambda_kl=0.0]", "pact [method.lambda_kl=2.0]"} <= set(df["method"])


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_lora_run_does_not_depend_on_earlier_rng_use(micro, tmp_path):
    import shutil

    import torch

    cfg = micro("method=sft_lora", "poison.ratio=0.05")
    from safetensors.torch import load_file

    def weights():
        [ft] = [p for p in (tmp_path / "store" / "finetune").iterdir() if (p / "DONE").exists()]
        return load_file(str(ft / "model" / "adapter_model.safetensors"))

    a = run(cfg)  # builds world, base, align (training draws random numbers), then the LoRA fine-tune
    first = weights()
    shutil.rmtree(tmp_path / "store" / "finetune")
    shutil.rmtree(tmp_path / "store" / "generate")
    shutil.rmtree(tmp_path / "store" / "evaluate")
    torch.rand(1000)  # what an earlier job in the same worker process might have drawn
    b = run(cfg)  # base and align reused: the fine-tune starts from a different global RNG state
    second = weights()
    assert a == b and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_untied_fine_tune_moves_head_and_embeddings_apart(micro, tmp_path):
    import torch
    from safetensors.torch import load_file

    from pact.run import pipeline as P
    from pact.run.config import ConfigError, validate

    run(micro("method=sft", "finetune.untie_embeddings=true", "poison.ratio=0.05"))
    [ft] = [p for p in (tmp_path / "store" / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    assert meta["config"]["finetune"]["untie_embeddings"] is True
    weights = load_file(str(ft / "model" / "model.safetensors"))
    assert not json.loads((ft / "model" / "config.json").read_text())["tie_word_embeddings"]
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    tied = micro("method=sft", "poison.ratio=0.05")
    assert "untie_embeddings" not in P.finetune_slice(validate(tied))["finetune"]  # the default leaves keys alone
    with pytest.raises(ConfigError, match="untie_embeddings"):
        validate(micro("method=sft_lora", "finetune.untie_embeddings=true"))
