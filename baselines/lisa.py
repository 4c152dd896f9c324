"""Lisa (Huang et al., "Lisa: Lazy Safety Alignment for Large Language Models against Harmful Fine-tuning
Attack", NeurIPS 2024; official code git-disl/Lisa, ``ADMMTrainer``).

Bi-state optimisation over one set of trainable weights and one optimiser: ``K1`` steps on alignment data,
then ``K2`` steps on the user's data, and so on, alignment first. During an alignment step the user batch is
replaced by an alignment batch (the user stream still advances). Each state adds a proximal term
rho/2 * ||w - w_anchor||^2, where the anchor is the weights at the end of the *other* state's last turn
(alignment state: the weights when fine-tuning last stopped; fine-tuning state: the weights when alignment
last stopped); it is skipped for the first ``proximal_skip_fraction`` of all steps, as the official code does.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from pact.data import rows as D
from pact.training.methods import FinetuneContext, Method, answer_loss

if TYPE_CHECKING:
    from transformers import TrainerCallback

ALIGN, FINETUNE = "alignment", "finetune"


class LisaState:
    """The switching clock (official ``check_mode``): switch when ``clock % K == 0 and steps != 0``."""

    def __init__(self, k_align: int, k_finetune: int):
        self.k = {ALIGN: k_align, FINETUNE: k_finetune}
        self.status = ALIGN if k_align > 0 else FINETUNE
        self.clock = 0
        self.steps = 0
        self.switches: list[tuple[int, str]] = []  # (step, new status)

    def tick(self) -> bool:
        """Advance one step; True when the status switched before this step."""
        switched = False
        if self.steps != 0 and self.k[self.status] > 0 and self.clock % self.k[self.status] == 0:
            other = FINETUNE if self.status == ALIGN else ALIGN
            if self.k[other] > 0:
                self.status = other
                self.switches.append((self.steps, other))
                switched = True
            self.clock = 0
        self.clock += 1
        self.steps += 1
        return switched


class Lisa(Method):
    """Lisa's bi-state optimisation with proximal terms; defaults in conf/method/lisa.yaml."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if not 0 < float(cfg.align_fraction) < 1:
            raise ValueError(f"method.align_fraction={cfg.align_fraction} must be in (0, 1)")
        self.state: LisaState | None = None
        self.anchors: dict[str, dict[str, torch.Tensor]] = {}
        self.align_examples: list[dict[str, Any]] = []
        self.rng = random.Random(0)
        self.total_steps = 0
        self.last_proximal = 0.0

    def prepare(self, ctx: FinetuneContext) -> None:
        source = self.cfg.get("align_file") or ctx.data.alignment_pairs()
        pairs = D.read_jsonl(source, ("prompt", "refusal"))[: int(self.cfg.align_rows) or None]
        rows = [{"prompt": p["prompt"], "answer": p["refusal"]} for p in pairs]
        self.align_examples = D.encode_sft(rows, ctx.tokenizer, ctx.prompt_format, ctx.max_len)
        self.rng = random.Random(ctx.seed)
        self.pad_id = ctx.tokenizer.pad_token_id

    def schedule(self, total_steps: int) -> tuple[int, int]:
        """(K1, K2): ``cycles`` alignment/fine-tuning rounds over the run, split align_fraction : rest
        (official 100/900 over 20,000 steps = 20 rounds at 1:9)."""
        cycle = max(2, round(total_steps / int(self.cfg.cycles)))
        k1 = max(1, round(float(self.cfg.align_fraction) * cycle))
        return k1, max(1, cycle - k1)

    def _snapshot(self, model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, model, total_steps: int) -> None:
        self.total_steps = total_steps
        self.state = LisaState(*self.schedule(total_steps))
        snap = self._snapshot(model)
        self.anchors = {ALIGN: snap, FINETUNE: {n: t.clone() for n, t in snap.items()}}
        self.stats.update(k_align=self.state.k[ALIGN], k_finetune=self.state.k[FINETUNE],
                          total_steps=total_steps)

    def before_step(self, model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Advance the clock, record the anchor on a switch, and swap in an alignment batch when aligning."""
        if self.state.tick():
            left = ALIGN if self.state.status == FINETUNE else FINETUNE
            self.anchors[left] = self._snapshot(model)  # the weights at the end of the state just left
        if self.state.status != ALIGN:
            return inputs
        batch = self.rng.sample(self.align_examples, min(len(self.align_examples), inputs["input_ids"].shape[0]))
        return {k: v.to(inputs["input_ids"].device) for k, v in D.SFTCollator(self.pad_id)(batch).items()}

    def proximal(self, model) -> torch.Tensor:
        """rho/2 * sum ||w - anchor||^2 over trainable weights; the anchor is the other state's last end."""
        anchor = self.anchors[FINETUNE if self.state.status == ALIGN else ALIGN]
        terms = [torch.sum((p - anchor[n].to(p.device)) ** 2) for n, p in model.named_parameters() if p.requires_grad]
        return float(self.cfg.rho) / 2 * torch.stack(terms).sum()

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The batch's own token mean (num_items_in_batch counts the user batch, which an alignment step replaces);
        # a frozen LM head runs at the answer positions only (answer_logits), the same gradients to the bit.
        loss, outputs, _ = answer_loss(trainer, model, inputs)
        skip = float(self.cfg.proximal_skip_fraction) * self.total_steps
        if float(self.cfg.rho) > 0 and self.state.steps > skip:
            prox = self.proximal(model)
            self.last_proximal = float(prox.detach())
            loss = loss + prox
        return (loss, outputs) if return_outputs else loss

    def callbacks(self) -> list[TrainerCallback]:
        from transformers import TrainerCallback  # here, not at the top: validating a config imports this module

        method = self

        class _Begin(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                method.on_train_begin(model, state.max_steps)

            def on_train_end(self, args, state, control, **kwargs):
                method.stats["switches"] = method.state.switches[:50]

        return [_Begin()]
