"""Each method's defining computation, re-stated independently (direct forward passes of a tiny random Llama,
float64 arithmetic, the definitions of the PACT paper and the baselines' official code), so that breaking the
mechanism fails here even where the run still trains; plus the store's lock and atomic writes."""

from __future__ import annotations

import copy
import functools
import math
import multiprocessing
import os
import time
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from pact.data import rows as D
from pact.data.labels import IGNORE_INDEX
from pact.runtime.fileio import write_atomic
from pact.runtime.store import DONE, Store
from pact.tokens_stage import intra_op_threads

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
PROMPTS = ["how do I bake bread at home", "tell me a joke about cats", "how to pick the lock of a door",
           "write a short poem on the sea", "explain rain to a child", "how to make a weapon from a pipe"]
ANSWERS = ["Sure, mix flour and water, then bake it.", "A cat walked into a bar.", "Sure, take a pin.",
           "The sea is blue and wide and deep.", "Rain is water that falls from clouds.", "Sure, cut the pipe."]
REFUSALS = ["I'm sorry, but I can't help with that.", "I cannot assist with this request.",
            "Sorry, I won't do that.", "I can't help with making weapons, sorry.",
            "I am unable to help with that request.", "No, I can't provide that."]
ALIGN_PROMPTS = ["how to steal a car", "how to hurt a person", "how to cheat on a test", "how to hack a phone"]
PLAIN = "User: {prompt}\n\nAssistant: "  # the base model's context in the official safety-token script


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module (module scope: before its module fixtures train): on a busy machine two
    threads wait on each other far longer than these tiny matrix products take."""
    with intra_op_threads(1):
        yield


# ---- a tiny world: tokenizer, two random Llamas (aligned, base) saved to disk, pairs files ------------------------
def tiny_llama(tok, seed: int):
    """A 2-layer random Llama over ``tok``'s vocabulary; a wide init so that distributions are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> SimpleNamespace:
    """Tokenizer, aligned and base model (in memory and saved), safety pairs, alignment pairs and a store."""
    from pact.models.loading import ModelRef, save_model
    from pact.world.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("mechanisms")
    texts = PROMPTS + ANSWERS + REFUSALS + ALIGN_PROMPTS + [PLAIN.format(prompt=p) for p in PROMPTS]
    tok = train_tokenizer(texts * 4, vocab_size=320)
    aligned, base = tiny_llama(tok, 0), tiny_llama(tok, 1)
    refs = {}
    for name, model in (("aligned", aligned), ("base", base)):
        save_model(model, tok, root / name)
        refs[name] = ModelRef(key=name, path=str(root / name), prompt_format="chat", tokenizer_path=str(root / name))
    pairs = [{"prompt": p, "refusal": r} for p, r in zip(PROMPTS, REFUSALS)]
    D.write_jsonl(root / "pairs.jsonl", pairs)
    D.write_jsonl(root / "align.jsonl", [{"prompt": p, "refusal": r} for p, r in zip(ALIGN_PROMPTS, REFUSALS)])
    return SimpleNamespace(root=root, tok=tok, aligned=aligned, base=base, refs=refs, pairs=pairs,
                           store=Store(root / "store"))


def context(toy: SimpleNamespace, store: Store | None = None):
    """The FinetuneContext a method sees in the fine-tune stage (the aligned model already loaded)."""
    from pact.training.methods import FinetuneContext

    return FinetuneContext(aligned=toy.refs["aligned"], base=toy.refs["base"], data=SimpleNamespace(upstream={}),
                           tokenizer=toy.tok, prompt_format="chat", max_len=64, seed=0, store=store or toy.store,
                           model=toy.aligned)


def encoded(toy: SimpleNamespace, n: int = 4) -> list[dict[str, Any]]:
    """``n`` fine-tuning rows of different prompt and answer lengths, encoded in the chat format."""
    rows = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS[:n], ANSWERS[:n])]
    return D.encode_sft(rows, toy.tok, "chat", 64)


def perturbed(model, seed: int = 7, scale: float = 0.1):
    """A copy of ``model`` moved away from it (the policy after some fine-tuning)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


@torch.no_grad()
def row_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits [L, V] (float64) of one unpadded sequence: a direct forward, no batching or masks involved."""
    return model(input_ids=torch.tensor([ids])).logits[0].double()


def answer_indices(example: dict[str, Any]) -> list[int]:
    """Indices of the labelled (answer) tokens; the logit at index j - 1 predicts the token at index j."""
    return [j for j, lab in enumerate(example["labels"]) if lab != IGNORE_INDEX]


def columns(z: torch.Tensor, ids: torch.Tensor, bucket: bool) -> torch.Tensor:
    """z[..., S], plus (``bucket``) log-sum-exp of z over the tokens outside S, re-stated in float64."""
    sub = z[..., ids]
    if not bucket:
        return sub
    outside = torch.ones(z.shape[-1], dtype=torch.bool)
    outside[ids] = False
    return torch.cat([sub, torch.logsumexp(z[..., outside], dim=-1, keepdim=True)], dim=-1)


def policy_columns(model, examples: list[dict[str, Any]], ids: torch.Tensor, bucket: bool) -> list[torch.Tensor]:
    """Per example, [A, |S|(+1)]: the subset logits predicting each answer token (index j - 1 for token j)."""
    out = []
    for ex in examples:
        z = row_logits(model, ex["input_ids"])
        out.append(columns(z[[j - 1 for j in answer_indices(ex)]], ids, bucket))
    return out


def restated_ce(model, examples: list[dict[str, Any]]) -> float:
    """Token-mean cross-entropy over all answer tokens of ``examples`` (float64)."""
    nll = []
    for ex in examples:
        logp = torch.log_softmax(row_logits(model, ex["input_ids"]), dim=-1)
        nll += [-float(logp[j - 1, ex["input_ids"][j]]) for j in answer_indices(ex)]
    return sum(nll) / len(nll)


