"""One ``Trainer`` subclass that serves every method, and the helper that runs it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from pact import dist
from pact.data import SFTCollator
from pact.methods import Method


class MethodTrainer(Trainer):
    """HF ``Trainer`` whose loss and callbacks come from a :class:`~pact.methods.Method`."""

    def __init__(self, *args, method: Method, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        for cb in method.callbacks():
            self.add_callback(cb)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # The Trainer counts answer tokens over all DDP ranks; per rank, divide by that count / W so that
            # DDP's gradient average gives the global token mean (the Trainer's own compute_loss rescales the
            # same way). No-op on one process.
            num_items_in_batch = num_items_in_batch / self.accelerator.num_processes
        inputs = self.method.before_step(model, inputs)
        loss = self.method.training_step(self, model, inputs, num_items_in_batch)
        return loss if loss is not None else super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return self.method.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)


def training_arguments(cfg: Any, output_dir: Path, seed: int, report_to: str, run_name: str | None,
                       logging_steps: int, **overrides: Any) -> TrainingArguments:
    """TrainingArguments from an optimisation config slice (``lr``, ``epochs`` or ``max_steps``,
    ``batch_size``, ``grad_accum``, ``weight_decay``, ``warmup_ratio``, ``scheduler``, ``dtype``)."""
    max_steps = int(cfg.get("max_steps", -1) or -1)
    # batch_size is the global batch: under torchrun each of the W processes takes batch_size / W rows, so
    # one process and W processes take the same optimisation steps.
    world = dist.world_size()
    if int(cfg.batch_size) % world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world} torchrun processes")
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=int(cfg.batch_size) // world,
        gradient_accumulation_steps=int(cfg.get("grad_accum", 1)),
        learning_rate=float(cfg.lr),
        num_train_epochs=float(cfg.get("epochs", 1)),
        max_steps=max_steps,
        weight_decay=float(cfg.get("weight_decay", 0.0)),
        warmup_steps=float(cfg.get("warmup_ratio", 0.0)),
        lr_scheduler_type=str(cfg.get("scheduler", "linear")),
        max_grad_norm=float(cfg.get("max_grad_norm", 1.0)),
        bf16=str(cfg.get("dtype", "float32")) == "bfloat16",
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[] if report_to == "none" else [report_to],
        run_name=run_name,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        # without CUDA the Trainer must be told it is on CPU, or torchrun's processes each train alone (no DDP)
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=not sys.stderr.isatty(),  # progress bars for people, not for log files
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train(model: torch.nn.Module, tokenizer, examples: list[dict[str, Any]], args: TrainingArguments,
          method: Method) -> dict[str, float]:
    """Train ``model`` in place on pre-encoded ``examples``; returns the Trainer's train metrics."""
    trainer = MethodTrainer(model=model, args=args, train_dataset=examples,
                            data_collator=SFTCollator(tokenizer.pad_token_id), method=method)
    result = trainer.train()
    return dict(result.metrics)
