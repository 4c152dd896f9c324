"""Booster (Huang et al., "Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating Harmful
Perturbation", ICLR 2025; official code git-disl/Booster at 6421918c58da9b547a6fc952b03540e380d71537,
``BoosterAlignmentTrainer`` in trainer.py, run by script/alignment/smooth_align.sh).

An alignment-stage defence. Each alignment step also draws a batch of harmful pairs (a harmful prompt with a
harmful answer) and takes three gradients: g_h, of the harmful loss at the weights w; g_h', of the harmful loss at
w - alpha * g_h / (||g_h|| + 1e-7), a simulated harmful step of fixed size; and g_a, of the alignment loss at w.
The update follows g_a + lambda * (g_h - g_h'): the alignment loss plus lambda times the drop in harmful loss that
the simulated step would cause, with g_h held fixed, so that harmful fine-tuning later lowers the harmful loss
slowly. Fine-tuning is then plain SFT from the Booster-aligned model. The harmful pairs: the toy world's alignment
prompts with their harmful answers (``harmful_align`` holds both); on real data the source ``data.harmful_pairs``
names (official: BeaverTails' harmful pairs), without any prompt the run evaluates or fine-tunes on, so that the
defence never sees the attacker's rows or the benchmarks.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from pact.data import rows as D
from pact.training.methods import FinetuneContext, Method

NORM_EPS = 1e-7  # official _grad_norm(...) + 1e-7


class BoosterAlignment(Method):
    """The Booster alignment step used by the ``align`` stage; harmful pairs from :meth:`prepare`."""

    reads_harmful_pairs = True   # pact.run.pipeline.defence_align_stage keys the alignment by data.harmful_pairs

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        for key in ("lamb", "alpha"):
            if float(cfg[key]) < 0:
                raise ValueError(f"method.{key}={cfg[key]} must be at least 0")
        if int(cfg.harmful_batch_size) < 1:
            raise ValueError(f"method.harmful_batch_size={cfg.harmful_batch_size} must be at least 1")
        self.harmful: list[dict[str, Any]] = []
        self.order: list[int] = []
        self.rng = random.Random(0)
        self.pad_id = 0

    def prepare(self, ctx: FinetuneContext) -> None:
        if ctx.data.kind == "real":
            rows = ctx.data.harmful_pairs()
        else:
            field = str(self.cfg.harmful_answer)
            try:
                pairs = D.read_jsonl(ctx.data.alignment_pairs(), ("prompt", field))
            except D.DataFileError as err:
                raise D.DataFileError(f"method=booster reads each alignment prompt's harmful answer "
                                      f"(method.harmful_answer={field!r}): {err}") from None
            rows = [{"prompt": p["prompt"], "answer": p[field]} for p in pairs]
        rows = rows[: int(self.cfg.harmful_rows) or None]
        self.harmful = D.encode_sft(rows, ctx.tokenizer, ctx.prompt_format, ctx.max_len)
        self.rng = random.Random(ctx.seed)
        self.pad_id = ctx.tokenizer.pad_token_id
        self.stats["harmful_rows"] = len(self.harmful)

    def harmful_batch(self) -> list[dict[str, Any]]:
        """The next ``harmful_batch_size`` harmful examples: a seeded shuffle, drawn in order and reshuffled when
        used up (the official RandomSampler, iterated again when exhausted)."""
        batch = []
        while len(batch) < int(self.cfg.harmful_batch_size):
            if not self.order:
                self.order = list(range(len(self.harmful)))
                self.rng.shuffle(self.order)
            batch.append(self.harmful[self.order.pop()])
        return batch

    def _gradients(self, trainer, model, batch: dict[str, torch.Tensor], params: list[torch.Tensor]):
        model.zero_grad(set_to_none=True)
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, batch)
        trainer.accelerator.backward(loss)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        model.zero_grad(set_to_none=True)
        return grads

    def training_step(self, trainer, model, inputs, num_items_in_batch=None):
        from transformers import Trainer  # here, not at the top: validating a config imports this module

        if not self.harmful:
            raise RuntimeError("BoosterAlignment.prepare was not called: the align stage gives it the harmful pairs")
        params = [p for p in model.parameters() if p.requires_grad]
        held = [None if p.grad is None else p.grad.detach().clone() for p in params]  # gradient accumulation
        device = inputs["input_ids"].device
        harmful = {k: v.to(device) for k, v in D.SFTCollator(self.pad_id)(self.harmful_batch()).items()}
        g_h = self._gradients(trainer, model, harmful, params)
        norm = torch.norm(torch.stack([g.norm() for g in g_h])) + NORM_EPS
        step = [float(self.cfg.alpha) * g / norm for g in g_h]
        with torch.no_grad():
            for p, s in zip(params, step):
                p.sub_(s)
        g_moved = self._gradients(trainer, model, harmful, params)
        with torch.no_grad():
            for p, s in zip(params, step):
                p.add_(s)
        loss = Trainer.training_step(trainer, model, inputs, num_items_in_batch)   # g_a, into .grad
        lamb = float(self.cfg.lamb)
        with torch.no_grad():
            for p, a, b, h in zip(params, g_h, g_moved, held):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(lamb * (a - b))
                if h is not None:
                    p.grad.add_(h)
        return loss


class Booster(Method):
    """Plain SFT at fine-tuning time; :meth:`alignment_method` supplies the Booster alignment."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        BoosterAlignment(cfg)   # its checks, when the config is validated

    def alignment_method(self) -> Method:
        return BoosterAlignment(self.cfg)
