"""Model and tokenizer loading (hub id or local path alike), the toy model's architecture, and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def looks_local(name_or_path: str | Path) -> bool:
    """Whether a model reference is a local path (absolute, ``./``, ``../`` or ``~``) rather than a hub id."""
    text = str(name_or_path)
    return Path(text).is_absolute() or text.startswith((".", "~"))


def check_model_path(name_or_path: str | Path, key: str = "model") -> None:
    """Raise :class:`FileNotFoundError` naming ``key`` when a local model path does not exist (hub ids pass)."""
    if looks_local(name_or_path) and not Path(str(name_or_path)).expanduser().exists():
        raise FileNotFoundError(f"{key}={name_or_path}: no such model directory")


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """Load a tokenizer from a hub id or a local directory."""
    check_model_path(name_or_path, "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # Llama-3 and others ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a causal LM from a hub id or a local directory (safetensors only)."""
    check_model_path(name_or_path)
    return AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=DTYPES[dtype],
                                                trust_remote_code=trust_remote_code, use_safetensors=True)


def toy_model(arch: Any, tokenizer, seed: int) -> LlamaForCausalLM:
    """A small ``LlamaForCausalLM`` from config, initialised with ``seed``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=int(arch.hidden_size),
        intermediate_size=int(arch.intermediate_size), num_hidden_layers=int(arch.num_layers),
        num_attention_heads=int(arch.num_heads), num_key_value_heads=int(arch.num_heads),
        max_position_embeddings=int(arch.max_position_embeddings), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_model(model, tokenizer, path: Path) -> None:
    """``save_pretrained`` as safetensors; a peft model is merged first so the artifact loads with
    ``AutoModelForCausalLM.from_pretrained``."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