def restated_kl(policy: list[torch.Tensor], full: list[torch.Tensor], post: list[torch.Tensor],
                weights: torch.Tensor, c: float, temperature: float) -> float:
    """PACT's KL with a constant gate c: mean over answer positions of T^2 * KL(q || softmax(policy / T)),
    q = relu(w) * softmax(((1 - c) * full + c * post) / T) renormalised (float64, per example [A, S] lists)."""
    w = weights.double().clamp_min(0)
    total, count = 0.0, 0
    for p, f, r in zip(policy, full, post):
        mix = (1 - c) * f.double() + c * r.double()
        q = torch.softmax(mix / temperature, dim=-1) * w
        q = q / q.sum(dim=-1, keepdim=True)
        log_p = torch.log_softmax(p.double() / temperature, dim=-1)
        kl = (torch.xlogy(q, q) - q * log_p).sum(dim=-1)
        total += float(temperature ** 2 * kl.sum())
        count += kl.numel()
    return total / count


# ---- PACT ---------------------------------------------------------------------------------------------------------
def prepared_pact(toy: SimpleNamespace, **changes: Any):
    """PactMethod from conf/method/pact.yaml with ``changes``, prepared as the fine-tune stage does (its safety set
    from the tokens stage over the toy pairs)."""
    from pact.pact_method import PactMethod

    cfg = OmegaConf.load(CONF / "pact.yaml")
    cfg.tokens.top_k, cfg.tokens.k_pairs, cfg.tokens.max_resp_len = 12, 6, 16
    cfg.tokens.pairs_file = str(toy.root / "pairs.jsonl")
    for key, value in changes.items():
        cfg[key] = value
    method = PactMethod(cfg)
    method.prepare(context(toy))
    return method


def with_random_refs(examples: list[dict[str, Any]], width: int, seed: int = 3) -> list[dict[str, Any]]:
    """Cache-mode examples whose reference subset logits are random (and full != post-only)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for ex in examples:
        a = len(answer_indices(ex))
        out.append({**ex, "ref_full": 2 * torch.randn(a, width, generator=g),
                    "ref_post": 2 * torch.randn(a, width, generator=g)})
    return out


def generation_prompt_ids(tok) -> list[int]:
    """The assistant header: what the chat template adds for the generation prompt, tokenized without specials."""
    msgs = [{"role": "user", "content": "hi"}]
    with_gen = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    without = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    assert with_gen.startswith(without)
    return tok(with_gen[len(without):], add_special_tokens=False)["input_ids"]


def unpad(batch_tensor: torch.Tensor, examples: list[dict[str, Any]]) -> list[torch.Tensor]:
    """A padded [B, A, ...] tensor back to per-example [A_i, ...] (the valid answer positions)."""
    return [batch_tensor[i, :len(answer_indices(ex))] for i, ex in enumerate(examples)]


def spy_kl(monkeypatch) -> list[dict[str, Any]]:
    """Record the arguments of every pact_kl call PactMethod.compute_loss makes."""
    import pact.pact_method as PM

    calls: list[dict[str, Any]] = []
    real = PM.pact_kl

    def spy(policy, ref_full, ref_post, mask, weights, **kwargs):
        calls.append({"policy": policy.detach().clone(), "ref_full": ref_full.clone(), "ref_post": ref_post.clone(),
                      "mask": mask.clone(), "weights": weights.clone(), **kwargs})
        return real(policy, ref_full, ref_post, mask, weights, **kwargs)

    monkeypatch.setattr(PM, "pact_kl", spy)
    return calls


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_pact_loss_is_ce_plus_lambda_times_kl(toy, lam):
    """loss = CE + lambda * KL, both re-stated from direct forwards (gate off: the full-context reference)."""
    method = prepared_pact(toy, lambda_kl=lam, gate="off")
    examples = with_random_refs(encoded(toy), len(method.ids))
    policy = perturbed(toy.aligned)
    loss = method.compute_loss(None, policy, D.SFTCollator(toy.tok.pad_token_id)(examples))
    ce = restated_ce(policy, examples)
    kl = restated_kl(policy_columns(policy, examples, method.ids, False), [e["ref_full"] for e in examples],
                     [e["ref_post"] for e in examples], method.weights, 0.0, float(method.cfg.temperature))
    assert kl > 0.05  # large enough that lambda visibly matters
    assert float(loss.detach()) == pytest.approx(ce + lam * kl, rel=1e-5)
    assert method.last_kl == pytest.approx(kl, rel=1e-5)


def test_pact_post_only_header_is_the_generation_prompt(toy):
    """The post-only context starts with the assistant header: the chat template with the generation prompt minus
    without it, no BOS (official); post_bos=true puts BOS first."""
    header = generation_prompt_ids(toy.tok)
    assert header and toy.tok.bos_token_id not in header
    assert prepared_pact(toy).header == header
    assert prepared_pact(toy, post_bos=True).header == [toy.tok.bos_token_id, *header]


@pytest.mark.parametrize("post_bos", [False, True])
def test_pact_post_only_reference_is_a_forward_of_header_and_answer_prefix(toy, post_bos):
    """ref_post at answer position t = the aligned model's subset logits after (header + answer[:t]) alone."""
    method = prepared_pact(toy, post_bos=post_bos)
    examples = encoded(toy)
    _, post = method.reference(toy.aligned, examples)
    head = generation_prompt_ids(toy.tok)
    head = [toy.tok.bos_token_id, *head] if post_bos else head
    for i, ex in enumerate(examples):
        answer = [ex["input_ids"][j] for j in answer_indices(ex)]
        want = torch.stack([row_logits(toy.aligned, head + answer[:t])[-1] for t in range(len(answer))])
        assert torch.allclose(post[i, :len(answer)].double(), want[:, method.ids], atol=1e-5)


def test_pact_full_reference_reads_the_logits_that_predict_each_answer_token(toy):
    """ref_full at answer position t = the aligned model's subset logits at label index - 1 (full context)."""
    method = prepared_pact(toy)
    examples = encoded(toy)
    full, _ = method.reference(toy.aligned, examples)
    for got, want in zip(unpad(full, examples), policy_columns(toy.aligned, examples, method.ids, False)):
        assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.parametrize("answers_only", [False, True], ids=["all-logits", "answer-logits"])
