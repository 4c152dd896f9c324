"""Model and tokenizer loading (hub id or local path alike), the toy model's architecture, and adapters."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pact.runtime import dist

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_BASE = "adapter_base.json"  # in a saved LoRA adapter's folder: the model it adapts


@dataclass(frozen=True)
class ModelRef:
    """A model a later stage can load: a store artifact or a hub id, with the prompt format it answers in."""

    key: str
    path: str
    prompt_format: str
    tokenizer_path: str


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
    from transformers import AutoTokenizer  # in the functions: validating a config needs no model code

    check_model_path(name_or_path, "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # Llama-3 and others ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def adapter_base(path: str | Path) -> str | None:
    """The model a saved LoRA adapter folder adapts (a local path or a hub id), or None when ``path`` is not one."""
    marker = Path(str(path)) / ADAPTER_BASE
    if not marker.is_file():
        return None
    base = json.loads(marker.read_text())
    if base["relative"]:  # a model of the same store: located from the adapter, so a moved store still loads
        return str((Path(str(path)) / base["base"]).resolve())
    return base["base"]


def load_model(name_or_path: str | Path, dtype: str = "float32", trust_remote_code: bool = False,
               device: str | torch.device | None = None):
    """Load a causal LM from a hub id or a local directory (safetensors only) onto ``device`` (default: this
    process's compute device, pact.runtime.dist.compute_device). A saved LoRA adapter (:func:`save_model` with ``base``)
    loads as its base model with the adapter merged."""
    check_model_path(name_or_path)
    base = adapter_base(name_or_path)
    if base is not None:
        from peft import PeftModel

        model = load_model(base, dtype, trust_remote_code, device)
        return PeftModel.from_pretrained(model, str(name_or_path)).merge_and_unload()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=DTYPES[dtype],
                                                 trust_remote_code=trust_remote_code, use_safetensors=True)
    return model.to(device or dist.compute_device())


def toy_model(arch: Any, tokenizer, seed: int) -> LlamaForCausalLM:
    """A small ``LlamaForCausalLM`` from config, initialised with ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

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


def untie_embeddings(model) -> None:
    """Give a model with tied input and output embeddings an LM head of its own, equal to the embedding matrix at
    first, so that fine-tuning moves them apart (saved and reloaded untied)."""
    if not model.config.tie_word_embeddings:
        raise ValueError("finetune.untie_embeddings=true but the model's embeddings are not tied")
    model.get_output_embeddings().weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False


def save_model(model, tokenizer, path: Path, base: str | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` as safetensors, with the tokenizer. A peft model: with ``base`` (the path or hub id of
    the model it adapts) only the adapter is kept, beside :data:`ADAPTER_BASE` naming ``base`` (relative when it is
    a local folder), so a study of many LoRA fine-tunes stores megabytes, not a model copy each, and vLLM can serve
    them as adapters; without ``base`` it is merged first. :func:`load_model` reads both. ``state_dict``: the full
    state gathered from sharded (FSDP) ranks, saved instead of the model's own tensors."""
    path = Path(path)
    if state_dict is not None:  # FSDP: the wrapped model's own tensors are shards
        if hasattr(model, "merge_and_unload") and base is None:
            raise ValueError("a sharded LoRA fine-tune is saved as its adapter: pass base")
        model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
        if base is not None:
            _write_adapter_base(path, base)
        tokenizer.save_pretrained(str(path))
        return
    if hasattr(model, "merge_and_unload"):
        if base is not None:
            model.save_pretrained(str(path), safe_serialization=True)
            _write_adapter_base(path, base)
            tokenizer.save_pretrained(str(path))
            return
        model = model.merge_and_unload()
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def _write_adapter_base(path: Path, base: str) -> None:
    """Name the model an adapter folder adapts: a local folder relative to the adapter (a store moves whole)."""
    local = looks_local(base) or Path(str(base)).exists()
    ref = os.path.relpath(Path(str(base)).resolve(), path.resolve()) if local else str(base)
    (path / ADAPTER_BASE).write_text(json.dumps({"base": ref, "relative": local}, indent=2))
