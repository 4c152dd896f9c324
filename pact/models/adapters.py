"""Adapters for fine-tuning (peft LoRA)."""

from __future__ import annotations

from typing import Any


def apply_lora(model, lora: Any, layers: list[int] | None = None, dtype: str = "float32"):
    """Wrap ``model`` with a peft LoRA adapter configured by the ``lora`` slice (on ``layers`` only if given).
    ``dtype``: ``float32`` keeps the adapter's weights in float32 whatever the model's dtype (peft's
    ``autocast_adapter_dtype``); ``model`` gives them the model's dtype, as the peft release the official PACT code
    pins did (a bf16 model then trains bf16 adapters, and AdamW keeps bf16 states)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                        layers_to_transform=layers)
    return get_peft_model(model, config, autocast_adapter_dtype=dtype == "float32")