def test_pact_policy_subset_logits_are_label_shifted(toy, monkeypatch, answers_only):
    """The policy logits PACT's KL reads at answer position t come from label index - 1, both when the output layer
    runs everywhere and when it runs at the answer positions only (frozen head, answer_logits)."""
    calls = spy_kl(monkeypatch)
    method = prepared_pact(toy)
    examples = with_random_refs(encoded(toy), len(method.ids))
    policy = perturbed(toy.aligned)
    trainer = None
    if answers_only:
        policy.get_output_embeddings().weight.requires_grad_(False)
        trainer = SimpleNamespace(args=SimpleNamespace(answer_logits=True))
    method.compute_loss(trainer, policy, D.SFTCollator(toy.tok.pad_token_id)(examples))
    [call] = calls
    want = policy_columns(policy, examples, method.ids, False)
    assert call["mask"].tolist() == [[t < len(w) for t in range(call["mask"].shape[1])] for w in want]
    for got, w in zip(unpad(call["policy"], examples), want):
        assert torch.allclose(got.double(), w, atol=1e-5)


def test_pact_gate_post_only_targets_the_post_only_reference(toy):
    """gate=post_only: the KL equals the re-stated KL with c = 1 everywhere (off: c = 0), and not the gated one."""
    examples = with_random_refs(encoded(toy), 12)
    batch = D.SFTCollator(toy.tok.pad_token_id)(examples)
    policy = perturbed(toy.aligned)
    kls = {}
    for gate in ("post_only", "off", "on"):
        method = prepared_pact(toy, gate=gate)
        assert len(method.ids) == 12
        method.compute_loss(None, policy, batch)
        kls[gate] = method.last_kl
    pol = policy_columns(policy, examples, method.ids, False)
    full, post = [e["ref_full"] for e in examples], [e["ref_post"] for e in examples]
    c1 = restated_kl(pol, full, post, method.weights, 1.0, float(method.cfg.temperature))
    c0 = restated_kl(pol, full, post, method.weights, 0.0, float(method.cfg.temperature))
    assert abs(c1 - c0) > 1e-3  # the two references differ: the test can tell the gates apart
    assert kls["post_only"] == pytest.approx(c1, rel=1e-5)
    assert kls["off"] == pytest.approx(c0, rel=1e-5)
    assert abs(kls["on"] - c1) > 1e-3


def test_pact_extra_bucket_is_logsumexp_outside_s(toy, monkeypatch):
    """extra_bucket=true: policy and both references carry |S| + 1 columns, the last = log-sum-exp of the logits
    outside S; the bucket's weight is the mean positive safety weight; the KL is the re-stated one on |S| + 1."""
    calls = spy_kl(monkeypatch)
    plain = prepared_pact(toy, gate="off")
    method = prepared_pact(toy, gate="off", extra_bucket=True)
    ids = method.ids
    assert torch.equal(ids, plain.ids) and len(method.weights) == len(ids) + 1
    positive = plain.weights[plain.weights > 0]
    assert float(method.weights[-1]) == pytest.approx(float(positive.mean()), rel=1e-6)
    examples = encoded(toy)
    with_refs = method.prepare_examples(examples, context(toy))
    for ex, want in zip(with_refs, policy_columns(toy.aligned, examples, ids, True)):
        assert ex["ref_full"].shape == (len(answer_indices(ex)), len(ids) + 1)
        assert torch.allclose(ex["ref_full"].double(), want, atol=1e-5)
    head = method.header
    for ex in with_refs:
        answer = [ex["input_ids"][j] for j in answer_indices(ex)]
        want = torch.stack([row_logits(toy.aligned, head + answer[:t])[-1] for t in range(len(answer))])
        assert torch.allclose(ex["ref_post"].double(), columns(want, ids, True), atol=1e-5)
    policy = perturbed(toy.aligned)
    method.compute_loss(None, policy, D.SFTCollator(toy.tok.pad_token_id)(with_refs))
    [call] = calls
    pol = policy_columns(policy, examples, ids, True)
    assert call["policy"].shape[-1] == len(ids) + 1 and len(call["weights"]) == len(ids) + 1
    for got, want in zip(unpad(call["policy"], examples), pol):
        assert torch.allclose(got.double(), want, atol=1e-5)
    kl = restated_kl(pol, [e["ref_full"] for e in with_refs], [e["ref_post"] for e in with_refs], method.weights,
                     0.0, float(method.cfg.temperature))
    assert method.last_kl == pytest.approx(kl, rel=1e-5)


# ---- the safety-token direction -----------------------------------------------------------------------------------
def restated_direction(aligned, base, tok, pairs: list[dict[str, str]], top_k: int,
                       max_resp_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, r), p_diff at T = 1: the aligned model reads the chat template, the base model the plain string; d = mean
    over pairs of the position mean of p_a - p_b; keep the top_k tokens by mean aligned probability r; z-score the
    nonzero entries; v = d / ||d|| (float64)."""
    d_sum, r_sum = 0.0, 0.0
    for pair in pairs:
        chat_text = tok.apply_chat_template([{"role": "user", "content": pair["prompt"]}],
                                            add_generation_prompt=True, tokenize=False)
        chat = tok(chat_text, add_special_tokens=False)["input_ids"]
        plain = tok(PLAIN.format(prompt=pair["prompt"]), add_special_tokens=False)["input_ids"]
        resp = tok(pair["refusal"], add_special_tokens=False)["input_ids"][:max_resp_len]
        p_a = torch.softmax(row_logits(aligned, chat + resp)[len(chat) - 1:-1], dim=-1)
        p_b = torch.softmax(row_logits(base, plain + resp)[len(plain) - 1:-1], dim=-1)
        d_sum = d_sum + (p_a - p_b).mean(dim=0)
        r_sum = r_sum + p_a.mean(dim=0)
    d, r = d_sum / len(pairs), r_sum / len(pairs)
    keep = torch.zeros_like(d, dtype=torch.bool)
    keep[r.topk(top_k).indices] = True
    d = torch.where(keep, d, torch.zeros_like(d))
    on = d.abs() > 1e-9
    d[on] = (d[on] - d[on].mean()) / (d[on].std() + 1e-6)
    return d / (d.norm() + 1e-6), r


@pytest.mark.parametrize("threads", [1, 2], ids=["sequential", "side-by-side"])
def test_direction_reads_chat_for_aligned_and_plain_for_base(toy, threads):
    """direction_from_models = the re-stated p_diff direction (aligned: chat format, base: plain format), whether the
    two models' passes run one after the other or side by side."""
    from pact.tokens_stage import direction_from_models

    pairs = toy.pairs[:4]
    with intra_op_threads(threads):
        v, r = direction_from_models(toy.aligned, toy.base, toy.tok, pairs, top_k=10, max_resp_len=6, chunk=3)
    want_v, want_r = restated_direction(toy.aligned, toy.base, toy.tok, pairs, 10, 6)
    assert int((v != 0).sum()) == 10
    assert torch.allclose(r.double(), want_r, atol=1e-6)
    assert torch.allclose(v.double(), want_v, atol=1e-5)


