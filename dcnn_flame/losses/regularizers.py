"""Regularisers: Eq. 8 code norms, detail displacement, four-view shape consistency."""
from __future__ import annotations

import torch
from torch import Tensor


def code_l2(code: Tensor, squared: bool = True) -> Tensor:
    """Eq. 8 L_reg = ||C||_2 on a code (shape, expression or detail).

    Args:
        code: [B, D].
        squared: ||c||^2 (default, smooth at 0, as DECA's regularisers) or ||c|| (Eq. 8
            literally).
    Returns: scalar mean over the batch.
    """
    c = code.flatten(1)
    return c.square().sum(1).mean() if squared else torch.linalg.vector_norm(c, dim=1).mean()


def displacement_l1(displacement: Tensor, mask: Tensor | None = None) -> Tensor:
    """Detail regulariser: mean |U| of a UV displacement map (Eq. 9).

    Args:
        displacement: [B, 1, H, W] (or any [B, ...]).
        mask: optional weights broadcastable to it (e.g. the UV face region).
    Returns: scalar (masked mean).
    """
    a = displacement.abs()
    if mask is None:
        return a.mean()
    w = mask.to(a.dtype).expand_as(a)
    return (w * a).sum() / w.sum().clamp_min(torch.finfo(a.dtype).tiny)


def shape_consistency_loss(shape_codes: Tensor, view_mask: Tensor | None = None, mode: str = "variance") -> Tensor:
    """Four-view identity consistency: shape codes of one identity should agree.

    Args:
        shape_codes: [B, V, S] shape codes of the V (= 4) views of each sample.
        view_mask: optional [B, V] bool/0-1, False = view missing (padding).
        mode: "variance" = mean over views of ||s_v - mean_v s||^2 (sum over S);
            "distance" = mean over views of ||s_v - mean_v s|| (not squared).
    Returns: scalar mean over samples with >= 2 valid views; 0 when there is none.
    """
    if shape_codes.ndim != 3:
        raise ValueError(f"shape_codes must be [B, V, S], got {tuple(shape_codes.shape)}")
    b, v, _ = shape_codes.shape
    w = torch.ones(b, v, dtype=shape_codes.dtype, device=shape_codes.device)
    if view_mask is not None:
        w = view_mask.to(shape_codes.dtype)
    cnt = w.sum(1)  # [B]
    mean = (w[..., None] * shape_codes).sum(1) / cnt.clamp_min(1.0)[:, None]
    dev = shape_codes - mean[:, None]
    if mode == "variance":
        per_view = dev.square().sum(-1)
    elif mode == "distance":
        per_view = torch.linalg.vector_norm(dev, dim=-1)
    else:
        raise ValueError(f"mode must be 'variance' or 'distance', got {mode!r}")
    per_sample = (w * per_view).sum(1) / cnt.clamp_min(1.0)
    use = (cnt >= 2).to(shape_codes.dtype)
    return (use * per_sample).sum() / use.sum().clamp_min(1.0)
