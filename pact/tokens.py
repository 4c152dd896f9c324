"""Safety tokens: which vocabulary entries carry the aligned model's probability in refusals.

Teacher forcing over (harmful prompt, refusal) pairs: row t of a response's logits predicts response token t.
The PACT safety-token direction (issue #3) is built on these helpers.
"""

from __future__ import annotations

from typing import Any

import torch

from pact.data import prompt_ids


@torch.no_grad()
def response_logits(model, tokenizer, prompt: str, response: str, fmt: str, max_resp_len: int) -> torch.Tensor:
    """Logits [R, V] (float32) predicting each of the response's first ``max_resp_len`` tokens (no special
    tokens) after the prompt in format ``fmt``."""
    ctx = prompt_ids(tokenizer, prompt, fmt)
    resp = tokenizer(response, add_special_tokens=False)["input_ids"][:max_resp_len]
    ids = torch.tensor([ctx + resp], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(ctx) - 1: len(ctx) - 1 + len(resp)]


@torch.no_grad()
def mean_response_probs(model, tokenizer, pairs: list[dict[str, Any]], fmt: str, max_resp_len: int,
                        temperature: float = 1.0) -> torch.Tensor:
    """r = mean over pairs of (mean over response positions of softmax(logits / temperature)), shape [V]."""
    model.eval()
    total = None
    for pair in pairs:
        z = response_logits(model, tokenizer, pair["prompt"], pair["refusal"], fmt, max_resp_len)
        p = torch.softmax(z / temperature, dim=-1).mean(dim=0)
        total = p if total is None else total + p
    return total / len(pairs)
