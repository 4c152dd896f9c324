"""One ``Trainer`` subclass that serves every method, and the helper that runs it."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from pact.data.rows import SFTCollator
from pact.models.loading import save_model
from pact.runtime import dist
from pact.training.methods import Method

# optim.scheduler=step: the learning rate times gamma after every epoch (torch's StepLR with step_size = one epoch),
# as the official PACT fine-tuning steps it once per epoch. HF's get_scheduler has no such type: MethodTrainer
# builds it.
STEP = "step"


@dataclass
class MethodTrainingArguments(TrainingArguments):
    """TrainingArguments plus the per-epoch step decay (``step_gamma``; None: HF's ``lr_scheduler_type``)."""

    step_gamma: float | None = field(default=None, metadata={"help": "lr *= step_gamma after every epoch"})
    answer_logits: bool = field(default=False, metadata={
        "help": "a frozen output layer runs at the answer positions only (pact.training.methods.answer_loss)"})


def per_epoch_step_decay(optimizer: torch.optim.Optimizer, gamma: float, steps_per_epoch: int):
    """A LambdaLR whose factor is gamma ** (completed epochs): StepLR(step_size=1 epoch) on optimiser steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** (step // steps_per_epoch))


class MethodTrainer(Trainer):
    """HF ``Trainer`` whose loss and callbacks come from a :class:`~pact.training.methods.Method`."""

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

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        gamma = getattr(self.args, "step_gamma", None)
        if gamma is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = per_epoch_step_decay(optimizer or self.optimizer, float(gamma),
                                                 self.update_steps_per_epoch())
        return self.lr_scheduler

    def update_steps_per_epoch(self) -> int:
        """Optimiser steps in one pass over the training set (as the Trainer counts them, >= 1)."""
        batches = math.ceil(len(self.train_dataset) / (self.args.per_device_train_batch_size * self.args.world_size))
        return max(batches // self.args.gradient_accumulation_steps, 1)


def training_arguments(cfg: Any, output_dir: Path, seed: int, report_to: str, run_name: str | None,
                       logging_steps: int, **overrides: Any) -> TrainingArguments:
    """TrainingArguments from an optimisation config slice (``lr``, ``epochs`` or ``max_steps``,
    ``batch_size``, ``grad_accum``, ``weight_decay``, ``warmup_ratio``, ``scheduler`` (an HF scheduler type, or
    ``step`` with ``step_gamma``), ``max_grad_norm``, ``dtype``)."""
    max_steps = int(cfg.get("max_steps", -1) or -1)
    # batch_size is the global batch: under torchrun each of the W processes takes batch_size / W rows, so
    # one process and W processes take the same optimisation steps.
    world = dist.world_size()
    scheduler = str(cfg.get("scheduler", "linear"))
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
        lr_scheduler_type=str(scheduler) if scheduler != STEP else "constant",  # step: MethodTrainer's own
        step_gamma=float(cfg.step_gamma) if scheduler == STEP else None,
        answer_logits=bool(cfg.get("answer_logits", False)),
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
    if cfg.get("group_by_length"):
        kwargs["train_sampling_strategy"] = "group_by_length"
    if cfg.get("gradient_checkpointing"):  # non-reentrant: works with frozen inputs (LoRA) without input grads
        kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    kwargs.update(overrides)
    return MethodTrainingArguments(**kwargs)


def train(model: torch.nn.Module, tokenizer, examples: list[dict[str, Any]], args: TrainingArguments,
          method: Method, save_to: Path | None = None, base: str | None = None) -> dict[str, float]:
    """Train ``model`` in place on pre-encoded ``examples``; returns the Trainer's train metrics. With ``save_to``,
    save it there (pact.models.loading.save_model; ``base``: keep a LoRA adapter only). Under FSDP (an accelerate config
    with ``fsdp_state_dict_type: FULL_STATE_DICT``) every rank joins in gathering the full state dict first."""
    trainer = MethodTrainer(model=model, args=args, train_dataset=examples,
                            data_collator=SFTCollator(tokenizer.pad_token_id), method=method)
    result = trainer.train()
    if save_to is not None:
        state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
        save_model(model, tokenizer, save_to, base, state)
    return dict(result.metrics)
