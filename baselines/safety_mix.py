"""Safety-data mixing (Safety-Tuned LLaMAs / SafeInstr, Bianchi et al. 2023; "BeaverTails/VLGuard mix" rows of the
Vaccine and Lisa papers): safe (harmful prompt, refusal) pairs replace user rows in the fine-tuning set, so it
still has n rows in all."""

from __future__ import annotations

import random
from typing import Any

from pact.data import rows as D
from pact.training.methods import FinetuneContext, Method


class SafetyMix(Method):
    """``count`` refusal pairs (the toy world's alignment split; real data: PACT's safety pairs, the aligned model's
    own refusals; both disjoint from evaluation prompts) take the places of ``count`` clean user rows chosen at
    seeded random positions. ``count: null`` takes ``share`` of the fine-tuning rows instead (rounded)."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if (cfg.get("count") is None) == (cfg.get("share") is None):
            raise ValueError(f"method={cfg.id} needs exactly one of method.count (pairs) and method.share (a "
                             f"fraction of the fine-tuning rows); got count={cfg.get('count')}, "
                             f"share={cfg.get('share')}")
        if cfg.get("share") is not None and not 0 < float(cfg.share) < 1:
            raise ValueError(f"method.share={cfg.share} must be in (0, 1)")

    def pair_count(self, n_rows: int) -> int:
        """The number of safety pairs mixed into ``n_rows`` fine-tuning rows."""
        if self.cfg.get("count") is not None:
            return int(self.cfg.count)
        return round(float(self.cfg.share) * n_rows)

    def transform_data(self, rows: list[dict[str, Any]], ctx: FinetuneContext) -> list[dict[str, Any]]:
        count = self.pair_count(len(rows))
        source = self.cfg.get("pairs_file") or ctx.data.mixing_pairs(ctx.aligned, ctx.model, ctx.tokenizer)
        pairs = D.read_jsonl(source, ("prompt", "refusal"))
        clean = [i for i, r in enumerate(rows) if not r.get("poison")]
        if count > len(pairs) or count > len(clean):
            asked = (f"method.count={count}" if self.cfg.get("count") is not None else
                     f"method.share={self.cfg.share} of {len(rows)} rows: {count}")
            raise ValueError(f"{asked} safety pairs asked for; {len(pairs)} pairs and "
                             f"{len(clean)} clean rows available")
        rng = random.Random(ctx.seed)
        chosen = rng.sample(pairs, count)
        out = list(rows)
        for i, pair in zip(sorted(rng.sample(clean, count)), chosen):
            out[i] = {"prompt": pair["prompt"], "answer": pair["refusal"], "poison": False, "safety": True}
        self.stats["safety_rows"] = count
        return out
