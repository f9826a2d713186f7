"""68-landmark reprojection loss."""
from __future__ import annotations

import torch
from torch import Tensor

_NORMS = ("l1", "l2", "l2sq")


def landmark_distances(pred: Tensor, target: Tensor, norm: str = "l1") -> Tensor:
    """Per-landmark distance.

    Args:
        pred, target: [B, L, 2] (x, y), same units.
        norm: "l1" = |dx| + |dy|; "l2" = Euclidean distance; "l2sq" = squared distance.
    Returns: [B, L].
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    d = pred - target
    if norm == "l1":
        return d.abs().sum(-1)
    if norm == "l2":
        return torch.linalg.vector_norm(d, dim=-1)
    return d.square().sum(-1)


def landmark_loss(
    pred: Tensor,
    target: Tensor,
    weights: Tensor | None = None,
    confidence: Tensor | None = None,
    norm: str = "l1",
) -> Tensor:
    """Weighted mean landmark reprojection error in normalised image units.

    Both inputs are in the same normalised image coordinates (e.g. [-1, 1] across the
    224 crop, as the orthographic camera outputs), so the value does not depend on the
    image size.

    Args:
        pred: [B, L, 2] projected model landmarks.
        target: [B, L, 2] detected landmarks, or [B, L, 3] with a confidence in the last
            column. NaN coordinates mark missing landmarks (masked, never zero).
        weights: optional per-landmark weights [L] or [B, L] (e.g. higher on mouth/eyes).
        confidence: optional [B, L] visibility/confidence in [0, 1]; multiplied with the
            third target column when both are given.
        norm: see :func:`landmark_distances`.
    Returns: scalar sum(w * c * d) / sum(w * c); 0 (still differentiable) when
        nothing is valid.
    """
    if pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred must be [B, L, 2], got {tuple(pred.shape)}")
    if target.shape[:2] != pred.shape[:2] or target.shape[-1] not in (2, 3):
        raise ValueError(f"target must be [B, L, 2|3] matching pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    w = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device)
    if target.shape[-1] == 3:
        w = w * target[..., 2].to(pred.dtype)
    xy = target[..., :2].to(pred.dtype)
    if weights is not None:
        w = w * weights.to(pred.dtype).expand_as(w)
    if confidence is not None:
        w = w * confidence.to(pred.dtype)
    valid = ~torch.isnan(xy).any(-1) & ~torch.isnan(w)
    w = torch.where(valid, w, torch.zeros_like(w))
    xy = torch.where(valid[..., None], xy, pred.detach())
    d = landmark_distances(pred, xy, norm)
    return (w * d).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