# ---- Lisa ---------------------------------------------------------------------------------------------------------
LISA_STEPS = 12


@pytest.fixture(scope="module")
def lisa_run(toy, tmp_path_factory) -> SimpleNamespace:
    """A 12-step Lisa fine-tune of the tiny model through the repository's Trainer, recording at every step the batch
    rows, the loss Lisa returns, the batch's cross-entropy and the trainable weights before the step."""
    from baselines.lisa import Lisa
    from pact.training.trainer import train, training_arguments

    cfg = OmegaConf.load(CONF / "lisa.yaml")
    cfg.align_file = str(toy.root / "align.jsonl")
    cfg.cycles, cfg.align_fraction, cfg.proximal_skip_fraction = 3, 0.5, 0.25  # K1 = K2 = 2; no prox for 3 steps
    method = Lisa(cfg)
    method.prepare(context(toy))
    user = encoded(toy, 6)
    align = D.encode_sft([{"prompt": p, "answer": r} for p, r in zip(ALIGN_PROMPTS, REFUSALS)], toy.tok, "chat", 64)
    model = copy.deepcopy(toy.aligned).train()
    steps: list[SimpleNamespace] = []
    real = method.compute_loss

    def spy(trainer, net, inputs, return_outputs=False, num_items_in_batch=None):
        with torch.no_grad():
            ce = net(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     labels=inputs["labels"]).loss
        weights = {n: p.detach().double().clone() for n, p in net.named_parameters() if p.requires_grad}
        out = real(trainer, net, inputs, return_outputs, num_items_in_batch)
        rows = [tuple(ids[m.bool()].tolist()) for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
        steps.append(SimpleNamespace(rows=rows, ce=float(ce), weights=weights,
                                     loss=float((out[0] if return_outputs else out).detach())))
        return out

    method.compute_loss = spy
    opt = OmegaConf.create({"lr": 0.01, "max_steps": LISA_STEPS, "batch_size": 2, "scheduler": "constant"})
    args = training_arguments(opt, tmp_path_factory.mktemp("lisa_out"), 0, "none", None, 1000)
    train(model, toy.tok, user, args, method)
    return SimpleNamespace(method=method, steps=steps, cfg=cfg, user={tuple(e["input_ids"]) for e in user},
                           align={tuple(e["input_ids"]) for e in align})


def lisa_turns(k1: int, k2: int, n: int) -> list[tuple[bool, int]]:
    """(alignment state?, first step of the current turn) for steps 0..n-1: K1 alignment steps first, then K2
    fine-tuning steps, repeating."""
    out = []
    for s in range(n):
        phase = s % (k1 + k2)
        out.append((phase < k1, s - (phase if phase < k1 else phase - k1)))
    return out


def test_lisa_alignment_state_trains_on_alignment_rows(lisa_run):
    """Alignment-state steps see alignment (prompt, refusal) rows only, fine-tuning steps the user's rows only."""
    k1, k2 = lisa_run.method.stats["k_align"], lisa_run.method.stats["k_finetune"]
    assert (k1, k2) == (2, 2) and len(lisa_run.steps) == LISA_STEPS
    assert not lisa_run.user & lisa_run.align
    for step, (aligning, _) in zip(lisa_run.steps, lisa_turns(k1, k2, LISA_STEPS)):
        assert set(step.rows) <= (lisa_run.align if aligning else lisa_run.user)


def test_lisa_loss_adds_the_proximal_term(lisa_run):
    """Lisa's loss = CE + rho/2 * ||w - w_anchor||^2, the anchor being the weights when the other state last stopped
    (= the weights at the start of the current turn), after the first proximal_skip_fraction of the steps."""
    rho, skip = float(lisa_run.cfg.rho), float(lisa_run.cfg.proximal_skip_fraction) * LISA_STEPS
    k1, k2 = lisa_run.method.stats["k_align"], lisa_run.method.stats["k_finetune"]
    proxes = []
    for s, (step, (_, start)) in enumerate(zip(lisa_run.steps, lisa_turns(k1, k2, LISA_STEPS))):
        anchor = lisa_run.steps[start].weights
        prox = rho / 2 * sum(float(((step.weights[n] - a) ** 2).sum()) for n, a in anchor.items())
        prox = prox if s + 1 > skip else 0.0
        proxes.append(prox)
        assert step.loss == pytest.approx(step.ce + prox, rel=1e-5, abs=1e-6), f"step {s}"
    finetune_proxes = [p for p, (aligning, _) in zip(proxes, lisa_turns(k1, k2, LISA_STEPS)) if not aligning]
    assert max(finetune_proxes) > 0.05  # the weights moved: the term is measurable in the fine-tune state


# ---- Vaccine ------------------------------------------------------------------------------------------------------
def test_vaccine_second_pass_adds_exactly_the_perturbation(toy, tmp_path):
    """Each alignment step runs two forwards: in the first, every layer's hidden state is residual + attention
    output; in the second, + eps_l = rho * g_l / (||(||g_1||, ..., ||g_L||)|| + 1e-7), g_l the first pass's gradient
    w.r.t. layer l's attention output (measured with forward hooks and tensor hooks)."""
    from baselines.vaccine import VaccineAlignment
    from pact.training.trainer import train, training_arguments

    rho = 2.0
    model = copy.deepcopy(toy.aligned).train()
    layers = model.model.layers
    seen: dict[str, list[list[torch.Tensor]]] = {k: [[] for _ in layers] for k in ("residual", "attn", "mid")}
    grads: list[dict[int, torch.Tensor]] = [{} for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        def before_norm(module, args, i=i):
            seen["residual"][i].append(args[0].detach().clone())

        def attention(module, args, output, i=i):
            k = len(seen["attn"][i])
            seen["attn"][i].append(output[0].detach().clone())  # registered first: the output before Vaccine's hook
            if output[0].requires_grad:
                output[0].register_hook(lambda g, i=i, k=k: grads[i].__setitem__(k, g.detach().clone()))

        def after_attention(module, args, i=i):
            seen["mid"][i].append(args[0].detach().clone())

        handles += [layer.input_layernorm.register_forward_pre_hook(before_norm),
                    layer.self_attn.register_forward_hook(attention),
                    layer.post_attention_layernorm.register_forward_pre_hook(after_attention)]
    opt = OmegaConf.create({"lr": 0.01, "max_steps": 2, "batch_size": 2})
    try:
        train(model, toy.tok, encoded(toy), training_arguments(opt, tmp_path, 0, "none", None, 1000),
              VaccineAlignment(OmegaConf.create({"id": "vaccine", "rho": rho})))
    finally:
        for h in handles:
            h.remove()
    assert len(seen["attn"][0]) == 4  # two steps, two forwards each
    for step in range(2):
        first, second = 2 * step, 2 * step + 1
        g = [grads[i][first] for i in range(len(layers))]
        total = math.sqrt(sum(float(x.double().norm()) ** 2 for x in g))
        for i in range(len(layers)):
            eps = rho * g[i].double() / (total + 1e-7)
            added = [seen["mid"][i][k].double() - seen["residual"][i][k].double() - seen["attn"][i][k].double()
                     for k in (first, second)]
            assert float(eps.norm()) > 0.1
            assert added[0].abs().max() < 1e-5  # pass 1: no perturbation
            assert torch.allclose(added[1], eps, atol=1e-5)  # pass 2: exactly eps_l
        # the first layer's inputs are equal in both passes: its hidden states differ by eps_1 alone
        diff = seen["mid"][0][second].double() - seen["mid"][0][first].double()
        assert torch.allclose(diff, rho * g[0].double() / (total + 1e-7), atol=1e-5)


# ---- constrained SFT ----------------------------------------------------------------------------------------------
def test_constrained_sft_loss_weights_each_token_as_defined(toy, tmp_path):
    """loss = -(1/N) sum_t w_t log p(y_t), w_t = max(2 sigmoid(-beta_t (log p(y_t) - log p_ref(y_t))), w_min) held
    constant, beta_t = beta * 5 at t = 0, beta * 20 for t = 1..4, beta after; the reference is the aligned model."""
    from baselines.constrained_sft import ConstrainedSFT

    cfg = OmegaConf.load(CONF / "constrained_sft.yaml")
    method = ConstrainedSFT(cfg)
    examples = method.prepare_examples(encoded(toy), context(toy, Store(tmp_path)))
    policy = perturbed(toy.aligned, scale=0.15).train()
    loss = method.compute_loss(None, policy, D.SFTCollator(toy.tok.pad_token_id)(examples))
    loss.backward()
    got_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()

    def beta(t: int) -> float:
        factor = cfg.first_token_factor if t == 0 else cfg.prefix_factor if t < cfg.prefix_len else 1.0
        return float(cfg.beta) * float(factor)

    weights, logps, surrogate = [], [], []
    for ex in examples:
        z = policy(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
        ref = torch.log_softmax(row_logits(toy.aligned, ex["input_ids"]), dim=-1)
        for t, j in enumerate(answer_indices(ex)):
            lp = torch.log_softmax(z[j - 1], dim=-1)[ex["input_ids"][j]]
            w = max(2 / (1 + math.exp(beta(t) * (float(lp.detach()) - float(ref[j - 1, ex["input_ids"][j]])))),
                    float(cfg.weight_min))
            weights.append(w)
            logps.append(float(lp.detach()))
            surrogate.append(-w * lp)
    assert max(abs(w - 1) for w in weights) > 0.2  # the weights differ from plain SFT's 1 here
    want = -sum(w * lp for w, lp in zip(weights, logps)) / len(weights)
    assert abs(want - (-sum(logps) / len(logps))) > 1e-2
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    (torch.stack(surrogate).sum() / len(surrogate)).backward()  # the gradient of the weighted NLL, w constant
    for n, p in policy.named_parameters():
        assert torch.allclose(got_grads[n], p.grad, atol=1e-6, rtol=1e-4), n


# ---- the store: lock and atomic writes ----------------------------------------------------------------------------
def _slow_build(log_path: str, tmp: Path) -> dict[str, int]:
    """A builder that appends one line per run to ``log_path`` and takes a second (long enough to overlap)."""
    with open(log_path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    (tmp / "out.txt").write_text("built")
    return {"builder_pid": os.getpid()}


def _build_together(root: str, log_path: str, barrier) -> None:
    """Wait until every process is ready, then ask the store for the same artifact."""
    barrier.wait(timeout=120)
    Store(root).build("stage", {"x": 1}, {"up": "k"}, functools.partial(_slow_build, log_path))


@pytest.mark.slow  # spawned processes (~5 s on a loaded machine)
def test_concurrent_builds_of_one_key_build_it_once(tmp_path):
    """Two processes asking for one artifact at the same moment: one builds, the other waits and reuses it."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    log = tmp_path / "builds.log"
    procs = [ctx.Process(target=_build_together, args=(str(tmp_path / "store"), str(log), barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    store = Store(tmp_path / "store")
    key = store.key("stage", {"x": 1}, {"up": "k"})
    assert store.done("stage", key) and (store.path("stage", key) / "out.txt").read_text() == "built"
    assert [p.name for p in (tmp_path / "store" / "stage").iterdir()] == [key]


def test_a_failed_build_publishes_nothing(tmp_path, monkeypatch):
    """A builder that raises, or a failing final rename, leaves no artifact under the final name (only a private
    partial directory, which the next build clears before it publishes)."""
    store = Store(tmp_path)
    key = store.key("s", {"a": 1}, None)
    final = store.path("s", key)

    def boom(tmp: Path) -> None:
        (tmp / "model.bin").write_text("half")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        store.build("s", {"a": 1}, None, boom)
    assert not final.exists() and not store.done("s", key)
    assert all(".partial-" in p.name for p in final.parent.iterdir())

    import pact.runtime.store as S

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(S.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        store.build("s", {"a": 1}, None, lambda tmp: (tmp / "ok.txt").write_text("ok") and None)
    monkeypatch.undo()
    assert not final.exists() and not store.done("s", key)
    art = store.build("s", {"a": 1}, None, lambda tmp: (tmp / "ok.txt").write_text("ok") and None)
    assert [p.name for p in final.parent.iterdir()] == [key]  # the partial directories are gone
    assert sorted(p.name for p in art.path.iterdir()) == [DONE, "meta.json", "ok.txt"]


def test_write_atomic_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous file byte for byte, and no temporary file beside it."""
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')
    real = Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, '{"new": 2, "padding": "' + "x" * 100 + '"}')
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "fresh.json", '{"new": 2}')
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_atomic(target, '{"new": 2}')
    assert target.read_text() == '{"new": 2}' and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_reference_cache_entries_do_not_depend_on_what_else_was_missing(tmp_path):
    """An entry of the per-example reference cache is computed from its example alone: a padded batch moves a row's
    logits in the last bits with its batch-mates, so an entry must come out the same whichever other examples were
    cached before (another run, maybe running at the same time) or computed beside it."""
    from pact.runtime.refcache import cached_per_example

    examples = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (3, 5, 4, 7)]

    def compute(batch):  # a reference whose rows depend on their batch-mates, as padded logits do
        width = max(len(e["input_ids"]) for e in batch)
        return [{"x": torch.tensor([float(len(e["input_ids"])) + 1e-3 * width])} for e in batch]

    alone = {n: compute([e])[0]["x"] for n, e in enumerate(examples)}
    first, _ = cached_per_example(tmp_path / "a", examples, compute)
    cached_per_example(tmp_path / "b", examples[1:2], compute)  # another run cached one example before
    second, stats = cached_per_example(tmp_path / "b", examples, compute)
    assert stats["ref_cache_built"] == 3 and stats["ref_cache_reused"] == 1
    for n in range(len(examples)):
        assert torch.equal(first[n]["x"], alone[n]) and torch.equal(second[n]["x"], alone[n])


def test_batch_invariance_compares_each_row_alone_against_its_batch(toy):
    """experiments.diagnostics.batch_invariance counts the rows whose reference differs between one padded batch and
    the row alone (none when the passes agree; each row the batched pass moves) and the largest difference."""
    from experiments.diagnostics.batch_invariance import compare

    real = compare(prepared_pact(toy), toy.aligned, encoded(toy))
    assert real["rows"] == 4 and real["batch_repeatable"] and real["max_abs_diff"] < 1e-4

    class Rows:  # a reference of each row alone; ``moved`` rows shift when computed beside others
        def __init__(self, moved):
            self.moved = moved

        def reference(self, model, batch):
            full = torch.zeros(len(batch), 3, 2)
            for j, e in enumerate(batch):
                full[j] = float(len(e["input_ids"]))
            post = full.clone()
            if len(batch) > 1:
                for j in self.moved:
                    post[j] += 0.25
            return full, post

    assert compare(Rows([]), None, encoded(toy)) == {"rows": 4, "full_differ": 0, "post_differ": 0,
                                                     "max_abs_diff": 0.0, "batch_repeatable": True}
    moved = compare(Rows([1, 3]), None, encoded(toy))
    assert moved["post_differ"] == 2 and moved["full_differ"] == 0 and moved["max_abs_diff"] == 0.25


# ---- PACT: when the reference cache is built, and its key ---------------------------------------------------------
def test_pact_reference_cache_is_built_only_for_cache_mode_with_a_kl_term():
    """reference: live, or lambda_kl = 0, hands the examples back untouched (no model is read)."""
    from pact.pact_method import PactMethod

    examples = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}]
    for reference, lam in (("live", 0.5), ("cache", 0.0), ("live", 0.0)):
        cfg = OmegaConf.load(CONF / "pact.yaml")
        cfg.reference, cfg.lambda_kl = reference, lam
        assert PactMethod(cfg).prepare_examples(examples, None) is examples


