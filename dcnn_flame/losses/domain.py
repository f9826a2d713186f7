"""Maximum Mean Discrepancy for domain adaptation (paper Section 3.4, stage 2).

Multi-kernel Gaussian MMD^2 between samples x (e.g. real-face features) and y (animated
features) with

    k(a, b) = sum_m exp(-||a - b||^2 / (m * h)),   m in ``multipliers``,

where h is a bandwidth in squared-distance units. By default h is the median heuristic:
the median of the pairwise squared distances between all distinct pooled samples,
computed without gradient (the kernel's scale is not a thing to optimise).

Estimators (Gretton et al. 2012):
- unbiased (default): mean of k over x-x pairs i != j + mean over y-y pairs i != j
  - 2 * mean over x-y pairs. It can be slightly negative; needs >= 2 samples per side.
- biased: the same with the diagonals included (V-statistic), always >= 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pairwise_sq_dists(z: Tensor) -> Tensor:
    """[N, D] -> [N, N] squared Euclidean distances (clamped at 0, exact 0 diagonal)."""
    sq = z.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
    return d2 * (1.0 - torch.eye(z.shape[0], dtype=z.dtype, device=z.device))


def median_bandwidth(d2: Tensor) -> Tensor:
    """Median of the off-diagonal entries of a squared-distance matrix [N, N] (no grad).

    Uses the lower median (``torch.median``); falls back to 1 when it is 0.
    """
    n = d2.shape[0]
    off = d2.detach()[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    h = off.median()
    return torch.where(h > 0, h, torch.ones_like(h))


def mmd_loss(
    x: Tensor,
    y: Tensor,
    multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidth: float | Tensor | None = None,
    unbiased: bool = True,
) -> Tensor:
    """Multi-kernel Gaussian MMD^2.

    Args:
        x: [N, ...] samples of domain A (flattened to [N, D]).
        y: [M, ...] samples of domain B, same D.
        multipliers: kernel bandwidths as multiples of h.
        bandwidth: h; None = median heuristic.
        unbiased: unbiased U-statistic (needs N, M >= 2) or biased V-statistic.
    Returns: scalar MMD^2 estimate.
    """
    x, y = x.flatten(1), y.flatten(1).to(x.dtype)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"the unbiased MMD needs >= 2 samples per domain, got {n} and {m}")
    if not multipliers:
        raise ValueError("multipliers must not be empty")
    d2 = pairwise_sq_dists(torch.cat([x, y], 0))
    h = median_bandwidth(d2) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device)
    k = sum(torch.exp(-d2 / (mult * h)) for mult in multipliers)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return sxx + syy - 2.0 * kxy.mean()
