"""Expression supervision: E_expr (classification) and E_au (Eq. 12)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def expression_ce_loss(
    logits: Tensor,
    labels: Tensor,
    class_weights: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """E_expr: cross-entropy of expression logits against class labels.

    Args:
        logits: [B, K] expression classifier logits (of the rendered image in the
            feedback loop, or of the input image when training the classifier).
        labels: [B] int64 class index (order of constants.EXPRESSION_CLASSES);
            negative (-1) = missing, masked.
        class_weights: optional [K] weights (class imbalance).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    Returns: scalar weighted mean over valid samples (weights = class_weights[label]
        or 1); 0 (differentiable) when no label is valid.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [B, K] and labels [B], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    valid = labels >= 0
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    ce = F.cross_entropy(logits, safe, reduction="none", label_smoothing=label_smoothing)
    w = valid.to(logits.dtype)
    if class_weights is not None:
        w = w * class_weights.to(logits.dtype)[safe]
    return (w * ce).sum() / w.sum().clamp_min(torch.finfo(logits.dtype).tiny)


def expression_kl_loss(pred_logits: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(target / T) || softmax(pred / T)) * T^2, mean over the batch.

    A soft variant of E_expr comparing the classifier's label distribution on the
    rendered image with that on the input image (target is detached).
    Shapes: [B, K], [B, K] -> scalar.
    """
    t = F.log_softmax(target_logits.detach() / temperature, dim=-1)
    p = F.log_softmax(pred_logits / temperature, dim=-1)
    return F.kl_div(p, t, log_target=True, reduction="batchmean") * temperature**2


def au_expression_loss(
    expr_pred: Tensor,
    au: Tensor,
    au_map: Tensor | Callable[[Tensor], Tensor],
) -> Tensor:
    """Eq. 12: ||e_pred - e_au||^2 with e_au the AU-driven expression parameters.

    Args:
        expr_pred: [B, E] predicted FLAME expression parameters.
        au: [B, K] AU activations (K = 17, order of constants.AU_IDS); NaN = missing.
        au_map: either a matrix [K, E] (e_au = a @ M, e.g. the procedural head's AU
            components) or a callable [N, K] -> [N, E].
    Masking of missing AUs (never read as 0):
        - matrix: an expression dimension j of sample b is used only if every AU that
          drives it (M[k, j] != 0) is present in sample b;
        - callable: only samples with all K AUs present are used.
    Returns: scalar mean over samples with at least one usable dimension of
        sum_j (e_pred - e_au)^2 over usable dimensions; 0 (differentiable) if none.
    """
    if expr_pred.ndim != 2 or au.ndim != 2 or au.shape[0] != expr_pred.shape[0]:
        raise ValueError(f"need expr_pred [B, E] and au [B, K], got {tuple(expr_pred.shape)} and {tuple(au.shape)}")
    valid = ~torch.isnan(au)
    a = torch.where(valid, au, torch.zeros_like(au)).to(expr_pred.dtype)
    if isinstance(au_map, Tensor):
        if au_map.shape != (au.shape[1], expr_pred.shape[1]):
            raise ValueError(f"au_map must be [K={au.shape[1]}, E={expr_pred.shape[1]}], got {tuple(au_map.shape)}")
        m = au_map.to(expr_pred.dtype)
        e_au = a @ m
        missing_drivers = (~valid).to(m.dtype) @ (m != 0).to(m.dtype)  # [B, E]
        use = missing_drivers == 0
    else:
        rows = valid.all(1)
        e_au = torch.zeros_like(expr_pred)
        if bool(rows.any()):
            e_au = e_au.index_put((rows.nonzero(as_tuple=True)[0],), au_map(a[rows]).to(expr_pred.dtype))
        use = rows[:, None].expand_as(expr_pred)
    sq = torch.where(use, (expr_pred - e_au).square(), torch.zeros_like(expr_pred))
    n = use.any(1).to(expr_pred.dtype).sum()
    return sq.sum() / n.clamp_min(1.0)