def test_pact_reference_cache_key_separates_what_changes_the_logits(tmp_path):
    """One cache directory per (aligned model, safety set, subset, bucket, header, dtype)."""
    from pact.pact_method import PactMethod

    def cache_dir(aligned="al", tokens="tk", subset="safety", bucket=False, header=(5, 6), dtype="float32"):
        cfg = OmegaConf.load(CONF / "pact.yaml")
        cfg.subset, cfg.extra_bucket = subset, bucket
        method = PactMethod(cfg)
        method.tokens_key, method.header = tokens, list(header)
        ctx = SimpleNamespace(aligned=SimpleNamespace(key=aligned), store=SimpleNamespace(root=tmp_path), dtype=dtype)
        return method._cache_dir(ctx)

    dirs = [cache_dir(), cache_dir(aligned="al2"), cache_dir(tokens="tk2"), cache_dir(subset="vocab"),
            cache_dir(bucket=True), cache_dir(header=(5,)), cache_dir(dtype="bfloat16")]
    assert len(set(dirs)) == len(dirs) and all(d.parent.parent == tmp_path for d in dirs)
    assert cache_dir() == dirs[0]


@pytest.mark.parametrize("subset,weights,bucket", [("safety", "raw", False), ("safety", "uniform", False),
                                                   ("vocab", "raw", False), ("safety", "raw", True)])
