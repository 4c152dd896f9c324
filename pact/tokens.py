"""The PACT safety-token direction from teacher-forced logits (torch only; the public API of the method).

Row t of a response's logits predicts response token t. The model-level pass over (prompt, refusal) pairs and
the cached ``tokens`` stage are in :mod:`pact.tokens_stage`.
"""

from __future__ import annotations

import torch

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
    if len(aligned) != len(base):
        raise ValueError(f"need the same positive number of aligned and base samples, got {len(aligned)} "
                         f"and {len(base)}")
    sums = DirectionSums(mode, temperature)
    for za, zb in zip(aligned, base):
        sums.add(za, zb)
    return sums.direction(top_k)


class DirectionSums:
    """The running sums behind :func:`direction_from_logits`, fed one (aligned, base) sample at a time, so that a
    model-level pass need not hold every sample's logits (same arithmetic, same order)."""

    def __init__(self, mode: str = "p_diff", temperature: float = 1.0):
        if mode not in DIRECTION_MODES:
            raise ValueError(f"mode={mode!r}; expected one of {DIRECTION_MODES}")
        self.mode, self.temperature = mode, temperature
        self.n = 0
        self.d_sum: torch.Tensor | None = None
        self.r_sum: torch.Tensor | None = None

    def add(self, za: torch.Tensor, zb: torch.Tensor) -> None:
        """One sample: the aligned and base model's logits [R, V] on the same response tokens."""
        if za.shape != zb.shape:
            raise ValueError(f"aligned and base logits differ in shape: {tuple(za.shape)} vs {tuple(zb.shape)}")
        log_pa = torch.log_softmax(za.double() / self.temperature, dim=-1)
        log_pb = torch.log_softmax(zb.double() / self.temperature, dim=-1)
        pa = log_pa.exp()
        diff = pa - log_pb.exp() if self.mode == "p_diff" else pa * (log_pb - log_pa)
        d_i, r_i = diff.mean(dim=0), pa.mean(dim=0)
        self.d_sum = d_i if self.d_sum is None else self.d_sum + d_i
        self.r_sum = r_i if self.r_sum is None else self.r_sum + r_i
        self.n += 1

    def direction(self, top_k: int = 50) -> torch.Tensor:
        """v [V] float32 from the samples added so far."""
        if self.d_sum is None or self.r_sum is None:
            raise ValueError("need the same positive number of aligned and base samples, got none")
        d, r = self.d_sum / self.n, self.r_sum / self.n
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
