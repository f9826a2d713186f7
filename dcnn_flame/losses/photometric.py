"""Masked photometric loss between the rendered and the input image."""
from __future__ import annotations

import torch
from torch import Tensor


def _as_mask(m: Tensor, ref: Tensor, name: str) -> Tensor:
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] != ref.shape[0] or m.shape[-2:] != ref.shape[-2:]:
        raise ValueError(
            f"{name} must be [B, 1, H, W] or [B, H, W] matching image {tuple(ref.shape)}, got {tuple(m.shape)}"
        )
    return m.to(ref.dtype)


def photometric_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    skin_mask: Tensor | None = None,
    norm: str = "l1",
) -> Tensor:
    """Photometric error over the rendered face, normalised by the mask area.

    Args:
        pred: [B, C, H, W] rendered image.
        target: [B, C, H, W] input image.
        mask: [B, 1, H, W] or [B, H, W] render coverage in [0, 1] (soft values allowed).
        skin_mask: optional face-skin mask of the same shape, multiplied with ``mask``
            (keeps hair, glasses, occluders out).
        norm: "l1" = mean over channels of |diff|; "l2" = mean over channels of diff^2.
    Returns: scalar sum_{b,h,w}(m * e) / sum_{b,h,w}(m): the mean per-pixel error over
        the masked area of the whole batch; 0 (differentiable) when the mask is empty.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be [B, C, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    m = _as_mask(mask, pred, "mask")
    if skin_mask is not None:
        m = m * _as_mask(skin_mask, pred, "skin_mask")
    d = pred - target.to(pred.dtype)
    if norm == "l1":
        e = d.abs().mean(1, keepdim=True)
    elif norm == "l2":
        e = d.square().mean(1, keepdim=True)
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return (m * e).sum() / m.sum().clamp_min(torch.finfo(m.dtype).tiny)