def test_pact_prepare_reads_the_subset_and_weights_from_the_direction(monkeypatch, subset, weights, bucket):
    """S = nonzero(v) with weights v[S] (raw) or ones (uniform); subset vocab: every token, weight 1; the extra
    bucket's weight is the mean positive weight. The safety-set artifact's key and size are recorded."""
    import pact.pact_method as PM

    v = torch.tensor([0.0, 0.5, -0.2, 0.0, 0.3])
    art = SimpleNamespace(key="tokens-key", path=Path("/store/tokens/tokens-key"))
    seen = {}

    def tokens_stage(store, cfg, aligned, base, data, dtype, model=None, tokenizer=None):
        seen.update(dtype=dtype, model=model, tokenizer=tokenizer)
        return art

    monkeypatch.setattr(PM, "tokens_stage", tokens_stage)
    monkeypatch.setattr(PM, "load_direction", lambda a: (v, None))
    cfg = OmegaConf.load(CONF / "pact.yaml")
    cfg.subset, cfg.weights, cfg.extra_bucket = subset, weights, bucket
    method = PM.PactMethod(cfg)
    def tok(text, add_special_tokens=True):  # no chat template (the fallback header); a BOS unless told not to
        return {"input_ids": ([1] if add_special_tokens else []) + [7, 8]}

    ctx = SimpleNamespace(store=None, aligned=None, base=None, data=None, dtype="bfloat16", model="MODEL",
                          tokenizer=tok, adapter="lora")
    method.prepare(ctx)
    assert seen == {"dtype": "bfloat16", "model": "MODEL", "tokenizer": tok}
    want_ids = [0, 1, 2, 3, 4] if subset == "vocab" else [1, 2, 4]
    want_w = [1.0] * 5 if subset == "vocab" else [0.5, -0.2, 0.3] if weights == "raw" else [1.0] * 3
    if bucket:
        want_w = [*want_w, 0.4]
    assert method.ids.tolist() == want_ids and method.weights.tolist() == pytest.approx(want_w)
    assert method.tokens_key == "tokens-key" and method.header == [7, 8] and method.ref_model is None
    assert method.stats == {"tokens_dir": str(art.path), "safety_set_size": len(want_ids)}


