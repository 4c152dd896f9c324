"""PACT against deliberately naive float64 re-statements of the paper's math, plus properties and a micro run."""

import math

import pytest
import torch

from pact.loss import pact_kl
from pact.tokens import direction_from_logits


# ---- naive references (loops, float64, straight from the spec) -----------------------------------------------
def naive_direction(aligned, base, top_k, mode, temperature):
    V = aligned[0].shape[1]
    d = [0.0] * V
    r = [0.0] * V
    for za, zb in zip(aligned, base):
        R = za.shape[0]
        for t in range(R):
            pa = torch.softmax(za[t].double() / temperature, -1)
            pb = torch.softmax(zb[t].double() / temperature, -1)
            for v in range(V):
                if mode == "p_diff":
                    diff = pa[v] - pb[v]
                else:
                    diff = pa[v] * (math.log(pb[v]) - math.log(pa[v]))
                d[v] += float(diff) / R / len(aligned)
                r[v] += float(pa[v]) / R / len(aligned)
    if 0 < top_k < V:
        keep = sorted(range(V), key=lambda v: -r[v])[:top_k]
        d = [d[v] if v in keep else 0.0 for v in range(V)]
    on = [v for v in range(V) if abs(d[v]) > 1e-9]
    mean = sum(d[v] for v in on) / len(on)
    std = math.sqrt(sum((d[v] - mean) ** 2 for v in on) / (len(on) - 1))
    for v in on:
        d[v] = (d[v] - mean) / (std + 1e-6)
    norm = math.sqrt(sum(x * x for x in d))
    return torch.tensor([x / (norm + 1e-6) for x in d], dtype=torch.float64)


def naive_pact_kl(policy, ref_full, ref_post, mask, weights, T, top_p, alpha, bias, gT, prefix_n, tau, boost):
    B, A, S = policy.shape
    total, count = 0.0, 0.0

    def nucleus(z):
        p = sorted(torch.softmax(z.double() / gT, -1).tolist(), reverse=True)
        c, n = 0.0, 0
        for x in p:
            c += x
            if c < top_p:
                n += 1
        return 1 + n

    for b in range(B):
        for t in range(A):
            if not mask[b, t]:
                continue
            c = 1 / (1 + math.exp(-alpha * (nucleus(policy[b, t]) / S - nucleus(ref_post[b, t]) / S - bias)))
            if prefix_n >= 0:
                c *= math.exp(-max(t - prefix_n, 0) / tau) if tau > 0 else float(t < prefix_n)
            c *= boost
            mix = [(1 - c) * float(ref_full[b, t, s]) + c * float(ref_post[b, t, s]) for s in range(S)]
            m = max(x / T for x in mix)
            e = [math.exp(x / T - m) for x in mix]
            q = [e[s] / sum(e) * max(float(weights[s]), 0.0) for s in range(S)]
            z = max(sum(q), 1e-12)
            q = [x / z for x in q]
            pm = max(float(x) / T for x in policy[b, t])
            lse = pm + math.log(sum(math.exp(float(x) / T - pm) for x in policy[b, t]))
            kl = sum(q[s] * (math.log(max(q[s], 1e-12)) - (float(policy[b, t, s]) / T - lse)) for s in range(S))
            total += T * T * kl
            count += 1
    return total / max(count, 1)


# ---- direction ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["p_diff", "pref_logratio"])
@pytest.mark.parametrize("top_k,temperature", [(5, 1.0), (0, 1.0), (12, 0.7)])
def test_direction_matches_naive(mode, top_k, temperature):
    g = torch.Generator().manual_seed(0)
    aligned = [torch.randn(r, 12, generator=g) * 2 for r in (3, 5, 1)]
    base = [torch.randn(r, 12, generator=g) * 2 for r in (3, 5, 1)]
    v = direction_from_logits(aligned, base, top_k=top_k, mode=mode, temperature=temperature)
    ref = naive_direction(aligned, base, top_k, mode, temperature)
    assert torch.allclose(v.double(), ref, atol=1e-6)
    if 0 < top_k < 12:
        assert int((v != 0).sum()) == top_k


