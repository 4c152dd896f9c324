"""Adapters for fine-tuning (peft LoRA)."""

from __future__ import annotations

from typing import Any


def apply_lora(model, lora: Any, layers: list[int] | None = None):
    """Wrap ``model`` with a peft LoRA adapter configured by the ``lora`` slice (on ``layers`` only if given)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora.r), lora_alpha=int(lora.alpha), lora_dropout=float(lora.dropout),
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                        layers_to_transform=layers)
    return get_peft_model(model, config)