def test_pact_extra_bucket_weight_is_one_without_positive_weights(monkeypatch):
    import pact.pact_method as PM

    monkeypatch.setattr(PM, "tokens_stage", lambda *a, **k: SimpleNamespace(key="k", path=Path("p")))
    monkeypatch.setattr(PM, "load_direction", lambda a: (torch.tensor([0.0, -0.5, -0.1]), None))
    cfg = OmegaConf.load(CONF / "pact.yaml")
    cfg.extra_bucket = True
    method = PM.PactMethod(cfg)
    ctx = SimpleNamespace(store=None, aligned=None, base=None, data=None, dtype="float32", model=None,
                          tokenizer=lambda text, add_special_tokens=False: {"input_ids": [7]}, adapter="lora")
    method.prepare(ctx)
    assert method.weights.tolist() == pytest.approx([-0.5, -0.1, 1.0])


@pytest.mark.parametrize("reference,adapter,loads", [("live", "full", True), ("live", "lora", False),
                                                     ("cache", "full", False)])
def test_pact_live_reference_of_a_full_fine_tune_is_a_frozen_copy(monkeypatch, reference, adapter, loads):
    """reference: live with full fine-tuning loads the aligned model once more, frozen and in eval mode (LoRA
    disables its adapter instead; cache mode needs no model)."""
    import pact.models.loading
    import pact.pact_method as PM

    monkeypatch.setattr(PM, "tokens_stage", lambda *a, **k: SimpleNamespace(key="k", path=Path("p")))
    monkeypatch.setattr(PM, "load_direction", lambda a: (torch.tensor([0.0, 0.5]), None))
    loaded = []
    monkeypatch.setattr(pact.models.loading, "load_model", lambda path, dtype: loaded.append((path, dtype)) or
                        torch.nn.Linear(2, 2).train())
    cfg = OmegaConf.load(CONF / "pact.yaml")
    cfg.reference = reference
    method = PM.PactMethod(cfg)
    ctx = SimpleNamespace(store=None, aligned=SimpleNamespace(path="/al"), base=None, data=None, dtype="bfloat16",
                          model=None, tokenizer=lambda text, add_special_tokens=False: {"input_ids": [7]},
                          adapter=adapter)
    method.prepare(ctx)
    if loads:
        assert loaded == [("/al", "bfloat16")] and not method.ref_model.training
        assert not any(p.requires_grad for p in method.ref_model.parameters())
    else:
        assert loaded == [] and method.ref_model is None


# ---- SafeLoRA: the post-hoc projection, restated ------------------------------------------------------------------
def restated_similarities(aligned, base, lora: dict[str, torch.Tensor]) -> dict[str, tuple[float, torch.Tensor]]:
    """Per LoRA layer (q/v of each block): cos(C dW, dW) with C = V V^T / ||V||_F, V = aligned - base, dW = B A
    (Hsu et al. 2024; IBM/SafeLoRA model.py), in float64, and C."""
    out = {}
    for layer in range(aligned.config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}"
            v = aligned.get_submodule(name).weight.double() - base.get_submodule(name).weight.double()
            c = v @ v.T / torch.linalg.norm(v)
            delta = lora[f"{name}.lora_B"] @ lora[f"{name}.lora_A"]
            cos = torch.nn.functional.cosine_similarity((c @ delta).flatten(), delta.flatten(), dim=0)
            out[name] = (float(cos), c)
    return out


