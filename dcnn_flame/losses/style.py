"""Content and style losses of the style-transfer supervision (paper Eq. 1-3).

Features come from :class:`dcnn_flame.supervision.vgg.VGGFeatures` (post-ReLU VGG-19):
conv4_2 for content, conv1_1 ... conv5_1 for style.

Normalisation choices (the paper's equations are plain sums; we use means so that the
value does not grow with the image size, and keep the sum available):

- content (Eq. 1): ``norm="l1"`` (paper text: "the L1 norm is used", the default) gives
  mean |F(x) - F(c)|; ``norm="l2"`` gives mean (F(x) - F(c))^2 (Eq. 1 as written).
  ``reduction="sum"`` gives the unnormalised sum.
- Gram matrix: G = F F^T / (C H W) for F reshaped to [C, H W].
- style (Eq. 2): per layer the squared Frobenius norm ||G(x) - G(s)||_F^2, averaged over
  the batch, then sum over layers with ``layer_weights`` (default 1 / number of layers).
- prototype variant ("channel-spatial separation" with K-means, K = 8): per image and
  layer the H W pixel feature vectors (in R^C) are clustered into K prototypes by a few
  Lloyd iterations. Assignments are computed without gradient; prototypes are the means
  of their pixels and carry gradient. The Gram matrix is replaced by the between-prototype
  covariance in channel space
      S = (1 / C) * sum_k pi_k (p_k - mu)(p_k - mu)^T,   [C, C]
  with pi_k = (pixels in cluster k) / (H W) and mu = sum_k pi_k p_k (= the mean feature).
  We use the C x C covariance *over prototypes* rather than a K x K matrix between
  prototypes because cluster indices are arbitrary: a K x K matrix of one image cannot
  be compared entry by entry with another image's. S is invariant to cluster order and
  equals the part of the feature covariance explained by the K colour/texture
  prototypes (the within-cluster scatter is dropped), matching the 1/(C H W) scale of G.
  K-means initialisation is deterministic (K pixels evenly spaced in raster order).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def content_loss(feat_x: Tensor, feat_c: Tensor, norm: str = "l1", reduction: str = "mean") -> Tensor:
    """Eq. 1 content loss on one layer (conv4_2).

    Args:
        feat_x: [B, C, H, W] features of the generated (rendered) image.
        feat_c: [B, C, H, W] features of the content (input) image.
        norm: "l1" (paper text, default) or "l2" (squared difference, Eq. 1).
        reduction: "mean" over all elements or "sum" (Eq. 1 literally, per batch).
    Returns: scalar.
    """
    if feat_x.shape != feat_c.shape:
        raise ValueError(f"feature shapes differ: {tuple(feat_x.shape)} vs {tuple(feat_c.shape)}")
    d = feat_x - feat_c
    if norm == "l1":
        e = d.abs()
    elif norm == "l2":
        e = d.square()
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if reduction == "mean":
        return e.mean()
    if reduction == "sum":
        return e.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def gram_matrix(feat: Tensor) -> Tensor:
    """Gram matrix normalised by C H W: [B, C, H, W] -> [B, C, C]."""
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


@torch.no_grad()
def kmeans_assign(x: Tensor, k: int, iters: int) -> Tensor:
    """Batched Lloyd K-means assignments (no gradient).

    Args:
        x: [B, N, C] samples (pixels as samples).
        k: clusters; min(k, N) are used.
        iters: Lloyd iterations after the deterministic initialisation.
    Returns: [B, N] int64 cluster index of each sample. Empty clusters keep their
        previous centre; ties go to the lowest index.
    """
    x = x.float()
    b, n, _ = x.shape
    k = min(k, n)
    init = torch.linspace(0, n - 1, k, device=x.device).round().long()
    centres = x[:, init, :].clone()
    labels = torch.cdist(x, centres).argmin(-1)
    for _ in range(iters):
        onehot = F.one_hot(labels, k).to(x.dtype)  # [B, N, K]
        counts = onehot.sum(1)  # [B, K]
        means = torch.bmm(onehot.transpose(1, 2), x) / counts.clamp_min(1.0)[..., None]
        centres = torch.where(counts[..., None] > 0, means, centres)
        labels = torch.cdist(x, centres).argmin(-1)
    return labels


def prototype_covariance(feat: Tensor, k: int = 8, iters: int = 5) -> Tensor:
    """Between-prototype covariance replacing the Gram matrix (see module docstring).

    Args:
        feat: [B, C, H, W].
        k: number of K-means prototypes (paper: 8).
        iters: Lloyd iterations.
    Returns: [B, C, C], differentiable w.r.t. ``feat`` through the prototype means.
    """
    b, c, h, w = feat.shape
    x = feat.reshape(b, c, h * w).transpose(1, 2)  # [B, N, C]
    labels = kmeans_assign(x.detach(), k, iters)
    onehot = F.one_hot(labels, min(k, h * w)).to(x.dtype)  # [B, N, K], constant
    counts = onehot.sum(1)  # [B, K]
    protos = torch.bmm(onehot.transpose(1, 2), x) / counts.clamp_min(1.0)[..., None]  # [B, K, C]
    pi = counts / (h * w)
    mu = (pi[..., None] * protos).sum(1, keepdim=True)
    d = protos - mu
    return torch.bmm((d * pi[..., None]).transpose(1, 2), d) / c


def style_statistic(feat: Tensor, mode: str = "gram", k: int = 8, iters: int = 5) -> Tensor:
    """[B, C, H, W] -> [B, C, C]: Gram matrix (``mode="gram"``) or prototype covariance."""
    if mode == "gram":
        return gram_matrix(feat)
    if mode == "prototype":
        return prototype_covariance(feat, k, iters)
    raise ValueError(f"mode must be 'gram' or 'prototype', got {mode!r}")


def style_loss(
    feats_x: Sequence[Tensor],
    feats_s: Sequence[Tensor],
    layer_weights: Sequence[float] | None = None,
    mode: str = "gram",
    k: int = 8,
    iters: int = 5,
) -> Tensor:
    """Eq. 2 style loss over several layers.

    Args:
        feats_x: per layer [B, C_l, H_l, W_l] features of the generated image.
        feats_s: the same layers of the style image (here the input image itself).
        layer_weights: one weight per layer; default 1 / number of layers.
        mode: "gram" (Eq. 2) or "prototype" (K-means prototype covariance).
        k, iters: prototype settings.
    Returns: scalar sum_l w_l * mean_b ||S_l(x) - S_l(s)||_F^2.
    """
    if len(feats_x) != len(feats_s) or not feats_x:
        raise ValueError(f"need the same non-zero number of layers, got {len(feats_x)} and {len(feats_s)}")
    n = len(feats_x)
    weights = [1.0 / n] * n if layer_weights is None else list(layer_weights)
    if len(weights) != n:
        raise ValueError(f"{len(weights)} layer weights for {n} layers")
    total = feats_x[0].new_zeros(())
    for w, fx, fs in zip(weights, feats_x, feats_s):
        if fx.shape[:2] != fs.shape[:2]:
            raise ValueError(f"layer shapes differ: {tuple(fx.shape)} vs {tuple(fs.shape)}")
        sx = style_statistic(fx, mode, k, iters)
        ss = style_statistic(fs, mode, k, iters)
        total = total + w * (sx - ss).square().sum(dim=(1, 2)).mean()
    return total


def style_transfer_loss(content: Tensor, style: Tensor, alpha: float = 0.7, beta: float = 0.3) -> Tensor:
    """Eq. 3: alpha * content + beta * style (paper's grid-searched optimum 0.7 / 0.3).

    In training the two terms are weighted by ``LossWeights.content`` / ``.style`` in
    :func:`dcnn_flame.losses.combine.combine`; this function is for standalone use.
    """
    return alpha * content + beta * style


def color_moment_loss(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """L1 distance of per-channel colour mean and standard deviation of two images.

    Args:
        x, y: [B, C, H, W] images.
        mask: optional [B, 1, H, W] weights (e.g. the rendered face mask) for both.
    Returns: scalar mean_b,c (|mu_x - mu_y| + |sd_x - sd_y|).
    """
    if mask is None:
        mask = torch.ones_like(x[:, :1])
    m = mask.to(x.dtype)
    area = m.sum(dim=(2, 3)).clamp_min(torch.finfo(x.dtype).eps)

    def moments(img: Tensor) -> tuple[Tensor, Tensor]:
        mu = (img * m).sum(dim=(2, 3)) / area
        var = ((img - mu[..., None, None]).square() * m).sum(dim=(2, 3)) / area
        return mu, (var + 1e-8).sqrt()

    mx, sx = moments(x)
    my, sy = moments(y.to(x.dtype))
    return ((mx - my).abs() + (sx - sy).abs()).mean()


def style_consistency_loss(
    feats_x: Sequence[Tensor],
    feats_y: Sequence[Tensor],
    image_x: Tensor | None = None,
    image_y: Tensor | None = None,
    mask: Tensor | None = None,
    color_weight: float = 1.0,
    k: int = 8,
    iters: int = 5,
) -> Tensor:
    """Style consistency for the animated domain (paper Section 3.4, stage 2).

    The paper constrains "texture and colour distribution" without an equation. We use
    the prototype style loss (texture) plus ``color_weight`` times
    :func:`color_moment_loss` (colour) between the rendered and the input image.

    Args:
        feats_x, feats_y: style-layer features of the two images (as :func:`style_loss`).
        image_x, image_y: optional [B, 3, H, W] images for the colour term.
        mask: optional [B, 1, H, W] mask for the colour term.
    Returns: scalar.
    """
    loss = style_loss(feats_x, feats_y, mode="prototype", k=k, iters=iters)
    if image_x is not None and image_y is not None and color_weight != 0:
        loss = loss + color_weight * color_moment_loss(image_x, image_y, mask)
    return loss
