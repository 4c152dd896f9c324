"""Token-wise constrained fine-tuning (Qi et al., "Safety Alignment Should Be Made More Than Just a Few Tokens
Deep", ICLR 2025; official code Unispac/shallow-vs-deep-alignment, ConstrainedSFTTrainer).

Per answer token t: loss_t = -w_t * log p_theta(y_t), w_t = 2 * sigmoid(-beta_t * (log p_theta(y_t) -
log p_ref(y_t))) detached (the same gradient as the paper's objective, its Appendix D.2), clamped below at
``weight_min`` as the official code does; the batch loss is the mean over all answer tokens. beta_t is larger
on the first tokens, so they may drift less from the aligned model. The reference log-probs are computed once
before training (per-example cache) from the aligned model.
"""

from __future__ import annotations

from typing import Any

import torch

from pact.data.labels import answer_positions
from pact.data.rows import SFTCollator
from pact.runtime.refcache import cached_per_example
from pact.runtime.store import stable_key
from pact.training.methods import FinetuneContext, Method


def beta_schedule(length: int, beta: float, first_factor: float, prefix_factor: float, prefix_len: int) -> torch.Tensor:
    """beta_t for answer positions t = 0..length-1: beta * first_factor at t = 0, beta * prefix_factor for
    t = 1..prefix_len-1, beta afterwards (official get_beta_list)."""
    out = torch.full((length,), float(beta))
    out[1:prefix_len] = beta * prefix_factor
    if length:
        out[0] = beta * first_factor
    return out


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t) [B, A] of the labelled answer tokens and the valid mask [B, A]."""
    pos, mask = answer_positions(labels)
    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = labels.gather(1, (pos + 1).clamp(max=labels.shape[1] - 1)).clamp_min(0)
    at_pos = logp.gather(1, pos.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))
    return at_pos.gather(-1, targets.unsqueeze(-1))[..., 0], mask


class ConstrainedSFT(Method):
    """Qi et al.'s token-wise constrained objective; defaults in conf/method/constrained_sft.yaml."""

    def training_overrides(self) -> dict[str, Any]:
        return {"warmup_steps": int(self.cfg.warmup_steps), "adam_beta1": float(self.cfg.adam_beta1)}

    def prepare_examples(self, examples: list[dict[str, Any]], ctx: FinetuneContext) -> list[dict[str, Any]]:
        from pact.models.loading import load_model

        model = None

        @torch.no_grad()
        def compute(batch: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
            nonlocal model
            model = model or (ctx.model or load_model(ctx.aligned.path, ctx.dtype)).eval()
            keep = ("input_ids", "labels", "attention_mask")  # the example's own mask, if any
            b = SFTCollator(0)([{k: e[k] for k in keep if k in e} for e in batch])
            b = {k: v.to(model.device) for k, v in b.items()}  # the model's device (the GPU when there is one)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logp, mask = token_logps(logits, b["labels"])
            return [{"logp": logp[i, : int(mask[i].sum())].cpu()} for i in range(len(batch))]

        cache = ctx.store.root / "refcache" / stable_key({"aligned": ctx.aligned.key, "kind": "label_logp",
                                                          "dtype": ctx.dtype})
        tensors, stats = cached_per_example(cache, examples, compute)
        self.stats.update(stats)
        return [{**e, "ref_logp": t["logp"]} for e, t in zip(examples, tensors)]

    def weights(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        """w_t = clamp(2 * sigmoid(-beta_t * (logp - ref_logp)), min=weight_min), no gradient."""
        beta = beta_schedule(logp.shape[1], float(self.cfg.beta), float(self.cfg.first_token_factor),
                             float(self.cfg.prefix_factor), int(self.cfg.prefix_len)).to(logp.device)
        w = 2 * torch.sigmoid(-beta * (logp.detach() - ref_logp))
        return w.clamp_min(float(self.cfg.weight_min)).detach()

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logp, mask = token_logps(outputs.logits, inputs["labels"])
        w = self.weights(logp, inputs["ref_logp"].to(logp.device))
        m = mask.float()
        loss = -(w * logp * m).sum() / m.sum().clamp_min(1)
        return (loss, outputs) if return_outputs else loss

