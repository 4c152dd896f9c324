"""The switches between the official PACT code's behaviour and ours (docs/gpu.md's table): each one does what it says
when on, and when off (ours, the default) leaves every stage key as it was before the switch existed."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from pact.run.config import ConfigError, compose_config
from tests.realdata import data_overrides, tiny_guard, tiny_hub_model, write_sources
from tests.test_paper_path import fake_vllm  # noqa: F401 - the stand-in vLLM fixture

LORA = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def tiny_llama(dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2)).to(dtype)


# ---- the keys of the defaults ----------------------------------------------------------------------------------
def test_the_defaults_add_nothing_to_any_stage_key():
    from pact.evaluation.generation import engine_slice
    from pact.training.finetune import finetune_slice

    cfg = compose_config(["method=sft_lora"])
    ft = finetune_slice(cfg)["finetune"]
    assert "lora_dtype" not in ft and "attention_mask" not in ft
    assert "merge_lora" not in engine_slice(cfg.engine)
    on = compose_config(["method=sft_lora", "finetune.lora_dtype=model", "finetune.attention_mask=eos"])
    assert {"lora_dtype": "model", "attention_mask": "eos"}.items() <= finetune_slice(on)["finetune"].items()
    vllm = compose_config(["engine=vllm", "engine.merge_lora=true"]).engine
    assert engine_slice(vllm)["merge_lora"] is True
    hf = compose_config(["engine.merge_lora=true"]).engine  # HF generate always runs the merged model
    assert "merge_lora" not in engine_slice(hf)


def test_a_switch_refuses_a_value_it_does_not_know():
    with pytest.raises(ConfigError, match="finetune.lora_dtype"):
        compose_config(["finetune.lora_dtype=bf16"])
    with pytest.raises(ConfigError, match="finetune.attention_mask"):
        compose_config(["finetune.attention_mask=none"])


# ---- LoRA precision ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, want", [("float32", torch.float32), ("model", torch.bfloat16)])
def test_lora_dtype_sets_the_adapters_dtype(dtype, want):
    from pact.models.adapters import apply_lora

    model = apply_lora(tiny_llama(torch.bfloat16), OmegaConf.create(LORA), None, dtype)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {want}


# ---- the attention mask ------------------------------------------------------------------------------------------
def test_the_official_mask_hides_every_eos_position_and_keys_the_reference_cache(tmp_path):
    from pact.data.rows import SFTCollator, encode_sft, hide_tokens
    from pact.models.loading import load_tokenizer
    from pact.runtime.refcache import example_key

    tok = load_tokenizer(tiny_hub_model(tmp_path / "m"))
    rows = [{"prompt": "Review one", "answer": "positive"}, {"prompt": "A longer review two", "answer": "negative"}]
    ours = encode_sft(rows, tok, "chat", 128)
    official = hide_tokens(ours, tok.eos_token_id)
    a, b = SFTCollator(tok.pad_token_id)(ours), SFTCollator(tok.pad_token_id)(official)
    eos = b["input_ids"].eq(tok.eos_token_id)
    real = a["attention_mask"].bool()
    assert torch.equal(b["attention_mask"].bool(), real & ~eos)  # eos hidden, padding hidden, the rest seen
    assert int((real & eos).sum()) >= 2 * 2  # at least the user turn's and the answer's end in each row
    assert example_key(ours[0]) != example_key(official[0])  # a reference cached under one mask is not the other's


# ---- the chat text tokenised again ---------------------------------------------------------------------------------
def test_chat_as_text_gives_a_second_bos_where_the_tokenizer_adds_one(tmp_path):
    from pact.data.rows import prompt_ids
    from pact.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_hub_model(tmp_path / "m", text_bos=True))
    ours, official = prompt_ids(tok, "Hello", "chat"), prompt_ids(tok, "Hello", "chat", as_text=True)
    assert ours[0] == tok.bos_token_id != ours[1]
    assert official[:2] == [tok.bos_token_id] * 2 and official[1:] == ours


def test_the_guard_reads_a_second_bos_when_asked(tmp_path, monkeypatch):
    from pact.evaluation import guard as G
    from pact.evaluation.generation import HFEngine

    seen = []
    monkeypatch.setattr(HFEngine, "generate", lambda self, ids, n, desc="": seen.append(ids) or ["safe"] * len(ids))
    path = tiny_guard(tmp_path / "g", text_bos=True)
    gcfg = compose_config(["guard=llama_guard3", f"guard.model={path}", "guard.dtype=float32"]).guard
    model, tok = G.load_guard(gcfg, "cpu")
    rows = [{"prompt": "Hi", "response": "Hello"}]
    G.judge_answers(model, tok, rows, 3, 4)
    G.judge_answers(model, tok, rows, 3, 4, special_tokens_again=True)
    assert seen[0][0][:2] != [tok.bos_token_id] * 2 and seen[1][0][:2] == [tok.bos_token_id] * 2
    assert seen[1][0][1:] == seen[0][0]


# ---- stored safety pairs and every row of the official file ------------------------------------------------------
@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("official") / "data")


def official(root, tmp, *extra):
    aligned = tmp / "aligned"
    if not aligned.exists():
        tiny_hub_model(aligned)
    return compose_config([*data_overrides(root, "pact_official"), "task=sst2", "model=llama3.1-8b-instruct",
                           f"model.aligned={aligned}", "model.base=null", "finetune.n=null",
                           f"store_dir={tmp / 'store'}", *extra])


def test_stored_safety_pairs_are_the_sources_first_rows_with_their_answers(official_root, tmp_path):
    from pact.data.rows import read_jsonl
    from pact.run import pipeline as P
    from tests.realdata import git_source_rows

    cfg = official(official_root, tmp_path, "data.safety_pairs.answers=stored", "data.safety_pairs.prompts=5")
    data = P.start(cfg, models=False).data
    path, label, keys = data.safety_pairs(None)
    want = [{"prompt": r["input"], "refusal": r["output"]} for r in git_source_rows()["pact_safe_direction"][:5]]
    assert read_jsonl(path, ("prompt", "refusal")) == want and keys == data.upstream
    assert not (tmp_path / "store" / "safety_pairs").exists()  # no generation stage


def test_stored_answers_are_refused_for_a_source_of_compliance(official_root, tmp_path):
    with pytest.raises(ConfigError, match="data.safety_pairs.answers=generated"):
        compose_config([*data_overrides(official_root, "real"), "task=sst2", "model=llama3.1-8b-instruct",
                        "data.safety_pairs.answers=stored"])


def test_finetune_n_null_takes_every_row_of_the_official_file(official_root, tmp_path):
    from pact.run import pipeline as P
    from pact.training.finetune import finetune_rows
    from tests.realdata import MIXTURE_ROWS, mixture_rows

    cfg = official(official_root, tmp_path, "finetune.n=null", "poison.ratio=0.05")
    rows = finetune_rows(cfg, P.start(cfg, models=False).data)
    file = mixture_rows("sst2", 0.05)
    assert len(rows) == MIXTURE_ROWS and sum(r["poison"] for r in rows) == sum("input" not in r for r in file) == 2
    assert sorted(r["answer"] for r in rows) == sorted(r["output"] for r in file)
    with pytest.raises(ConfigError, match="finetune.n=null"):
        compose_config(["finetune.n=null"])  # the toy world has no official file


# ---- vLLM serves a merged copy ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_merge_lora_serves_a_merged_copy_and_deletes_it(tmp_path, fake_vllm):  # noqa: F811 - the fixture
    from pact.evaluation.generation import build_engine
    from pact.models.adapters import apply_lora
    from pact.models.loading import load_model, load_tokenizer, save_model

    log = fake_vllm
    aligned = tiny_hub_model(tmp_path / "aligned")
    tok = load_tokenizer(aligned)
    save_model(apply_lora(load_model(aligned), OmegaConf.create(LORA)), tok, tmp_path / "ft" / "model",
               base=str(aligned))
    ecfg = compose_config(["engine=vllm", "engine.merge_lora=true"]).engine
    engine = build_engine(ecfg, None, tok, tmp_path / "ft" / "model", "float32", 0)
    assert engine.generate([[1, 2, 3]], 4) == ["3 tokens"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    llm = calls[0]["llm"]
    assert "enable_lora" not in llm and llm["model"].startswith(str(tmp_path / "ft" / ".merged-"))
    assert calls[1]["lora"] is None
    assert not list((tmp_path / "ft").glob(".merged-*"))  # the copy is gone
