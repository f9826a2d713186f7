"""Linear blend skinning for FLAME, written from the FLAME paper's equations.

Li et al. 2017, "Learning a model of facial shape and expression from 4D scans":

    M(beta, theta, psi) = W(T_P(beta, theta, psi), J(beta), theta, weights)
    T_P = T + B_S(beta) + B_E(psi) + B_P(theta)

This module holds the pose-dependent pieces as pure functions: axis-angle to rotation
(:func:`batch_rodrigues`), the pose-corrective features of ``B_P``
(:func:`pose_features`), the kinematic chain (:func:`forward_kinematics`), the skinning
blend (:func:`skin_vertices`) and their composition (:func:`linear_blend_skinning`).
The identity/expression blendshapes and the landmark embedding live in
:mod:`dcnn_flame.flame.layer`.

Every function computes in at least float32: half/bfloat16 inputs are promoted and
autocast is switched off inside, because skinning sums many small offsets onto
metre-scale coordinates and bf16 (8 mantissa bits) would lose millimetres.
float64 inputs stay float64.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "batch_rodrigues",
    "check_parents",
    "compute_dtype",
    "forward_kinematics",
    "linear_blend_skinning",
    "pose_features",
    "skin_vertices",
]

#: Below this squared angle (rad^2) the Rodrigues coefficients use their Taylor series.
#: At theta^2 < 1e-4 the first dropped terms are < theta^6/5040 ~ 2e-16, i.e. below
#: float64 round-off, so the switch is invisible in value and in gradient.
_SMALL_ANGLE_SQ = 1e-4


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The floating dtype to compute in: the widest of ``dtypes`` and float32."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    if not out.is_floating_point:
        raise TypeError(f"expected floating-point tensors, got dtypes {dtypes}")
    return out


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _skew(v: Tensor) -> Tensor:
    """[N, 3] vectors -> [N, 3, 3] cross-product matrices K with K @ x = v x x."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        (zero, -z, y,
         z, zero, -x,
         -y, x, zero),
        dim=-1,
    ).reshape(v.shape[:-1] + (3, 3))


def batch_rodrigues(axis_angle: Tensor) -> Tensor:
    """Axis-angle vectors to rotation matrices (Rodrigues' formula).

    Uses ``R = I + a(theta) K + b(theta) K^2`` with ``K`` the skew matrix of the
    *unnormalised* vector, ``a = sin(theta)/theta`` and ``b = (1 - cos(theta))/theta^2``.
    Near zero both coefficients switch to their Taylor series, so the value is exact
    (``R == I`` bit for bit at zero) and the gradient is finite everywhere, including
    at exactly zero angle (where ``dR = K(d axis_angle)``).

    Args:
        axis_angle: [N, 3] rotation vectors, angle = norm in radians.

    Returns:
        [N, 3, 3] rotation matrices, dtype float32 (or float64 for float64 input).
    """
    if axis_angle.ndim != 2 or axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must be [N, 3], got {tuple(axis_angle.shape)}")
    with _no_autocast(axis_angle.device):
        r = axis_angle.to(compute_dtype(axis_angle.dtype))
        theta_sq = (r * r).sum(-1)
        small = theta_sq < _SMALL_ANGLE_SQ
        # Large-angle branch evaluated on a safe argument so that where() never sees
        # NaN/inf gradients coming from the branch it discards.
        theta_sq_safe = torch.where(small, torch.ones_like(theta_sq), theta_sq)
        theta = theta_sq_safe.sqrt()
        a_large = torch.sin(theta) / theta
        b_large = (1.0 - torch.cos(theta)) / theta_sq_safe
        a_small = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
        b_small = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
        a = torch.where(small, a_small, a_large)[:, None, None]
        b = torch.where(small, b_small, b_large)[:, None, None]
        k = _skew(r)
        eye = torch.eye(3, dtype=r.dtype, device=r.device)
        return eye + a * k + b * (k @ k)


