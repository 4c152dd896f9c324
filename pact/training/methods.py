"""The ``Method`` interface: PACT and every baseline change the standard SFT recipe at a few hooks.

A method is a small object built from its ``conf/method/<name>.yaml`` slice. The fine-tuning stage calls, in
order: ``prepare`` (precompute what the method needs), ``transform_data`` (e.g. mix in safety data),
``configure_model`` (freeze layers, adapters), then trains with ``MethodTrainer``, which asks the method for
its ``compute_loss`` and ``callbacks``. SFT is the method that changes nothing. Adding a method = one module
with a subclass of :class:`Method`, plus one ``conf/method/<id>.yaml`` whose ``_target_`` names that class; the
library never imports the modules that implement methods, it resolves ``_target_`` when a config is validated.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pact.data.labels import answer_positions

if TYPE_CHECKING:  # a method's module is imported to validate its config: no Trainer stack for that
    from transformers import TrainerCallback


@dataclass
class FinetuneContext:
    """What a method may read while it prepares: the aligned model, the run's data (pact.data.rundata.RunData: toy world
    or real sources), and a store for its own cached artifacts (keyed by the method's config and the aligned
    model's key)."""

    aligned: Any            # pact.run.pipeline.ModelRef of the aligned model (the fine-tuning start point)
    base: Any               # ModelRef of the base model, or None (hub models without one)
    data: Any               # the run's pact.data.rundata.RunData
    tokenizer: Any
    prompt_format: str
    max_len: int
    seed: int
    dtype: str = "float32"
    store: Any = None
    adapter: str = "full"
    model: Any = None       # the loaded aligned model, before any method changes it (reuse it, don't reload)


class Method:
    """Standard SFT. Subclasses override the hooks they need."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.stats: dict[str, Any] = {}  # what the method measured about itself (goes to the stage's meta)

    def prepare(self, ctx: FinetuneContext) -> None:
        """Precompute anything the method needs before training (default: nothing)."""

    def transform_data(self, rows: list[dict[str, Any]], ctx: FinetuneContext) -> list[dict[str, Any]]:
        """Change the fine-tuning rows (default: unchanged)."""
        return rows

    def prepare_examples(self, examples: list[dict[str, Any]], ctx: FinetuneContext) -> list[dict[str, Any]]:
        """Attach per-example tensors to the encoded examples (default: unchanged); the collator pads them."""
        return examples

    def configure_model(self, model: torch.nn.Module, ctx: FinetuneContext) -> torch.nn.Module:
        """Freeze parameters or wrap the model (default: unchanged; adapters are applied by the stage)."""
        return model

    def training_overrides(self) -> dict[str, Any]:
        """TrainingArguments fields the method sets itself (default: none), e.g. its own warm-up."""
        return {}

    def lora_layers(self, depth: int) -> list[int] | None:
        """The layer indices that get LoRA adapters (default: None = all layers)."""
        return None

    def training_step(self, trainer, model, inputs: dict[str, torch.Tensor], num_items_in_batch=None):
        """Run a whole training step itself and return its loss, or None for the Trainer's (default)."""
        return None

    def alignment_method(self) -> Method | None:
        """The method the ``align`` stage uses for an alignment-stage defence (default: None, plain SFT)."""
        return None

    def before_step(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called before each training step with its batch; may return another batch (default: unchanged)."""
        return inputs

    def compute_loss(self, trainer, model, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch=None):
        """The training loss (default: the model's token cross-entropy on the labelled answer tokens)."""
        loss, outputs, _ = answer_loss(trainer, model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def callbacks(self) -> list[TrainerCallback]:
        """Trainer callbacks (default: none)."""
        return []


def _unwrap(model):
    return getattr(model, "module", model)  # DDP's wrapper


def answers_only(trainer, model) -> bool:
    """Whether the output layer may run at the answer positions only: the optimisation slice's ``answer_logits``
    is on (MethodTrainingArguments) and the layer is frozen (LoRA). A trained layer's weight gradient would sum
    the same terms in another order, so its runs keep every position."""
    if trainer is None or not getattr(trainer.args, "answer_logits", False):
        return False
    head = _unwrap(model).get_output_embeddings()
    weight = getattr(head, "weight", None)
    return isinstance(weight, torch.nn.Parameter) and not weight.requires_grad


@contextmanager
def head_at(model, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """Within the block, the model's output layer computes logits only at the (row, position) pairs ``rows[i]``,
    ``cols[i]`` (its input is gathered there), so ``outputs.logits`` is [N, V]. The model's own forward runs
    (DDP, peft and the model's logit post-processing all apply)."""
    def gather(_module, args):
        return (args[0][rows, cols], *args[1:])

    handle = _unwrap(model).get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def answer_loss(trainer, model, inputs: dict[str, torch.Tensor], num_items_in_batch=None):
    """(loss, outputs, at_answers): the model's token cross-entropy on the labelled answer tokens (HF's causal-LM
    loss). With :func:`answers_only`, ``outputs.logits`` holds only the logits that predict answer tokens
    ([N, V], at_answers=True), in the order of the valid entries of pact.data.labels.answer_positions' [B, A] mask:
    the prompt and padding positions never reach the output layer, whose matrix product is a fifth of a LoRA
    step with SmolLM2's 49k vocabulary. Else the model's forward with ``labels`` ([B, L, V], at_answers=False)."""
    labels = inputs["labels"]
    if not answers_only(trainer, model):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        num_items_in_batch=num_items_in_batch)
        return outputs.loss, outputs, False
    pos, mask = answer_positions(labels)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(pos)[mask]
    cols = pos[mask]
    with head_at(model, rows, cols):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    loss = _unwrap(model).loss_function(logits=outputs.logits, labels=None, vocab_size=outputs.logits.shape[-1],
                                        num_items_in_batch=num_items_in_batch, shift_labels=labels[rows, cols + 1])
    outputs.loss = loss
    return loss, outputs, True


def method_class(cfg: Any) -> type[Method]:
    """The class a method slice names in its ``_target_`` (a dotted path ``package.module.Class``)."""
    target = cfg.get("_target_") if hasattr(cfg, "get") else None
    label = cfg.get("id", "?") if hasattr(cfg, "get") else "?"
    where = f"method {label!r} (conf/method/{label}.yaml)"
    if not target:
        raise ValueError(f"{where} names no class: set _target_ to the dotted path of a Method subclass")
    module_name, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else None
    except ImportError as err:
        raise ValueError(f"{where}: _target_={target!r} cannot be imported ({err})") from None
    except AttributeError:
        cls = None
    if cls is None:
        raise ValueError(f"{where}: _target_={target!r} does not exist")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{where}: _target_={target!r} is not a subclass of pact.training.methods.Method")
    return cls


def build_method(cfg: Any) -> Method:
    """Instantiate the class named by the method slice's ``_target_`` with the whole slice."""
    return method_class(cfg)(cfg)
