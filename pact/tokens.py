"""Safety tokens: which vocabulary entries carry the aligned model's probability in refusals.

Teacher forcing over (harmful prompt, refusal) pairs: row t of a response's logits predicts response token t.
The PACT safety-token direction (issue #3) is built on these helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pact.data import prompt_ids
from pact.store import code_hash

TOKENS_CODE = code_hash(Path(__file__), Path(__file__).with_name("data.py"))  # part of the tokens stage key


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


DIRECTION_MODES = ("p_diff", "pref_logratio")
ZERO_EPS = 1e-9  # entries with |d| <= this are "off" (official code)
STD_EPS = 1e-6   # z-score denominator and final norm epsilon (official code)


def direction_from_logits(aligned: list[torch.Tensor], base: list[torch.Tensor], top_k: int = 50,
                          mode: str = "p_diff", temperature: float = 1.0) -> torch.Tensor:
    """The PACT safety-token direction v [V] from teacher-forced response logits of the aligned and base models
    (row t of each [R_i, V] tensor predicts response token t).

    diff_t = p_a - p_b (``p_diff``) or p_a * (log p_b - log p_a) (``pref_logratio``; the official code's sign,
    which flips which tokens get positive weight); d = mean over samples of the per-sample position mean; keep
    d only on the ``top_k`` tokens by mean aligned probability r; z-score the nonzero entries; v = d / ||d||.
    The safety set S is nonzero(v).
    """
    if mode not in DIRECTION_MODES:
        raise ValueError(f"mode={mode!r}; expected one of {DIRECTION_MODES}")
    if not aligned or len(aligned) != len(base):
        raise ValueError(f"need the same positive number of aligned and base samples, got {len(aligned)} "
                         f"and {len(base)}")
    d_sum = r_sum = None
    for za, zb in zip(aligned, base):
        if za.shape != zb.shape:
            raise ValueError(f"aligned and base logits differ in shape: {tuple(za.shape)} vs {tuple(zb.shape)}")
        log_pa = torch.log_softmax(za.double() / temperature, dim=-1)
        log_pb = torch.log_softmax(zb.double() / temperature, dim=-1)
        pa = log_pa.exp()
        diff = pa - log_pb.exp() if mode == "p_diff" else pa * (log_pb - log_pa)
        d_i, r_i = diff.mean(dim=0), pa.mean(dim=0)
        d_sum = d_i if d_sum is None else d_sum + d_i
        r_sum = r_i if r_sum is None else r_sum + r_i
    d, r = d_sum / len(aligned), r_sum / len(aligned)
    if 0 < top_k < d.numel():
        keep = torch.zeros_like(d, dtype=torch.bool)
        keep[r.topk(top_k).indices] = True
        d = torch.where(keep, d, torch.zeros_like(d))
    on = d.abs() > ZERO_EPS
    if int(on.sum()) > 1:
        vals = d[on]
        d = d.clone()
        d[on] = (vals - vals.mean()) / (vals.std(unbiased=True) + STD_EPS)
    return (d / (d.norm() + STD_EPS)).float()


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


def tokens_stage(store, tcfg: Any, aligned, base, world, dtype: str = "float32", trust_remote_code: bool = False):
    """The safety-token direction as a store artifact (``direction.safetensors``: v and r; ``meta.json``: S with
    each token decoded, its mean aligned probability r and its weight v). Needs the base model."""
    from safetensors.torch import save_file

    from pact import data as D
    from pact.models import load_model, load_tokenizer

    if base is None:
        raise ValueError("PACT's safety tokens compare the aligned and the base model: set model.base "
                         "(a hub id or a local path)")
    pairs_file = tcfg.get("pairs_file") or (world.file("safety_pairs.jsonl") if world else None)
    if pairs_file is None:
        raise ValueError("method.tokens.pairs_file is required without a toy world")
    slice_ = {k: tcfg[k] for k in ("top_k", "k_pairs", "max_resp_len", "mode", "temperature")}
    slice_["pairs_file"] = str(tcfg.get("pairs_file") or "world:safety_pairs")
    slice_["code"] = TOKENS_CODE
    upstream = {"aligned": aligned.key, "base": base.key, **({"world": world.key} if world else {})}

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
