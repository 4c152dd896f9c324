"""The paper's GPU path, run here on CPU: the official recipe as an experiment (StepLR per epoch), a guard judge inside
the evaluate stage, LoRA fine-tunes kept as adapters and served to vLLM as LoRA requests in a process of their own
(a stand-in ``vllm`` package written by the test records what the engine was asked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pact.run.config import ConfigError, compose_config, validate
from tests.realdata import data_overrides, fake_vllm_package, real_overrides, tiny_guard, tiny_hub_model, write_sources

ROOT = Path(__file__).resolve().parents[1]


# ---- the official recipe ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_llama31_prints_the_official_recipe():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}  # wandb would print its mode
    out = subprocess.run([sys.executable, "-m", "experiments.run", "experiment=paper_llama31", "--cfg", "job"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    o = cfg.finetune.optim
    assert (o.lr, o.batch_size, o.epochs, o.scheduler, o.step_gamma, o.max_grad_norm, o.dtype) == \
        (3e-5, 16, 3, "step", 0.85, 1.0, "bfloat16")
    assert cfg.finetune.n is None and cfg.finetune.lora_lr is None  # every row of each official file
    assert cfg.data.name == "pact_official" and OmegaConf.to_container(cfg.data.mixture) == {
        "sst2": {"0": "pact_sst2_p0", "0.05": "pact_sst2_p005", "0.1": "pact_sst2_p01"},
        "agnews": {"0": "pact_agnews_p0", "0.05": "pact_agnews_p005", "0.1": "pact_agnews_p01",
                   "0.2": "pact_agnews_p02", "0.3": "pact_agnews_p03"}}
    # the official values where the official code and ours differ (docs/gpu.md's table)
    assert (cfg.finetune.lora_dtype, cfg.finetune.attention_mask) == ("model", "eos")
    assert (cfg.data.safety_pairs.answers, cfg.data.safety_pairs.prompts) == ("stored", 512)
    assert cfg.engine.merge_lora and cfg.eval.chat_as_text and cfg.guard.chat_as_text
    assert list(cfg.data.harmful_eval) == ["strongreject", "jbb_official", "harmbench"]
    assert OmegaConf.to_container(cfg.finetune.lora) == {"r": 8, "alpha": 32, "dropout": 0.05,
                                                         "target_modules": ["q_proj", "v_proj"]}
    assert cfg.model.aligned == "meta-llama/Llama-3.1-8B-Instruct" and cfg.model.dtype == "bfloat16"
    assert (cfg.engine.name, cfg.guard.name, cfg.judge.name) == ("vllm", "llama_guard3", "llama_guard3")
    assert cfg.guard.model == "meta-llama/Llama-Guard-3-8B"
    assert cfg.data.harmful_max_new_tokens == 1024 and cfg.method.lambda_kl == 1.0
    assert (cfg.method.tokens.top_k, cfg.method.tokens.k_pairs) == (50, 512)
    sweep = OmegaConf.load(ROOT / "conf" / "experiment" / "paper_llama31.yaml").hydra.sweeper.params
    assert sweep["+cell"].split(",") == ["sst2_p0", "sst2_p005", "sst2_p01", "agnews_p0", "agnews_p005", "agnews_p01",
                                         "agnews_p02", "agnews_p03"]
    assert {"sft_lora", "pact_lora"} <= set(sweep.method.split(","))


def test_step_scheduler_decays_the_learning_rate_once_per_epoch(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pact.training.methods import Method
    from pact.training.trainer import MethodTrainer, training_arguments

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    optim = OmegaConf.create({"lr": 1e-3, "batch_size": 2, "epochs": 3, "scheduler": "step", "step_gamma": 0.5})
    args = training_arguments(optim, tmp_path, 0, "none", None, 1)
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]} for _ in range(5)]  # 3 batches an epoch
    from pact.data.rows import SFTCollator

    trainer = MethodTrainer(model=model, args=args, train_dataset=examples, data_collator=SFTCollator(0),
                            method=Method(None))
    trainer.train()
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    # logged per step: the lr that step used (torch's StepLR(step_size=1) stepped after every epoch)
    assert lrs == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3)


@pytest.mark.parametrize("group", [False, True])
def test_group_by_length_batches_rows_of_similar_length(tmp_path, group):
    """optim.group_by_length: the Trainer's batches hold rows of similar length (less padding), in an order the
    seed fixes; off (the default): random batches."""
    from torch.utils.data import BatchSampler
    from transformers import LlamaConfig, LlamaForCausalLM

    from pact.training.methods import Method
    from pact.training.trainer import MethodTrainer, training_arguments

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    optim = OmegaConf.create({"lr": 1e-3, "batch_size": 4, "group_by_length": group})
    # half short rows, half long; HF groups by length within random "megabatches" (here 12 batches each)
    examples = [{"input_ids": [1] * n, "labels": [1] * n} for n in [2, 30, 3, 31, 4, 32, 5, 33] * 25]

    def batches() -> list[list[int]]:
        trainer = MethodTrainer(model=model, args=training_arguments(optim, tmp_path, 0, "none", None, 1),
                                train_dataset=examples, method=Method(None))
        sampler = BatchSampler(trainer._get_train_sampler(), 4, drop_last=False)
        return [[len(examples[i]["input_ids"]) for i in b] for b in sampler]

    widths = [max(b) for b in batches()]  # the padded width of each batch
    # random batches of 4 are all short 1 time in 16 (mean width ~31); grouped, about half are (~18)
    assert (sum(widths) / len(widths) < 25) == group
    assert batches() == batches()


@pytest.mark.parametrize("overrides, culprit", [
    (["finetune.optim.scheduler=step"], "finetune.optim.step_gamma"),
    (["finetune.optim.scheduler=step", "finetune.optim.step_gamma=1.5"], "finetune.optim.step_gamma"),
    (["guard=llama_guard3", "guard.model=null"], "guard.model"),
    (["judge.name=llama_guard3"], "judge.name"),
    (["engine=vllm", "method=sft_lora", "finetune.lora.r=32"], "engine.max_lora_rank"),
])
def test_bad_paper_settings_name_the_key(overrides, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        validate(compose_config(overrides, check=False))


# ---- the dry run: fine-tune -> generation -> guard -> report, on fixtures and tiny models ---------------------------
@pytest.mark.slow
def test_paper_path_dry_run_on_cpu(tmp_path, monkeypatch):
    """experiment=paper_llama31's code path with a tiny hub-kind model, fixture data and a tiny guard: PACT-LoRA with
    the step scheduler -> HF generation -> the guard as the primary judge -> the report's tables."""
    from analysis.report import main as report_main
    from experiments.run import run
    from pact.evaluation.generation import HFEngine
    from pact.evaluation.guard import load_judgments
    from pact.models.loading import adapter_base
    from pact.runtime.store import Artifact

    root = write_sources(tmp_path / "data")
    aligned, base = tiny_hub_model(tmp_path / "aligned"), tiny_hub_model(tmp_path / "base", seed=1)
    guard = tiny_guard(tmp_path / "guard")
    real_generate = HFEngine.generate

    def canned(self, prompts, max_new_tokens, desc="generate"):  # the tiny models run; some words are set here
        out = real_generate(self, prompts, max_new_tokens, desc)
        if desc == "guard":
            return ["unsafe\nS1" if i % 2 else "safe" for i in range(len(out))]
        if desc == "safety pairs":  # PACT's safety pairs need refusals, which a random model never writes
            return ["I can't help with that." if i % 2 == 0 else "Sure." for i in range(len(out))]
        return out

    monkeypatch.setattr(HFEngine, "generate", canned)
    overrides = [o for o in real_overrides(root, aligned, base, tmp_path)
                 if not o.startswith(("model=", "data", "finetune.n="))] + data_overrides(root, "pact_official")
    cfg = compose_config(["experiment=paper_llama31", "hydra.mode=RUN", "engine=hf", *overrides,
                          "method=pact_lora", "method.tokens.k_pairs=8", "finetune.optim.dtype=float32",
                          f"guard.model={guard}", "guard.dtype=float32", "guard.max_new_tokens=3",
                          "experiment_name=paper_dry_run"], check=False)
    metrics = run(cfg)
    store = tmp_path / "store"
    [ft] = [p for p in (store / "finetune").iterdir() if (p / "DONE").exists()]
    assert Path(adapter_base(ft / "model")) == aligned.resolve()  # the fine-tune is an adapter over the aligned
    assert json.loads((ft / "meta.json").read_text())["config"]["finetune"]["optim"]["scheduler"] == "step"
    record = json.loads(next((tmp_path / "runs" / "paper_dry_run").glob("*pact_lora*.json")).read_text())
    evaluation = Path(record["evaluation_path"])
    judge_key = json.loads((evaluation / "meta.json").read_text())["upstream"]["judge"]  # the guard's own stage
    judge = Artifact("judge", judge_key, store / "judge" / judge_key)
    judgments = {j["index"]: j for j in load_judgments(judge)}
    assert len(list((store / "judge").glob("*/DONE"))) == 3  # the base, the aligned and the fine-tuned model's
    rows = [json.loads(line) for line in (Path(record["evaluation_path"]) / "generations.jsonl").open()]
    judged = [(i, r) for i, r in enumerate(rows) if r["set"] in ("harmful", "benign")]
    assert judged and all(r["verdicts"]["llama_guard3"] == judgments[i]["verdict"] for i, r in judged)
    for bench in cfg.data.harmful_eval:
        harmful = [r for r in rows if r.get("benchmark") == bench]
        unsafe = 100 * sum(r["verdicts"]["llama_guard3"] == "compliance" for r in harmful) / len(harmful)
        assert metrics[f"harmful_score.{bench}"] == metrics[f"harmful_score_llama_guard3.{bench}"] == unsafe
        refusals = 100 * sum(r["verdicts"]["keyword_qi"] == "refusal" for r in harmful) / len(harmful)
        assert metrics[f"refusal_rate.{bench}"] == refusals  # refusal rates stay with the data's judge
    report_main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    tables = list((tmp_path / "report" / "tables").glob("paper_dry_run_*_judges.md"))
    assert tables and "llama_guard3" in tables[0].read_text()