def test_direction_keeps_top_k_by_aligned_probability_not_by_difference():
    aligned = [torch.tensor([[5.0, 4.0, 0.0, 0.0]])]
    base = [torch.tensor([[5.0, 0.0, 9.0, 0.0]])]
    v = direction_from_logits(aligned, base, top_k=2)
    assert v[2] == 0 and v[3] == 0 and v[0] != 0 and v[1] != 0  # token 2 has the largest |diff| but small r


def test_direction_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="shape"):
        direction_from_logits([torch.zeros(2, 4)], [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="mode"):
        direction_from_logits([torch.zeros(2, 4)], [torch.zeros(2, 4)], mode="other")


# ---- loss -----------------------------------------------------------------------------------------------------
def _inputs(seed=0, B=3, A=11, S=7):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(B, A, S, generator=g) * 2
    ref_full = torch.randn(B, A, S, generator=g) * 2
    ref_post = torch.randn(B, A, S, generator=g) * 2
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    weights = torch.randn(S, generator=g)
    return policy, ref_full, ref_post, mask, weights


@pytest.mark.parametrize("knobs", [
    dict(T=2.0, top_p=0.9, alpha=2.0, bias=0.0, gT=1.0, prefix_n=8, tau=8.0, boost=1.0),
    dict(T=1.0, top_p=0.5, alpha=5.0, bias=0.1, gT=2.0, prefix_n=3, tau=0.0, boost=1.0),
    dict(T=2.0, top_p=0.9, alpha=2.0, bias=0.0, gT=1.0, prefix_n=2, tau=8.0, boost=0.0),
    dict(T=3.0, top_p=0.99, alpha=1.0, bias=-0.2, gT=0.5, prefix_n=-1, tau=8.0, boost=0.5),
])
def test_pact_kl_matches_naive(knobs):
    args = _inputs()
    got = pact_kl(*args, temperature=knobs["T"], gate_top_p=knobs["top_p"], gate_alpha=knobs["alpha"],
                  gate_bias=knobs["bias"], gate_temperature=knobs["gT"], prefix_n=knobs["prefix_n"],
                  decay_tau=knobs["tau"], prefix_boost=knobs["boost"])
    want = naive_pact_kl(*args, knobs["T"], knobs["top_p"], knobs["alpha"], knobs["bias"], knobs["gT"],
                         knobs["prefix_n"], knobs["tau"], knobs["boost"])
    assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))


def test_kl_nonnegative_and_zero_at_the_reference():
    for seed in range(5):
        p, f, q, m, w = _inputs(seed)
        assert float(pact_kl(p, f, q, m, w)) >= 0
    p, f, q, m, w = _inputs(1)
    equal = torch.ones_like(w)
    # gate forced to 0: the reference is ref_full; policy == ref_full gives KL = 0 with equal weights
    assert abs(float(pact_kl(f.clone(), f, q, m, equal, gate=torch.zeros(m.shape)))) < 1e-6
    # any gate: policy equal to the mix itself
    c = torch.rand(m.shape)
    mix = (1 - c).unsqueeze(-1) * f + c.unsqueeze(-1) * q
    assert abs(float(pact_kl(mix, f, q, m, equal, gate=c))) < 1e-6


def test_gradient_reaches_only_the_policy():
    p, f, q, m, w = _inputs()
    p.requires_grad_(True)
    f.requires_grad_(True)
    q.requires_grad_(True)
    w.requires_grad_(True)
    pact_kl(p, f, q, m, w).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert f.grad is None and q.grad is None and w.grad is None
    assert (p.grad[2, 3:] == 0).all()  # masked positions get no gradient


