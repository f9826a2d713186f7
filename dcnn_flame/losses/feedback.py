"""Feedback consistency loss (paper Eq. 14)."""
from __future__ import annotations

from torch import Tensor


def feedback_loss(
    f_exp_input: Tensor,
    f_exp_render: Tensor,
    f_au_input: Tensor,
    f_au_render: Tensor,
    au_lambda: float = 1.0,
    detach_input: bool = True,
    expr_lambda: float = 1.0,
) -> Tensor:
    """Eq. 14: ||f_exp(I) - f_exp(I_hat)||_1 + lambda ||f_AU(I) - f_AU(I_hat)||_2^2.

    ``expr_lambda`` scales the expression part (1 in Eq. 14; 0 in the "w/o Expr" ablation,
    where the expression branch is gone).

    Takes teacher features, not the networks: f_exp from the expression classifier
    (``ExpressionOutput.embedding``), f_AU from the AU detector (``AUDetectorOutput.features``).

    Args:
        f_exp_input, f_exp_render: [B, D_exp] features of the input and rendered image.
        f_au_input, f_au_render: [B, D_au].
        au_lambda: lambda of Eq. 14 (``LossWeights.feedback_au_lambda``).
        expr_lambda: weight of the expression part (``LossWeights.feedback_expr_lambda``).
        detach_input: the input image's features are targets (no gradient).
    Returns: scalar; both norms are per sample (sum over features), mean over the batch.
    """
    if f_exp_input.shape != f_exp_render.shape or f_au_input.shape != f_au_render.shape:
        raise ValueError(
            f"feature shapes differ: f_exp {tuple(f_exp_input.shape)} vs {tuple(f_exp_render.shape)}, "
            f"f_AU {tuple(f_au_input.shape)} vs {tuple(f_au_render.shape)}"
        )
    if detach_input:
        f_exp_input, f_au_input = f_exp_input.detach(), f_au_input.detach()
    l_exp = (f_exp_input - f_exp_render).flatten(1).abs().sum(1).mean()
    l_au = (f_au_input - f_au_render).flatten(1).square().sum(1).mean()
    return expr_lambda * l_exp + au_lambda * l_au
