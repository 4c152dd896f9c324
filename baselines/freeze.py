"""Safety-layer freezing (SPPFT, "Safety Layers in Aligned LLMs", Li et al., ICLR 2025): the aligned model's
safety layers get no update during fine-tuning. Full fine-tuning: ``requires_grad=False`` on the block [a, b];
LoRA: no adapters on those layers (peft ``layers_to_transform``).

Published blocks exist only for real models (``conf/method/freeze.yaml``); elsewhere ``layers: auto`` runs the
``safety_layers`` stage, which localises the block with the paper's statistic: per layer, the gap between the
mean cosine similarity of last-token hidden states within benign prompts and across benign/harmful prompts;
the block is the contiguous window (``window_fraction`` of the depth) where that gap grows the most.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from pact.data import rows as D
from pact.runtime.store import stable_key
from pact.training.methods import FinetuneContext, Method


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a (peft-wrapped or plain) causal LM."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers


@torch.no_grad()
def cosine_gap_by_layer(model, tokenizer, harmful: list[str], benign: list[str], fmt: str) -> list[float]:
    """Per layer: mean cos(benign, benign) - mean cos(benign, harmful) of last-token hidden states."""
    model.eval()

    def last_states(prompts: list[str]) -> torch.Tensor:  # [layers, n, hidden]
        states = []
        for p in prompts:
            ids = torch.tensor([D.prompt_ids(tokenizer, p, fmt)], device=model.device)
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states[1:]
            states.append(torch.stack([h[0, -1].float() for h in hs]))
        return torch.nn.functional.normalize(torch.stack(states, dim=1), dim=-1)

    b, h = last_states(benign), last_states(harmful)
    bb = torch.einsum("lid,ljd->lij", b, b)
    off_diag = ~torch.eye(bb.shape[1], dtype=torch.bool)
    within = bb[:, off_diag].mean(dim=1)
    across = torch.einsum("lid,ljd->lij", b, h).mean(dim=(1, 2))
    return (within - across).tolist()


def best_window(gaps: list[float], width: int) -> tuple[int, int]:
    """The contiguous [a, b] (inclusive, ``width`` layers) over which the gap grows the most."""
    growth = [gaps[0]] + [gaps[i] - gaps[i - 1] for i in range(1, len(gaps))]
    starts = range(0, len(gaps) - width + 1)
    a = max(starts, key=lambda s: (sum(growth[s:s + width]), -s))
    return a, a + width - 1


class Freeze(Method):
    """Freeze (full FT) or skip (LoRA) the safety layers."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if cfg.layers != "auto" and (len(cfg.layers) != 2 or cfg.layers[0] > cfg.layers[1]):
            raise ValueError(f"method.layers={cfg.layers} must be 'auto' or [a, b] with a <= b")
        if int(cfg.get("localise_prompts", 1)) < 1:
            raise ValueError(f"method.localise_prompts={cfg.localise_prompts} must be >= 1")
        self.block: tuple[int, int] | None = None

    def prepare(self, ctx: FinetuneContext) -> None:
        from pact.models.loading import load_model

        model = ctx.model or load_model(ctx.aligned.path, ctx.dtype)
        depth = len(decoder_layers(model))
        if self.cfg.layers == "auto":
            a, b = self._localise(ctx, model, depth)
        else:
            a, b = int(self.cfg.layers[0]), int(self.cfg.layers[1])
        if self.cfg.control:  # a same-width block as far from the safety block as the depth allows
            width = b - a + 1
            a = 0 if a >= depth - (b + 1) else depth - width
            b = a + width - 1
        if not 0 <= a <= b < depth:
            raise ValueError(f"safety block [{a}, {b}] is outside the model's {depth} layers")
        self.block = (a, b)
        self.stats.update(block=[a, b], depth=depth, control=bool(self.cfg.control))

    def _localise(self, ctx: FinetuneContext, model, depth: int) -> tuple[int, int]:
        n_prompts = int(self.cfg.localise_prompts)
        slice_ = {"prompts": n_prompts, "fraction": float(self.cfg.window_fraction)}

        def build(tmp):
            harmful_file, benign_file = ctx.data.localisation_prompts()
            harmful = [r["prompt"] for r in D.read_jsonl(harmful_file, ("prompt",))]
            benign = [r["prompt"] for r in D.read_jsonl(benign_file, ("prompt",))]
            gaps = cosine_gap_by_layer(model, ctx.tokenizer, harmful[:n_prompts],
                                       benign[:n_prompts], ctx.prompt_format)
            width = max(1, round(float(self.cfg.window_fraction) * depth))
            block = best_window(gaps, width)
            (tmp / "safety_layers.json").write_text(json.dumps({"gaps": gaps, "block": block}, indent=2))
            return {"block": list(block), "gaps": gaps}

        art = ctx.store.build("safety_layers", {**slice_, "key": stable_key(slice_)},
                              {"aligned": ctx.aligned.key, **ctx.data.upstream}, build)
        a, b = json.loads(art.file("safety_layers.json").read_text())["block"]
        return int(a), int(b)

    def configure_model(self, model, ctx: FinetuneContext):
        a, b = self.block
        if ctx.adapter == "full":
            for layer in list(decoder_layers(model))[a:b + 1]:
                layer.requires_grad_(False)
        return model

    def lora_layers(self, depth: int) -> list[int] | None:
        a, b = self.block
        return [i for i in range(depth) if not a <= i <= b]
