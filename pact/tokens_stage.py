"""Safety tokens at the model level: teacher-forced passes over (harmful prompt, refusal) pairs, the PACT direction
of an aligned/base pair (:class:`pact.tokens.DirectionSums`) and the cached ``tokens`` stage."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from pact.data.rows import prompt_ids
from pact.runtime.store import code_hash, module_sources
from pact.tokens import DirectionSums

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
                          temperature: float = 1.0, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, r): the direction over the first ``k_pairs`` (prompt, refusal) pairs in file order, and the mean
    aligned probability r. The aligned model reads the chat template, the base model the plain
    ``User: ...\n\nAssistant: `` string; both are followed by the refusal's tokens and use ``tokenizer``.
    ``chunk`` pairs' logits are held at a time (memory only: the result does not depend on it)."""
    def passes(model, fmt: str, part: list[dict[str, Any]]) -> list[torch.Tensor]:
        return [response_logits(model, tokenizer, pair["prompt"], pair["refusal"], fmt, max_resp_len)
                for pair in part]

    aligned_model.eval()
    base_model.eval()
    on_cpu = next(aligned_model.parameters()).device.type == "cpu"
    side_by_side = on_cpu and torch.get_num_threads() > 1
    sums = DirectionSums(mode, temperature)
    r_rows = []
    # On CPU every pass runs on one intra-op thread, so the safety set does not depend on the thread count (a
    # kernel's reduction order does); with two threads or more, the two models' passes run side by side in two
    # Python threads (torch releases the GIL inside its kernels): the same arithmetic in about half the time.
    with intra_op_threads(1) if on_cpu else nullcontext(), ThreadPoolExecutor(2) as pool:
        for lo in range(0, min(len(pairs), k_pairs), chunk):
            part = pairs[lo:min(lo + chunk, k_pairs)]
            if side_by_side:
                jobs = [pool.submit(passes, aligned_model, "chat", part),
                        pool.submit(passes, base_model, "plain", part)]
                za, zb = (job.result() for job in jobs)
            else:
                za, zb = passes(aligned_model, "chat", part), passes(base_model, "plain", part)
            for a, b in zip(za, zb):
                sums.add(a, b)
                r_rows.append(torch.softmax(a.double() / temperature, -1).mean(0))
        v = sums.direction(top_k)
        r = torch.stack(r_rows).mean(0).float()
    return v, r


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tokens_stage(store, tcfg: Any, aligned, base, data, dtype: str = "float32", trust_remote_code: bool = False,
                 model=None, tokenizer=None):
    """The safety-token direction as a store artifact (``direction.safetensors``: v and r; ``meta.json``: S with each
    token decoded, its mean aligned probability r and its weight v). Needs the base model. The pairs:
    ``tcfg.pairs_file`` when set, else the run's data (pact.data.rundata.RunData.safety_pairs). ``model`` and
    ``tokenizer``, the aligned model already loaded, answer the safety prompts and make the aligned passes, instead of a
    second copy (with vLLM the model waits on the CPU while the engine runs)."""
    from safetensors.torch import save_file

    from pact.data import rows as D
    from pact.models.loading import load_model, load_tokenizer

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
        # the aligned model the caller holds (a fine-tune's, not yet trained) is reused: one copy fewer in memory
        m_aligned = model if model is not None else load_model(aligned.path, dtype, trust_remote_code)
        m_base = load_model(base.path, dtype, trust_remote_code)
        v, r = direction_from_models(m_aligned, m_base, tok, pairs, top_k=int(tcfg.top_k),
                                     k_pairs=int(tcfg.k_pairs), max_resp_len=int(tcfg.max_resp_len),
                                     mode=str(tcfg.mode), temperature=float(tcfg.temperature))
        v, r = v.cpu(), r.cpu()
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