def pose_features(rotmats: Tensor) -> Tensor:
    """Pose-corrective features of FLAME's ``B_P``: ``(R_j - I)`` for joints 1..4.

    Args:
        rotmats: [B, 5, 3, 3] local joint rotations (global, neck, jaw, eyes).

    Returns:
        [B, 36]: joints 1..4 in order, each 3x3 flattened row-major. The global
        rotation is excluded (correctives must not depend on where the head faces).
    """
    if rotmats.ndim != 4 or rotmats.shape[-2:] != (3, 3) or rotmats.shape[1] < 2:
        raise ValueError(f"rotmats must be [B, J>=2, 3, 3], got {tuple(rotmats.shape)}")
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    return (rotmats[:, 1:] - eye).reshape(rotmats.shape[0], -1)


def check_parents(parents: Sequence[int] | Tensor | np.ndarray, num_joints: int) -> list[int]:
    """Validate a kinematic tree ([J] parent per joint) and return it as a list.

    Joint 0 must be the root (-1) and every joint must come after its parent, which is
    what lets :func:`forward_kinematics` walk the joints in index order.
    """
    plist = [int(p) for p in (parents.tolist() if hasattr(parents, "tolist") else parents)]
    if len(plist) != num_joints:
        raise ValueError(f"parents has {len(plist)} entries for {num_joints} joints")
    if plist[0] != -1:
        raise ValueError(f"joint 0 must be the root (parent -1), got parents={plist}")
    for j, p in enumerate(plist[1:], start=1):
        if not 0 <= p < j:
            raise ValueError(
                f"parents must list each joint after its parent (0 <= parent < index); "
                f"joint {j} has parent {p} in {plist}"
            )
    return plist


def forward_kinematics(
    rotmats: Tensor, joints: Tensor, parents: Sequence[int] | Tensor | np.ndarray
) -> tuple[Tensor, Tensor]:
    """Pose the kinematic tree.

    Each joint rotates its subtree about its own rest position. The returned
    ``rel_transforms`` map rest-pose points to posed points for a point rigidly
    attached to that joint (the rest joint location is already removed), so
    ``posed = rel_transforms[j] @ [rest; 1]``.

    They are accumulated as ``A_j = A_parent(j) @ [R_j | J_j - R_j J_j]``, which equals
    the textbook ``G_j @ [I | -J_j]`` with ``G_j = G_parent @ [R_j | J_j - J_parent]``
    but is exactly the identity (zero translation) at zero pose, in any precision.

    Args:
        rotmats: [B, J, 3, 3] local rotation of each joint.
        joints: [B, J, 3] rest-pose joint locations.
        parents: [J] parent index per joint, -1 for the root; every joint after its
            parent (FLAME: ``[-1, 0, 1, 1, 1]``).

    Returns:
        posed_joints: [B, J, 3] joint locations after posing.
        rel_transforms: [B, J, 4, 4] rest-to-posed rigid transforms.
    """
    if rotmats.ndim != 4 or rotmats.shape[-2:] != (3, 3):
        raise ValueError(f"rotmats must be [B, J, 3, 3], got {tuple(rotmats.shape)}")
    batch, num_joints = rotmats.shape[:2]
    if joints.shape != (batch, num_joints, 3):
        raise ValueError(
            f"joints must be [B, J, 3] = {(batch, num_joints, 3)}, got {tuple(joints.shape)}"
        )
    plist = check_parents(parents, num_joints)
    with _no_autocast(rotmats.device):
        dtype = compute_dtype(rotmats.dtype, joints.dtype)
        rot = rotmats.to(dtype)
        jnt = joints.to(dtype)
        # Local "rotate about the rest joint" transforms, top 3 rows: [R | J - R J].
        trans = jnt - (rot @ jnt.unsqueeze(-1)).squeeze(-1)
        local = torch.cat((rot, trans.unsqueeze(-1)), dim=-1)  # [B, J, 3, 4]
        bottom = torch.zeros(batch, num_joints, 1, 4, dtype=dtype, device=rot.device)
        bottom[..., 3] = 1.0
        local = torch.cat((local, bottom), dim=-2)  # [B, J, 4, 4]
        chain = [local[:, 0]]
        for j in range(1, num_joints):
            chain.append(chain[plist[j]] @ local[:, j])
        rel = torch.stack(chain, dim=1)
        posed = (rel[..., :3, :3] @ jnt.unsqueeze(-1)).squeeze(-1) + rel[..., :3, 3]
    return posed, rel


