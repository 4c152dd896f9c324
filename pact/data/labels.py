"""Label conventions of SFT batches and the answer positions they define (torch only)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # the label value HF losses skip


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For labels [B, L]: the logit positions [B, A] that predict answer tokens 0..A-1 (label index - 1) and
    the valid mask [B, A]. Answers are one contiguous labelled span per row."""
    labelled = labels != IGNORE_INDEX
    counts = labelled.sum(dim=1)
    width = int(counts.max()) if labels.numel() else 0
    starts = labelled.float().argmax(dim=1)  # first labelled index
    t = torch.arange(width, device=labels.device)
    mask = t.unsqueeze(0) < counts.unsqueeze(1)
    pos = (starts.unsqueeze(1) - 1 + t.unsqueeze(0)).clamp(0, labels.shape[1] - 1)
    return pos * mask, mask