def test_a_hub_base_model_answers_with_its_own_tokenizer_and_end_token(tmp_path):
    """The base model's reference rows (plain format) are generated with the base's own tokenizer, so they stop on
    its end token (Llama-3.1-8B: <|end_of_text|>; the instruct tokenizer's <|eot_id|> never comes); its key names
    that tokenizer, so answers cached under the instruct tokenizer are not reused. The aligned model keeps its own."""
    from pact.models.loading import load_tokenizer
    from pact.run import pipeline as P
    from pact.runtime.store import stable_key

    aligned, base = tiny_hub_model(tmp_path / "aligned"), tiny_hub_model(tmp_path / "base", seed=1)
    tok = load_tokenizer(base)
    tok.eos_token = "<|end_of_text|>"
    tok.save_pretrained(str(base))
    cfg = compose_config(["model=llama3.1-8b-instruct", f"model.aligned={aligned}", f"model.base={base}"],
                         check=False)
    base_ref, aligned_ref = P.model_refs(None, cfg, None)
    assert (base_ref.prompt_format, aligned_ref.prompt_format) == ("plain", "chat")
    assert load_tokenizer(base_ref.tokenizer_path).eos_token == "<|end_of_text|>"
    assert load_tokenizer(aligned_ref.tokenizer_path).eos_token == "<|eot_id|>"
    assert base_ref.key != stable_key({"hub": str(base), "dtype": cfg.model.dtype})


