"""PACT as a :class:`~pact.training.methods.Method`: loss = CE + lambda * pact_kl on the safety-token subset.

The reference is the frozen aligned model in two contexts per answer token: the full sequence (``ref_full``)
and the assistant header followed by the answer alone (``ref_post``). ``reference: cache`` computes both once
per example (|S| numbers per answer token, keyed by the example's tokens, so seeds, lambdas and poison ratios
share it) and reads them during training; ``reference: live`` recomputes them every step as the official code
does (with LoRA from the same weights with the adapter disabled, else from a frozen copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pact.data.labels import IGNORE_INDEX, answer_positions
from pact.loss import pact_kl
from pact.runtime.refcache import cached_per_example
from pact.runtime.store import stable_key
from pact.tokens_stage import load_direction, tokens_stage
from pact.training.methods import FinetuneContext, Method, answer_loss

GATES = ("on", "off", "post_only")
WEIGHTINGS = ("raw", "uniform")
SUBSETS = ("safety", "vocab")
REFERENCES = ("cache", "live")
FALLBACK_HEADER = "Assistant:"  # official code's fallback when a template has no generation prompt


def assistant_header_ids(tokenizer) -> list[int]:
    """The ids the chat template adds for the generation prompt (template with it minus without it)."""
    msgs = [{"role": "user", "content": "hello"}]
    try:
        with_gen = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        without = tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    except (ValueError, AttributeError):  # no chat template
        with_gen = without = ""
    header = with_gen[len(without):] if with_gen.startswith(without) else ""
    return tokenizer(header or FALLBACK_HEADER, add_special_tokens=False)["input_ids"]


def subset_logits(logits: torch.Tensor, ids: torch.Tensor, bucket: bool) -> torch.Tensor:
    """logits[..., ids], plus (``bucket``) one column holding the log-sum-exp of all logits outside ``ids``."""
    sub = logits.index_select(-1, ids)
    if not bucket:
        return sub
    lse_all = torch.logsumexp(logits.float(), dim=-1)
    lse_in = torch.logsumexp(sub.float(), dim=-1)
    outside = lse_all + torch.log(torch.clamp(-torch.expm1(lse_in - lse_all), min=1e-30))
    return torch.cat([sub, outside.unsqueeze(-1).to(sub.dtype)], dim=-1)


class PactMethod(Method):
    """PACT (Wang et al., arXiv 2603.07445); defaults in conf/method/pact.yaml with their sources."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        for key, allowed in (("gate", GATES), ("weights", WEIGHTINGS), ("subset", SUBSETS),
                             ("reference", REFERENCES)):
            if cfg[key] not in allowed:
                raise ValueError(f"method.{key}={cfg[key]!r} is not allowed; choose one of {list(allowed)}")
        if float(cfg.lambda_kl) < 0:
            raise ValueError(f"method.lambda_kl={cfg.lambda_kl} must be >= 0")
        self.ids: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.header: list[int] = []
        self.ref_model = None
        self.last_kl = float("nan")

    # ---- preparation --------------------------------------------------------------------------------------
    def prepare(self, ctx: FinetuneContext) -> None:
        art = tokens_stage(ctx.store, self.cfg.tokens, ctx.aligned, ctx.base, ctx.data, ctx.dtype,
                           model=ctx.model, tokenizer=ctx.tokenizer)
        v, _ = load_direction(art)
        if self.cfg.subset == "vocab":
            self.ids = torch.arange(v.numel())
            self.weights = torch.ones(v.numel())
        else:
            self.ids = torch.nonzero(v).flatten()
            self.weights = v[self.ids].clone() if self.cfg.weights == "raw" else torch.ones(len(self.ids))
        if self.cfg.extra_bucket:  # ours: the bucket carries the mean positive safety weight
            positive = self.weights.clamp_min(0)
            bucket_w = positive[positive > 0].mean() if (positive > 0).any() else torch.tensor(1.0)
            self.weights = torch.cat([self.weights, bucket_w.reshape(1)])
        self.header = assistant_header_ids(ctx.tokenizer)
        if self.cfg.get("post_bos"):  # ablation: the post-only input starts with BOS, as a real context does
            if ctx.tokenizer.bos_token_id is None:
                raise ValueError("method.post_bos=true but the tokenizer has no BOS token")
            self.header = [ctx.tokenizer.bos_token_id, *self.header]
        self.tokens_key = art.key
        self.stats.update(tokens_dir=str(art.path), safety_set_size=int(len(self.ids)))
        if self.cfg.reference == "live" and ctx.adapter != "lora":
            from pact.models.loading import load_model

            self.ref_model = load_model(ctx.aligned.path, ctx.dtype).eval().requires_grad_(False)

    def _cache_dir(self, ctx: FinetuneContext) -> Path:
        key = stable_key({"aligned": ctx.aligned.key, "tokens": self.tokens_key, "subset": self.cfg.subset,
                          "bucket": bool(self.cfg.extra_bucket), "header": self.header, "dtype": ctx.dtype})
        return Path(ctx.store.root) / "refcache" / key

    def prepare_examples(self, examples: list[dict[str, Any]], ctx: FinetuneContext) -> list[dict[str, Any]]:
        """Cache mode: attach the reference's subset logits (full and post-only context) to every example,
        computing only the examples not yet in the per-example cache."""
        if self.cfg.reference != "cache" or float(self.cfg.lambda_kl) == 0:
            return examples
        from pact.models.loading import load_model

        model = None

        def compute(batch: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
            nonlocal model
            model = model or (ctx.model or load_model(ctx.aligned.path, ctx.dtype)).eval()
            full, post = self.reference(model, batch)
            lengths = [int((torch.as_tensor(e["labels"]) != IGNORE_INDEX).sum()) for e in batch]
            return [{"full": full[j, :n], "post": post[j, :n]} for j, n in enumerate(lengths)]

        tensors, stats = cached_per_example(self._cache_dir(ctx), examples, compute)
        self.stats.update(stats)
        return [{**e, "ref_full": t["full"], "ref_post": t["post"]} for e, t in zip(examples, tensors)]

    # ---- reference logits ---------------------------------------------------------------------------------
    def _post_only_batch(self, labels: torch.Tensor, input_ids: torch.Tensor, pad_id: int):
        """Header ids + answer tokens except the last, right-padded; answer positions start after the header."""
        rows, width = [], 0
        for lab, ids in zip(labels, input_ids):
            answer = ids[lab != IGNORE_INDEX].tolist()
            rows.append(self.header + answer[:-1])
            width = max(width, len(rows[-1]))
        batch = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(batch)
        for i, r in enumerate(rows):
            batch[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, :len(r)] = 1
        return batch, attn

    @torch.no_grad()
    def _reference_from_tensors(self, model, input_ids, attention_mask, labels, pad_id):
        ids = self.ids.to(input_ids.device)
        pos, _ = answer_positions(labels)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        full = subset_logits(logits, ids, bool(self.cfg.extra_bucket))
        full = full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        post_ids, post_attn = self._post_only_batch(labels, input_ids, pad_id)
        post_logits = model(input_ids=post_ids.to(input_ids.device),
                            attention_mask=post_attn.to(input_ids.device)).logits
        a = pos.shape[1]
        post = subset_logits(post_logits[:, len(self.header) - 1: len(self.header) - 1 + a], ids,
                             bool(self.cfg.extra_bucket))
        if post.shape[1] < a:  # every answer has >= 1 token, so this only pads the batch's widest case
            post = torch.nn.functional.pad(post, (0, 0, 0, a - post.shape[1]))
        return full.float(), post.float()

    def reference(self, model, examples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's subset logits of encoded ``examples`` (input_ids, labels) under ``model``:
        (full-context, post-only), each [B, A, |S|] float32 at the answer positions (padded rows: zeros)."""
        from pact.data.rows import SFTCollator

        pad = 0  # the padding id is irrelevant: padded positions are masked out of the loss
        keep = ("input_ids", "labels", "attention_mask")  # the example's own mask, if any (pact.data.rows.hide_tokens)
        batch = SFTCollator(pad)([{k: e[k] for k in keep if k in e} for e in examples])
        batch = {k: v.to(model.device) for k, v in batch.items()}  # the model's device (the GPU when there is one)
        full, post = self._reference_from_tensors(model, batch["input_ids"], batch["attention_mask"],
                                                  batch["labels"], pad)
        return full.cpu(), post.cpu()

    # ---- loss ---------------------------------------------------------------------------------------------
    def kl_options(self) -> dict[str, float | int]:
        """The keyword arguments of :func:`pact.loss.pact_kl` (and :func:`pact.loss.pact_gate`) from the config."""
        c = self.cfg
        return {"temperature": float(c.temperature), "gate_top_p": float(c.gate_top_p),
                "gate_alpha": float(c.gate_alpha), "gate_bias": float(c.gate_bias),
                "gate_temperature": float(c.gate_temperature), "prefix_n": int(c.prefix_n),
                "decay_tau": float(c.decay_tau), "prefix_boost": float(c.prefix_boost)}

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        ce, outputs, at_answers = answer_loss(trainer, model, inputs, num_items_in_batch)
        lam = float(self.cfg.lambda_kl)
        if lam == 0:
            return (ce, outputs) if return_outputs else ce
        ids = self.ids.to(labels.device)
        pos, mask = answer_positions(labels)
        sub = subset_logits(outputs.logits, ids, bool(self.cfg.extra_bucket))
        if at_answers:  # [N, S] at the valid answer positions -> [B, A, S], zeros where an answer has ended
            policy = sub.new_zeros(*mask.shape, sub.shape[-1])
            policy[mask] = sub
        else:
            policy = sub.gather(1, pos.unsqueeze(-1).expand(-1, -1, sub.shape[-1]))
        if self.cfg.reference == "cache":
            ref_full, ref_post = inputs["ref_full"], inputs["ref_post"]
        else:
            ref_full, ref_post = self._live_reference(model, inputs)
        gate = None
        if self.cfg.gate == "off":
            gate = torch.zeros_like(mask, dtype=torch.float32)
        elif self.cfg.gate == "post_only":
            gate = mask.float()
        kl = pact_kl(policy, ref_full, ref_post, mask, self.weights.to(labels.device), **self.kl_options(),
                     gate=gate)
        self.last_kl = float(kl.detach())
        loss = ce + lam * kl
        return (loss, outputs) if return_outputs else loss

    def _live_reference(self, model, inputs):
        args = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"], 0)
        if self.ref_model is not None:
            return self._reference_from_tensors(self.ref_model, *args)
        with model.disable_adapter():  # LoRA: the aligned weights are the base weights under the adapter
            was_training = model.training
            model.eval()
            try:
                return self._reference_from_tensors(model, *args)
            finally:
                model.train(was_training)
