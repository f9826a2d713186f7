"""Loss weights and their combination into the total energy (paper Eq. 3, 6, 13, 14).

    total = E_base + lambda_expr * E_expr + lambda_au * E_au + (feedback, MMD, ...)
    E_base = landmark + photometric + alpha * content + beta * style + regularisers

Every term has exactly one weight in :class:`LossWeights`; loss functions contain no
weights. A weight of 0 switches a term off: the model does not compute it and does not
build the network it needs (e.g. ``au=0`` and ``feedback=0`` -> no AU detector).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from torch import Tensor


def _coef(default: float) -> float:
    # Coefficients inside a term (not terms themselves) are marked so active_terms skips them.
    return field(default=default, metadata={"term": False})


@dataclass
class LossWeights:
    """One weight per loss term. Defaults: paper values where it gives them (alpha, beta),
    DECA's where the term is DECA's (landmark, photometric, code regularisers), otherwise
    our choice, to be tuned."""

    landmark: float = 1.0
    """68-landmark reprojection loss (normalised [-1, 1] image units)."""
    photometric: float = 2.0
    """Masked photometric L1 between rendered and input image."""
    content: float = 0.7
    """alpha of Eq. 3: content loss on VGG-19 conv4_2 (paper optimum 0.7)."""
    style: float = 0.3
    """beta of Eq. 3: style loss over conv1_1..conv5_1 (paper optimum 0.3)."""
    expression: float = 0.5
    """lambda_expr of Eq. 13: expression classification loss E_expr (our default)."""
    au: float = 0.5
    """lambda_au of Eq. 13: AU loss E_au of Eq. 12 (our default)."""
    feedback: float = 0.1
    """Feedback consistency loss L_fb of Eq. 14 (our default)."""
    mmd: float = 0.0
    """MMD domain alignment (stage-2 fine-tuning on animated characters; off in stage 1)."""
    shape_reg: float = 1e-4
    """Eq. 8 L2 regulariser on the shape code."""
    expr_reg: float = 1e-4
    """L2 regulariser on the expression code."""
    eye_pose_reg: float = 0.1
    """L2 regulariser on the two eye rotations (axis-angle, radians). Neither the 68 landmarks
    nor the face-region photometric loss see the eyeballs' rotation well, so without it the
    predicted gaze drifts freely (measured: 1.36 rad after 200 steps vs 0.17 rad ground truth)
    and inflates the Eq. 15 vertex error. Our term, not the paper's."""
    detail_reg: float = 5e-3
    """Regulariser on the detail code / UV displacement map."""
    shape_consistency: float = 0.01
    """Four-view shape-code consistency (our default)."""
    style_consistency: float = 0.0
    """Animated-domain style consistency (stage 2; off in stage 1)."""
    feedback_au_lambda: float = _coef(1.0)
    """lambda inside Eq. 14 weighting the AU feature term against the expression term
    (a coefficient of the feedback term, not a term of its own)."""
    feedback_expr_lambda: float = _coef(1.0)
    """Weight of the expression part inside Eq. 14 (1 in the paper; 0 in the "w/o Expr"
    ablation, which removes the expression branch from the feedback loop too)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"loss weight {f.name}={v!r} must be a finite number >= 0")


#: Names of the loss terms, in LossWeights field order.
TERM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LossWeights) if f.metadata.get("term", True))


def active_terms(weights: LossWeights) -> tuple[str, ...]:
    """Names of the terms with a non-zero weight (the ones to compute)."""
    return tuple(n for n in TERM_NAMES if getattr(weights, n) != 0)


def combine(loss_terms: dict[str, Tensor], weights: LossWeights) -> dict[str, Tensor]:
    """Weight the active terms and add them up.

    Args:
        loss_terms: unweighted scalar tensors by term name. Every active term must be
            present; zero-weight terms may be absent (and are ignored when present).
        weights: the weights.
    Returns: ``{name: weight * value}`` for the active terms plus ``"total"`` (their sum).
    Raises: KeyError for a missing active term or an unknown name; ValueError for a
        non-scalar value or when no term is active.
    """
    unknown = sorted(set(loss_terms) - set(TERM_NAMES))
    if unknown:
        raise KeyError(f"unknown loss terms {unknown}; known: {list(TERM_NAMES)}")
    active = active_terms(weights)
    if not active:
        raise ValueError("every loss weight is 0: nothing to optimise; set at least one weight > 0")
    missing = [n for n in active if n not in loss_terms]
    if missing:
        raise KeyError(
            f"active loss terms {missing} were not computed (weights "
            f"{ {n: getattr(weights, n) for n in missing} }); compute them or set their weight to 0"
        )
    out: dict[str, Tensor] = {}
    for name in active:
        value = loss_terms[name]
        if value.ndim != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        out[name] = getattr(weights, name) * value
    total = out[active[0]]
    for name in active[1:]:
        total = total + out[name]
    out["total"] = total
    return out
