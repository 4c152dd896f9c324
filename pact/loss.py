"""The PACT regulariser: a gated, weighted KL on the safety-token subset at every answer position.

Math as in the paper's official code (``finetuning_pact.py``), re-implemented: see :func:`pact_kl`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_EPS = 1e-12  # clamp inside log q and on q's normaliser (official code)


def top_p_count(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> torch.Tensor:
    """1 + the number of entries of the descending cumulative probability that stay below ``top_p``:
    how many tokens the nucleus needs, per position ([..., S] -> [...])."""
    p = torch.softmax(logits.float() / temperature, dim=-1)
    cumulative = p.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    return 1 + (cumulative < top_p).sum(dim=-1)


def pact_gate(policy: torch.Tensor, ref_post: torch.Tensor, mask: torch.Tensor, *, gate_top_p: float = 0.9,
              gate_alpha: float = 2.0, gate_bias: float = 0.0, gate_temperature: float = 1.0,
              prefix_n: int = 8, decay_tau: float = 8.0, prefix_boost: float = 1.0) -> torch.Tensor:
    """c_t in [0, prefix_boost] ([B, A], no gradient): how much the post-only reference replaces the full-context
    one at answer position t. It grows when the policy's nucleus on S is wider than the post-only reference's,
    and decays after the first ``prefix_n`` positions."""
    with torch.no_grad():
        size = policy.shape[-1]
        i_pol = top_p_count(policy.detach(), gate_top_p, gate_temperature).float() / size
        i_post = top_p_count(ref_post.detach(), gate_top_p, gate_temperature).float() / size
        c = torch.sigmoid(gate_alpha * (i_pol - i_post - gate_bias)) * mask.float()
        if prefix_n >= 0:
            t = torch.arange(c.shape[-1], device=c.device, dtype=c.dtype)
            if decay_tau > 0:
                c = c * torch.exp(-(t - prefix_n).clamp_min(0) / decay_tau)
            else:
                c = c * (t < prefix_n).to(c.dtype)
        return c * prefix_boost  # applied whatever prefix_n is, after the decay (official code)


@torch.no_grad()
def pact_target(ref_full: torch.Tensor, ref_post: torch.Tensor, gate: torch.Tensor, weights: torch.Tensor,
                temperature: float = 2.0) -> torch.Tensor:
    """PACT's target q on S ([B, A, |S|]): relu(weights) * softmax(((1 - c) * ref_full + c * ref_post) / T),
    renormalised over S, with c = ``gate`` ([B, A])."""
    c = gate.detach().float().unsqueeze(-1)
    mix = (1 - c) * ref_full.detach().float() + c * ref_post.detach().float()
    q = torch.softmax(mix / temperature, dim=-1) * F.relu(weights.detach().float())
    return q / q.sum(dim=-1, keepdim=True).clamp_min(LOG_EPS)


def pact_kl(policy: torch.Tensor, ref_full: torch.Tensor, ref_post: torch.Tensor, mask: torch.Tensor,
            weights: torch.Tensor, *, temperature: float = 2.0, gate_top_p: float = 0.9, gate_alpha: float = 2.0,
            gate_bias: float = 0.0, gate_temperature: float = 1.0, prefix_n: int = 8, decay_tau: float = 8.0,
            prefix_boost: float = 1.0, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid answer positions of T^2 * KL(q || softmax(policy / T)) on the safety subset S.

    policy, ref_full, ref_post: logits [B, A, |S|] (position t predicts answer token t); ``policy`` carries the
    gradient, the references never do. mask: [B, A] valid positions. weights: v[S], raw (relu'd here).
    q = relu(weights) * softmax(((1 - c) * ref_full + c * ref_post) / T), renormalised; c from :func:`pact_gate`
    unless ``gate`` is given (ablations: zeros = full-context reference only, ones = post-only only).
    """
    mask_f = mask.to(policy.dtype if policy.is_floating_point() else torch.float32)
    if gate is None:
        gate = pact_gate(policy, ref_post, mask, gate_top_p=gate_top_p, gate_alpha=gate_alpha,
                         gate_bias=gate_bias, gate_temperature=gate_temperature, prefix_n=prefix_n,
                         decay_tau=decay_tau, prefix_boost=prefix_boost)
    q = pact_target(ref_full, ref_post, gate, weights, temperature)
    log_q = q.clamp_min(LOG_EPS).log()
    log_p = F.log_softmax(policy.float() / temperature, dim=-1)
    kl_t = temperature ** 2 * (q * (log_q - log_p)).sum(dim=-1)
    return (kl_t * mask_f).sum() / mask_f.sum().clamp_min(1)
