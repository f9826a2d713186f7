"""Weighted binary cross-entropy for training the AU detector (paper Section 3.4).

AU targets are activations in [0, 1] (OpenFace 0-5 intensities divided by 5, or 0/1
occurrence labels); NaN marks a missing label, which is masked out, never read as 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def au_pos_weight(targets: Tensor, max_weight: float = 10.0) -> Tensor:
    """Per-AU positive weights n_neg / n_pos from a training label matrix.

    Soft targets count fractionally (t positive, 1 - t negative). AUs without any
    positive get ``max_weight``; all weights are clamped to [1 / max_weight, max_weight].

    Args: targets [N, K] in [0, 1] with NaN = missing.
    Returns: [K] float, to pass as ``pos_weight`` to :func:`au_bce_loss`.
    """
    valid = ~torch.isnan(targets)
    t = torch.where(valid, targets, torch.zeros_like(targets))
    pos = t.sum(0)
    neg = (valid.to(t.dtype) - t).sum(0)
    w = torch.where(pos > 0, neg / pos.clamp_min(torch.finfo(t.dtype).tiny), torch.full_like(pos, max_weight))
    return w.clamp(1.0 / max_weight, max_weight)


def au_bce_loss(
    logits: Tensor,
    targets: Tensor,
    pos_weight: Tensor | None = None,
    au_weights: Tensor | None = None,
) -> Tensor:
    """Weighted BCE over the valid (non-NaN) AU labels.

    Args:
        logits: [B, K] AU detector logits.
        targets: [B, K] in [0, 1], NaN = missing.
        pos_weight: optional [K] weight of the positive term per AU (class balance,
            see :func:`au_pos_weight`).
        au_weights: optional [K] weight of each AU's whole term.
    Returns: scalar sum(w * bce) / sum(w) over valid entries (w = au_weights or 1);
        0 (differentiable) when no label is valid.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must match")
    valid = ~torch.isnan(targets)
    t = torch.where(valid, targets, torch.zeros_like(targets)).to(logits.dtype)
    pw = None if pos_weight is None else pos_weight.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, reduction="none")
    w = valid.to(logits.dtype)
    if au_weights is not None:
        w = w * au_weights.to(logits.dtype)
    return (w * bce).sum() / w.sum().clamp_min(torch.finfo(logits.dtype).tiny)