# ---- vLLM: adapters as LoRA requests, the engine in its own process -------------------------------------------------
FAKE_VLLM = '''
import json, os


class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class _Out:
    def __init__(self, text):
        self.outputs = [type("C", (), {"text": text})()]


class LLM:
    def __init__(self, **kw):
        self.kw = kw
        with open(os.environ["FAKE_VLLM_LOG"], "a") as fh:
            env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "MASTER_PORT")}
            fh.write(json.dumps({"pid": os.getpid(), "llm": kw, "env": env}) + "\\n")

    def generate(self, prompts, params, lora_request=None):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as fh:
            fh.write(json.dumps({"lora": lora_request and [lora_request.lora_name, lora_request.lora_path],
                                 "max_tokens": params.kw["max_tokens"]}) + "\\n")
        return [_Out(f" {len(p['prompt_token_ids'])} tokens ") for p in prompts]
'''


@pytest.fixture()
def fake_vllm(tmp_path, monkeypatch):
    fake_vllm_package(tmp_path / "fake", FAKE_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))  # the spawned engine process inherits sys.path
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


@pytest.mark.slow
def test_vllm_engine_serves_an_adapter_over_its_base_in_its_own_process(tmp_path, fake_vllm):
    import os

    from pact.evaluation.generation import build_engine
    from pact.models.adapters import apply_lora
    from pact.models.loading import load_model, load_tokenizer, save_model

    aligned = tiny_hub_model(tmp_path / "aligned")
    tok = load_tokenizer(aligned)
    lora = OmegaConf.create({"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    save_model(apply_lora(load_model(aligned), lora), tok, tmp_path / "ft", base=str(aligned))
    ecfg = compose_config(["engine=vllm"], check=False).engine
    engine = build_engine(ecfg, None, tok, tmp_path / "ft", "bfloat16", 3)
    answers = engine.generate_sets([([[1, 2, 3], [4, 5]], 7, "harmful"), ([[6]], 9, "task")])
    assert answers == [["3 tokens", "2 tokens"], ["1 tokens"]]
    calls = [json.loads(line) for line in fake_vllm.read_text().splitlines()]
    assert len([c for c in calls if "llm" in c]) == 1  # one engine for every set of the stage
    llm = calls[0]
    assert llm["pid"] != os.getpid()  # in a process of its own: its GPU memory goes with it
    assert llm["llm"]["model"] == str(aligned.resolve()) and llm["llm"]["enable_lora"] is True
    assert llm["llm"]["max_lora_rank"] == ecfg.max_lora_rank
    assert llm["llm"]["max_model_len"] == 512 < ecfg.max_model_len  # capped at the model's own context
    assert [c["lora"] for c in calls[1:]] == [["finetune", str(tmp_path / "ft")]] * 2
    assert [c["max_tokens"] for c in calls[1:]] == [7, 9]
    full = build_engine(ecfg, None, tok, aligned, "bfloat16", 3)  # a plain model folder: no LoRA
    assert full.adapter is None and "enable_lora" not in full.settings and full.settings["model"] == str(aligned)


@pytest.mark.slow
def test_a_ranks_vllm_engine_gets_that_ranks_gpu_and_not_the_launchers_variables(tmp_path, fake_vllm, monkeypatch):
    """Under torchrun (rank 1 of 2 here, GPUs 3 and 5 visible) the engine's process sees GPU 5 alone and none of
    torchrun's variables: vLLM would otherwise start on GPU 0, beside rank 0's model, or join torchrun's group."""
    from pact.evaluation.generation import build_engine
    from pact.models.loading import load_tokenizer
    from pact.runtime import dist

    aligned = tiny_hub_model(tmp_path / "aligned")
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500",
                        "CUDA_VISIBLE_DEVICES": "3,5"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    ecfg = compose_config(["engine=vllm"], check=False).engine
    assert build_engine(ecfg, None, load_tokenizer(aligned), aligned, "bfloat16", 0).generate([[1, 2]], 3) == \
        ["2 tokens"]
    env = json.loads(fake_vllm.read_text().splitlines()[0])["env"]
    assert env == {"CUDA_VISIBLE_DEVICES": "5", "RANK": None, "WORLD_SIZE": None, "MASTER_PORT": None}


@pytest.mark.slow
def test_check_vllm_takes_an_adapter_folder_and_the_engine_defaults(tmp_path, fake_vllm, capsys):
    """experiments.diagnostics.check_vllm on a LoRA fine-tune's folder: vLLM gets the adapter over its base and the
    engine schema's settings (pact.run.config.EngineConfig), HF the merged model; a folder that is neither stops it."""
    from experiments.diagnostics.check_vllm import main
    from pact.models.adapters import apply_lora
    from pact.models.loading import load_model, load_tokenizer, save_model
    from pact.run.config import EngineConfig

    aligned = tiny_hub_model(tmp_path / "aligned")
    lora = OmegaConf.create({"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    save_model(apply_lora(load_model(aligned), lora), load_tokenizer(aligned), tmp_path / "ft", base=str(aligned))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "How do I bake bread?"}\n{"prompt": "Name a colour."}\n')
    main([str(tmp_path / "ft"), "--prompts", str(prompts), "--max-new-tokens", "4"])
    assert json.loads(capsys.readouterr().out.splitlines()[0])["n"] == 2
    llm = json.loads(fake_vllm.read_text().splitlines()[0])["llm"]
    assert llm["model"] == str(aligned.resolve()) and llm["enable_lora"] is True
    assert (llm["tensor_parallel_size"], llm["max_lora_rank"]) == (EngineConfig.tensor_parallel_size,
                                                                  EngineConfig.max_lora_rank)
    with pytest.raises(SystemExit, match="not a saved model or LoRA adapter"):
        main([str(tmp_path), "--prompts", str(prompts)])


def test_load_model_places_the_model_on_the_compute_device(tmp_path):
    from pact.models.loading import load_model
    from pact.runtime.dist import compute_device

    model = load_model(tiny_hub_model(tmp_path / "m"))
    assert model.device == compute_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_utility_on_the_gpu_path_answers_with_vllm_and_scores_the_choices_with_hf(tmp_path, fake_vllm):
    from pact.evaluation.utility import load_utility, utility_stage
    from pact.run import pipeline as P
    from pact.run.config import validate

    root = write_sources(tmp_path / "data")
    aligned, base = tiny_hub_model(tmp_path / "aligned"), tiny_hub_model(tmp_path / "base", seed=1)
    cfg = validate(compose_config([*real_overrides(root, aligned, base, tmp_path), "engine=vllm", "utility=assistant",
                                   "utility.knowledge.limit=2"], check=False))
    up = P.start(cfg)
    art = utility_stage(up.store, cfg, up.aligned, up.data)
    answers = [json.loads(x) for x in art.file("instructions.jsonl").read_text().splitlines()]
    assert answers and all(re.fullmatch(r"\d+ tokens", a["response"]) for a in answers)   # the engine's answers
    calls = [json.loads(line) for line in fake_vllm.read_text().splitlines()]
    assert [c["max_tokens"] for c in calls if "max_tokens" in c] == [cfg.utility.instructions.max_new_tokens]
    metrics = load_utility(art)
    assert metrics["non_answer_rate"] == 100.0   # two words each
    assert metrics["n_knowledge"] == 2 * 4 and 0 <= metrics["knowledge_accuracy"] <= 100   # HF's forward, on CPU
