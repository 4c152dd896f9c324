"""The fine-tuning stage: the user's (possibly poisoned) rows, the method's hooks, the Trainer, the artifact.

Its own module so that a fine-tune's key hashes the code that fine-tunes (this file, the shared library and the
method's module) and nothing else: editing how the pipeline generates or evaluates leaves every fine-tune cached.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pact.data import rows as D
from pact.data.rundata import RunData, data_sizes, finetune_counts, plain
from pact.models.adapters import apply_lora
from pact.models.loading import ModelRef, load_model, load_tokenizer, untie_embeddings
from pact.runtime.store import Store, code_hash, module_sources
from pact.training.methods import FinetuneContext, build_method, method_class

# A fine-tune runs this shared code plus its own method's module (and what that imports), never the modules
# of other methods: editing one baseline changes the keys of its own fine-tunes only.
FINETUNE_LIBRARY = ("pact.training.finetune", "pact.data.rows", "pact.data.rundata", "pact.models.loading",
                    "pact.training.trainer", "pact.models.adapters", "pact.training.methods", "pact.runtime.refcache")


@functools.cache
def _finetune_code(method_module: str) -> str:
    return code_hash(*module_sources(*FINETUNE_LIBRARY, method_module))


def finetune_code(method_cfg: Any) -> str:
    """Hash of the code a fine-tune with this method runs: the shared library (this module included) and the
    module of the class the method's ``_target_`` names."""
    return _finetune_code(method_class(method_cfg).__module__)


def finetune_rows(cfg: DictConfig, data: RunData) -> list[dict[str, Any]]:
    """The user's fine-tuning set: n task rows with round(p * n) poison rows at seeded positions (finetune.n null:
    every row of the official file, its poison rows at seeded positions)."""
    rng = random.Random(int(cfg.seed))
    clean = data.task_rows(cfg.task.name)
    n, count = finetune_counts(cfg, data_sizes(data.artifact) if data.kind == "real" else {})
    poison = data.poison_rows(count, float(cfg.poison.ratio), float(cfg.poison.short_max_ratio), rng)
    return D.mix_poison(clean, poison, n, rng)


def finetune_slice(cfg: DictConfig) -> dict[str, Any]:
    """Exactly the config that decides the fine-tuned weights (the finetune stage's key)."""
    ft = plain(cfg.finetune)
    if not ft.get("untie_embeddings"):  # the default: absent from the key, as before the switch existed
        ft.pop("untie_embeddings", None)
    if ft.get("lora_dtype", "float32") == "float32":  # the same
        ft.pop("lora_dtype", None)
    if ft.get("attention_mask", "padding") == "padding":  # the same
        ft.pop("attention_mask", None)
    if cfg.method.get("adapter", "full") != "lora":
        ft.pop("lora")
        ft.pop("lora_lr")
        ft.pop("lora_dtype", None)
    elif ft.get("lora_lr") is not None:
        ft["optim"]["lr"] = ft.pop("lora_lr")
    return {"method": plain(cfg.method), "task": cfg.task.name, "poison": plain(cfg.poison), "finetune": ft,
            "seed": int(cfg.seed), "max_len": int(cfg.model.max_len), "code": finetune_code(cfg.method)}


def finetune_stage(store: Store, cfg: DictConfig, aligned: ModelRef, data: RunData,
                   base: ModelRef | None = None) -> ModelRef:
    """Fine-tune the aligned model with the configured method on the (possibly poisoned) task data."""
    slice_ = finetune_slice(cfg)
    upstream = {"aligned": aligned.key, **data.upstream, **({"base": base.key} if base else {})}

    def build(tmp: Path) -> dict[str, Any]:
        # the Trainer's stack is imported where it trains: a run that stops at a check never loads it
        from transformers import set_seed

        from pact.training.trainer import train, training_arguments

        tok = load_tokenizer(aligned.tokenizer_path, cfg.model.trust_remote_code)
        model = load_model(aligned.path, cfg.model.dtype, cfg.model.trust_remote_code)
        method = build_method(cfg.method)
        adapter = cfg.method.get("adapter", "full")
        ctx = FinetuneContext(aligned=aligned, base=base, data=data, tokenizer=tok,
                              prompt_format=aligned.prompt_format, max_len=int(cfg.model.max_len),
                              seed=int(cfg.seed), dtype=cfg.model.dtype, store=store, adapter=adapter,
                              model=model)
        method.prepare(ctx)
        rows = method.transform_data(finetune_rows(cfg, data), ctx)
        D.write_jsonl(tmp / "finetune_data.jsonl", rows)
        examples = D.encode_sft(rows, tok, aligned.prompt_format, int(cfg.model.max_len))
        if cfg.finetune.get("attention_mask", "padding") == "eos":  # the official mask (pact.data.rows.ATTENTION_MASKS)
            examples = D.hide_tokens(examples, tok.eos_token_id)
        examples = method.prepare_examples(examples, ctx)
        # LoRA's initialisation draws from torch's global RNG before the Trainer seeds it: seed here, or the
        # adapter depends on whatever ran earlier in the process (e.g. previous jobs in a joblib worker).
        set_seed(int(cfg.seed))
        if cfg.finetune.get("untie_embeddings"):  # an ablation: the toy model and SmolLM2 tie them
            untie_embeddings(model)
        model = method.configure_model(model, ctx)
        if adapter == "lora":
            model = apply_lora(model, cfg.finetune.lora, method.lora_layers(model.config.num_hidden_layers),
                               str(cfg.finetune.get("lora_dtype", "float32")))
        report_to = "wandb" if cfg.logger.name == "wandb" else "none"
        optim = OmegaConf.create(slice_["finetune"]["optim"])  # lora_lr applied
        args = training_arguments(optim, tmp / "trainer", int(cfg.seed), report_to,
                                  run_name(cfg), int(optim.logging_steps), **method.training_overrides())
        # LoRA: the artifact keeps the adapter and names the aligned model it adapts (pact.models.loading.save_model)
        metrics = train(model, tok, examples, args, method, tmp / "model", aligned.path if adapter == "lora" else None)
        return {"train": metrics, "rows": len(rows), "poison_rows": sum(bool(r.get("poison")) for r in rows),
                "method_stats": method.stats}

    art = store.build("finetune", slice_, upstream, build, collective=True)
    return ModelRef(art.key, str(art.path / "model"), aligned.prompt_format, str(art.path / "model"))


def run_name(cfg: DictConfig) -> str:
    """The run's name in logs and wandb: model-method-task-p<ratio>-s<seed>."""
    return f"{cfg.model.name}-{cfg.method.id}-{cfg.task.name}-p{cfg.poison.ratio:g}-s{cfg.seed}"
