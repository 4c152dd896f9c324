"""Safety tokens at the model level: teacher-forced passes over (harmful prompt, refusal) pairs, the PACT direction
of an aligned/base pair (:func:`pact.tokens.direction_from_logits`) and the cached ``tokens`` stage."""

from __future__ import annotations

from typing import Any

import torch

from pact.data import prompt_ids
from pact.store import code_hash, module_sources
from pact.tokens import direction_from_logits

TOKENS_CODE = code_hash(*module_sources(__name__))  # part of the tokens stage's key: the code it runs


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


@torch.no_grad()
def direction_from_models(aligned_model, base_model, tokenizer, pairs: list[dict[str, Any]], *, top_k: int = 50,
                          k_pairs: int = 512, max_resp_len: int = 64, mode: str = "p_diff",
                          temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, r): the direction over the first ``k_pairs`` (prompt, refusal) pairs in file order, and the mean
    aligned probability r. The aligned model reads the chat template, the base model the plain
    ``User: ...\\n\\nAssistant: `` string; both are followed by the refusal's tokens and use ``tokenizer``."""
    aligned_model.eval()
    base_model.eval()
    za, zb = [], []
    for pair in pairs[:k_pairs]:
        za.append(response_logits(aligned_model, tokenizer, pair["prompt"], pair["refusal"], "chat", max_resp_len))
        zb.append(response_logits(base_model, tokenizer, pair["prompt"], pair["refusal"], "plain", max_resp_len))
    v = direction_from_logits(za, zb, top_k=top_k, mode=mode, temperature=temperature)
    r = torch.stack([torch.softmax(z.double() / temperature, -1).mean(0) for z in za]).mean(0).float()
    return v, r


def tokens_stage(store, tcfg: Any, aligned, base, data, dtype: str = "float32", trust_remote_code: bool = False,
                 model=None, tokenizer=None):
    """The safety-token direction as a store artifact (``direction.safetensors``: v and r; ``meta.json``: S with
    each token decoded, its mean aligned probability r and its weight v). Needs the base model. The pairs:
    ``tcfg.pairs_file`` when set, else the run's data (pact.rundata.RunData.safety_pairs; ``model`` and
    ``tokenizer``, the aligned model already loaded, answer the safety prompts there instead of a second copy)."""
    from safetensors.torch import save_file

    from pact import data as D
    from pact.models import load_model, load_tokenizer

    if base is None:
        raise ValueError("PACT's safety tokens compare the aligned and the base model: set model.base "
                         "(a hub id or a local path)")
    if tcfg.get("pairs_file"):
        pairs_file, label, data_keys = tcfg.pairs_file, str(tcfg.pairs_file), dict(data.upstream)
    else:
        pairs_file, label, data_keys = data.safety_pairs(aligned, model, tokenizer)
    slice_ = {k: tcfg[k] for k in ("top_k", "k_pairs", "max_resp_len", "mode", "temperature")}
    slice_["pairs_file"] = label
    slice_["code"] = TOKENS_CODE
    upstream = {"aligned": aligned.key, "base": base.key, **data_keys}

    def build(tmp):
        tok = load_tokenizer(aligned.tokenizer_path, trust_remote_code)
        pairs = D.read_jsonl(pairs_file, ("prompt", "refusal"))
        m_aligned = load_model(aligned.path, dtype, trust_remote_code)
        m_base = load_model(base.path, dtype, trust_remote_code)
        v, r = direction_from_models(m_aligned, m_base, tok, pairs, top_k=int(tcfg.top_k),
                                     k_pairs=int(tcfg.k_pairs), max_resp_len=int(tcfg.max_resp_len),
                                     mode=str(tcfg.mode), temperature=float(tcfg.temperature))
        save_file({"v": v.contiguous(), "r": r.contiguous()}, str(tmp / "direction.safetensors"))
        ids = torch.nonzero(v).flatten().tolist()
        table = [{"id": i, "token": tok.decode([i]), "r": float(r[i]), "v": float(v[i])} for i in ids]
        return {"safety_set": table, "n_pairs": min(len(pairs), int(tcfg.k_pairs)), "size": len(ids)}

    return store.build("tokens", slice_, upstream, build)


def load_direction(artifact) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, r) of a tokens artifact."""
    from safetensors.torch import load_file

    tensors = load_file(str(artifact.file("direction.safetensors")))
    return tensors["v"], tensors["r"]