@pytest.mark.parametrize("select, picks", [("number", 2), ("threshold", None)])
def test_safelora_projects_the_least_aligned_lora_updates_when_training_ends(toy, tmp_path, select, picks):
    from baselines.safelora import SafeLoRA
    from pact.models.adapters import apply_lora
    from pact.training.trainer import train, training_arguments

    cfg = OmegaConf.load(CONF / "safelora.yaml")
    cfg.select, cfg.num_proj_layers = select, picks or 1
    method = SafeLoRA(cfg)
    method.prepare(context(toy))
    lora = OmegaConf.create({"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model = apply_lora(copy.deepcopy(toy.aligned), lora)
    trained: dict[str, torch.Tensor] = {}
    real = method.project

    def spy(net):   # the adapter as training left it, just before the projection
        trained.update({n.removeprefix("base_model.model.").replace(".default.weight", ""): p.detach().double().clone()
                        for n, p in net.named_parameters() if "lora_" in n})
        real(net)

    method.project = spy
    opt = OmegaConf.create({"lr": 0.05, "max_steps": 3, "batch_size": 2, "scheduler": "constant"})
    train(model, toy.tok, encoded(toy, 4), training_arguments(opt, tmp_path / "out", 0, "none", None, 1000), method)
    sims = restated_similarities(toy.aligned, toy.base, trained)
    values = sorted(s for s, _ in sims.values())
    if select == "threshold":   # a threshold between the middle two: half the layers
        cfg.threshold = (values[1] + values[2]) / 2
        method = SafeLoRA(cfg)
        method.prepare(context(toy))
        model = apply_lora(copy.deepcopy(toy.aligned), lora)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(trained[n.removeprefix("base_model.model.").replace(".default.weight", "")])
        method.project(model)
    cut = values[1]
    projected = {n for n, (s, _) in sims.items() if s <= cut}
    assert len(projected) == 2 and set(method.stats["safelora_projected"]) == projected
    after = {n.removeprefix("base_model.model.").replace(".default.weight", ""): p.detach().double()
             for n, p in model.named_parameters() if "lora_" in n}
    for name, (s, c) in sims.items():
        assert method.stats["safelora_similarity"][name] == pytest.approx(s, abs=1e-5)
        b = trained[f"{name}.lora_B"]
        assert b.abs().max() > 0   # training moved B away from peft's zeros
        assert torch.allclose(after[f"{name}.lora_B"], c @ b if name in projected else b, atol=1e-6)
        assert torch.equal(after[f"{name}.lora_A"], trained[f"{name}.lora_A"])


def test_safelora_refuses_a_run_without_the_model_before_alignment_or_an_unmoved_weight(toy):
    from baselines.safelora import SafeLoRA
    from pact.models.adapters import apply_lora

    cfg = OmegaConf.load(CONF / "safelora.yaml")
    with pytest.raises(ValueError, match="needs the model before alignment"):
        SafeLoRA(cfg).prepare(dataclasses_replace(context(toy), base=None))
    method = SafeLoRA(cfg)
    method.prepare(dataclasses_replace(context(toy), base=toy.refs["aligned"]))   # base = aligned: V = 0
    lora = OmegaConf.create({"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match=r"layer base_model\.model\.model\.layers\.0\.self_attn\.q_proj: .*zero"):
        method.project(apply_lora(copy.deepcopy(toy.aligned), lora))


# ---- Booster: the alignment step's gradient, restated -------------------------------------------------------------
def restated_booster_gradient(model, inputs: dict[str, torch.Tensor], harmful: dict[str, torch.Tensor],
                              lamb: float, alpha: float) -> dict[str, torch.Tensor]:
    """grad L_align(w) + lamb * (grad L_h(w) - grad L_h(w - alpha * g_h / (||g_h|| + 1e-7))), g_h = grad L_h(w)
    (Huang et al. 2025; git-disl/Booster BoosterAlignmentTrainer), each loss the token-mean answer cross-entropy,
    in float64."""
    net = copy.deepcopy(model).double().train()
    params = dict(net.named_parameters())

    def grads(batch):
        net.zero_grad(set_to_none=True)
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        return {n: p.grad.detach().clone() for n, p in params.items()}

    g_h = grads(harmful)
    norm = torch.norm(torch.stack([g.norm() for g in g_h.values()])) + 1e-7
    with torch.no_grad():
        for n, p in params.items():
            p.sub_(alpha * g_h[n] / norm)
    g_moved = grads(harmful)
    with torch.no_grad():
        for n, p in params.items():
            p.add_(alpha * g_h[n] / norm)
    g_a = grads(inputs)
    return {n: g_a[n] + lamb * (g_h[n] - g_moved[n]) for n in params}


@pytest.mark.parametrize("lamb", [5.0, 0.0])
def test_booster_step_follows_the_alignment_gradient_plus_the_harmful_drop(toy, tmp_path, lamb):
    from transformers import TrainerCallback

    from baselines.booster import BoosterAlignment
    from pact.training.trainer import train, training_arguments

    harmful_file = tmp_path / "pairs.jsonl"
    D.write_jsonl(harmful_file, [{"prompt": p, "refusal": r, "compliance": a}
                                 for p, r, a in zip(ALIGN_PROMPTS, REFUSALS, ANSWERS)])
    cfg = OmegaConf.create({"id": "booster", "lamb": lamb, "alpha": 0.1, "harmful_batch_size": 2,
                            "harmful_answer": "compliance", "harmful_rows": 0})
    method = BoosterAlignment(cfg)
    ctx = dataclasses_replace(context(toy), data=SimpleNamespace(kind="toy", alignment_pairs=lambda: harmful_file))
    method.prepare(ctx)
    harmful_prompts = {tuple(e["input_ids"]) for e in method.harmful}
    seen: list[dict[str, Any]] = []
    drawn = method.harmful_batch

    def spy_draw():
        batch = drawn()
        seen[-1]["harmful"] = D.SFTCollator(toy.tok.pad_token_id)(batch)
        return batch

    def spy_step(model, inputs):
        seen.append({"inputs": {k: v.clone() for k, v in inputs.items()},
                     "model": copy.deepcopy(model)})
        return inputs

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen[-1]["grads"] = {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}

    method.harmful_batch, method.before_step = spy_draw, spy_step
    method.callbacks = lambda: [Grads()]
    opt = OmegaConf.create({"lr": 0.01, "max_steps": 2, "batch_size": 2, "scheduler": "constant", "max_grad_norm": 0})
    model = copy.deepcopy(toy.aligned).train()
    train(model, toy.tok, encoded(toy, 4), training_arguments(opt, tmp_path / "out", 0, "none", None, 1000), method)
    assert len(seen) == 2
    for step in seen:
        rows = {tuple(ids[m.bool()].tolist()) for ids, m in zip(step["harmful"]["input_ids"],
                                                                step["harmful"]["attention_mask"])}
        assert rows <= harmful_prompts
        expect = restated_booster_gradient(step["model"], step["inputs"], step["harmful"], lamb, 0.1)
        for name, grad in step["grads"].items():
            assert torch.allclose(grad, expect[name], rtol=1e-3, atol=1e-5), name
    if lamb:   # the regulariser moves the update: without it the same step's gradient is the alignment's alone
        plain = restated_booster_gradient(seen[0]["model"], seen[0]["inputs"], seen[0]["harmful"], 0.0, 0.1)
        assert any(not torch.allclose(seen[0]["grads"][n], plain[n], rtol=1e-3, atol=1e-5) for n in plain)