def skin_vertices(vertices: Tensor, rel_transforms: Tensor, weights: Tensor) -> Tensor:
    """Blend per-joint rigid transforms per vertex: ``v' = sum_j w_vj A_j v``.

    Evaluated as ``v + (sum_j w_vj (A_j - I)) v`` which is the same when each weight
    row sums to 1, leaves the rest pose exactly unchanged, and ignores tiny row-sum
    errors in stored weights instead of scaling the mesh by them.

    Args:
        vertices: [B, V, 3] rest-pose vertices (pose correctives already added).
        rel_transforms: [B, J, 4, 4] from :func:`forward_kinematics`.
        weights: [V, J] skinning weights, rows summing to 1.

    Returns:
        [B, V, 3] posed vertices.
    """
    batch, num_joints = rel_transforms.shape[:2]
    if weights.ndim != 2 or weights.shape != (vertices.shape[1], num_joints):
        raise ValueError(
            f"weights must be [V, J] = {(vertices.shape[1], num_joints)}, "
            f"got {tuple(weights.shape)}"
        )
    with _no_autocast(vertices.device):
        dtype = compute_dtype(vertices.dtype, rel_transforms.dtype, weights.dtype)
        eye34 = torch.eye(3, 4, dtype=dtype, device=vertices.device)
        delta = rel_transforms.to(dtype)[..., :3, :] - eye34  # [B, J, 3, 4]
        # One [V, J] x [J, 12] matmul per sample instead of materialising [B, V, 4, 4].
        blended = torch.matmul(weights.to(dtype), delta.reshape(batch, num_joints, 12))
        blended = blended.reshape(batch, -1, 3, 4)  # [B, V, 3, 4]
        v = vertices.to(dtype)
        return v + (blended[..., :3] @ v.unsqueeze(-1)).squeeze(-1) + blended[..., 3]


def linear_blend_skinning(
    v_shaped: Tensor,
    rotmats: Tensor,
    j_regressor: Tensor,
    parents: Sequence[int] | Tensor | np.ndarray,
    posedirs: Tensor,
    weights: Tensor,
) -> tuple[Tensor, Tensor]:
    """FLAME's ``W(T_P, J, theta, weights)`` from the blended rest shape.

    Joints are regressed from ``v_shaped`` (before pose correctives), pose correctives
    ``B_P`` are added, then the mesh is skinned.

    Args:
        v_shaped: [B, V, 3] template plus identity/expression (and eyelid) blendshapes.
        rotmats: [B, J, 3, 3] local joint rotations (from :func:`batch_rodrigues`).
        j_regressor: [J, V] joint regressor.
        parents: [J] parent per joint, -1 for the root.
        posedirs: [P, V*3] pose-corrective basis with P = 9*(J-1), rows matching
            :func:`pose_features`, columns ordered vertex-major (x, y, z per vertex).
        weights: [V, J] skinning weights.

    Returns:
        vertices: [B, V, 3] posed mesh.
        posed_joints: [B, J, 3] posed joint locations.
    """
    batch, num_verts = v_shaped.shape[:2]
    with _no_autocast(v_shaped.device):
        dtype = compute_dtype(v_shaped.dtype, rotmats.dtype)
        v_shaped = v_shaped.to(dtype)
        rotmats = rotmats.to(dtype)
        joints = torch.einsum("jv,bvc->bjc", j_regressor.to(dtype), v_shaped)
        pose_offsets = pose_features(rotmats) @ posedirs.to(dtype)  # [B, V*3]
        v_posed = v_shaped + pose_offsets.reshape(batch, num_verts, 3)
        posed_joints, rel = forward_kinematics(rotmats, joints, parents)
        vertices = skin_vertices(v_posed, rel, weights)
    return vertices, posed_joints