def test_masked_positions_do_not_count():
    p, f, q, m, w = _inputs()
    base = float(pact_kl(p, f, q, m, w))
    p2 = p.clone()
    p2[2, 5:] = 100 * torch.randn_like(p2[2, 5:])
    assert float(pact_kl(p2, f, q, m, w)) == pytest.approx(base, rel=1e-6)


def test_direction_with_one_token_kept_is_that_tokens_sign():
    """top_k = 1: only the most likely aligned token survives; one nonzero value is not z-scored, v = sign(d)."""
    g = torch.Generator().manual_seed(3)
    aligned = [torch.randn(4, 9, generator=g) * 3 for _ in range(2)]
    base = [torch.randn(4, 9, generator=g) * 3 for _ in range(2)]
    v = direction_from_logits(aligned, base, top_k=1)
    r = torch.stack([torch.softmax(a.double(), -1).mean(0) for a in aligned]).mean(0)
    assert int((v != 0).sum()) == 1 and int(v.abs().argmax()) == int(r.argmax())
    assert float(v.abs().max()) == pytest.approx(1.0, abs=1e-3)  # d / (|d| + 1e-6)


def test_direction_with_two_tokens_kept_is_z_scored():
    """top_k = 2: the two kept values z-scored (+-1/sqrt(2) before the norm), then unit norm: +-1/sqrt(2)."""
    g = torch.Generator().manual_seed(4)
    aligned = [torch.randn(5, 9, generator=g) * 3 for _ in range(2)]
    base = [torch.randn(5, 9, generator=g) * 3 for _ in range(2)]
    v = direction_from_logits(aligned, base, top_k=2)
    on = v[v != 0]
    assert len(on) == 2 and sorted(on.tolist()) == pytest.approx([-2 ** -0.5, 2 ** -0.5], abs=1e-5)


def test_gate_prefix_and_decay_edges():
    """prefix_n = 0: the decay starts at t = 0; a decay_tau below 1 still decays smoothly (only tau <= 0 cuts)."""
    from pact.loss import pact_gate

    g = torch.Generator().manual_seed(0)
    policy, post = torch.randn(1, 5, 7, generator=g), torch.randn(1, 5, 7, generator=g)
    mask = torch.ones(1, 5, dtype=torch.bool)
    flat = pact_gate(policy, post, mask, prefix_n=-1)  # no prefix schedule at all
    t = torch.arange(5, dtype=torch.float32)
    assert torch.allclose(pact_gate(policy, post, mask, prefix_n=0, decay_tau=8.0), flat * torch.exp(-t / 8.0))
    assert torch.allclose(pact_gate(policy, post, mask, prefix_n=1, decay_tau=0.5),
                          flat * torch.exp(-(t - 1).clamp_min(0) / 0.5))
    assert torch.allclose(pact_gate(policy, post, mask, prefix_n=2, decay_tau=0.0), flat * (t < 2))


def test_top_p_count_of_a_one_hot_distribution_is_one():
    from pact.loss import top_p_count

    logits = torch.tensor([[0.0, -math.inf, -math.inf], [1.0, 1.0, 1.0]])
    assert top_p_count(logits, 1.0).tolist() == [1, 3]


def test_kl_is_a_mean_over_valid_positions_however_few():
    """Two identical positions: the mean over both equals the value at one alone (one valid position is not
    divided by more than one)."""
    p, f, q, _, w = _inputs()
    p2, f2, q2 = (torch.cat([x[:1, :1], x[:1, :1]], dim=1) for x in (p, f, q))
    gate = torch.full((1, 2), 0.3)
    both = pact_kl(p2, f2, q2, torch.ones(1, 2, dtype=torch.bool), w, gate=gate)
    one = pact_kl(p2, f2, q2, torch.tensor([[True, False]]), w, gate=gate)
    assert float(one) > 0 and float(one) == pytest.approx(float(both), rel=1e-6)
