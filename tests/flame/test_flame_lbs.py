"""Unit tests of dcnn_flame.flame.lbs against naive per-element references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcnn_flame.flame.lbs import (
    batch_rodrigues,
    forward_kinematics,
    pose_features,
    skin_vertices,
)

PARENTS = [-1, 0, 1, 1, 1]


def naive_rodrigues(r: np.ndarray) -> np.ndarray:
    """Rodrigues' formula with a normalised axis, one vector at a time."""
    theta = math.sqrt(sum(float(x) ** 2 for x in r))
    if theta == 0.0:
        return np.eye(3)
    kx, ky, kz = (float(x) / theta for x in r)
    k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + math.sin(theta) * k + (1.0 - math.cos(theta)) * (k @ k)


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-4, 5e-3, 1e-2, 0.3, 3.0])
def test_rodrigues_matches_naive_at_all_scales(scale):
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(16, 3, generator=gen, dtype=torch.float64) * scale
    got = batch_rodrigues(r)
    want = np.stack([naive_rodrigues(v) for v in r.numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-14)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(got @ got.transpose(1, 2), eye.expand(16, 3, 3), atol=1e-13)
    assert torch.allclose(torch.linalg.det(got), torch.ones(16, dtype=torch.float64), atol=1e-13)


def test_rodrigues_is_exact_identity_at_zero_and_matches_matrix_exp():
    assert torch.equal(batch_rodrigues(torch.zeros(4, 3)), torch.eye(3).expand(4, 3, 3))
    r = torch.randn(8, 3, dtype=torch.float64)
    k = torch.zeros(8, 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -r[:, 2], r[:, 1], -r[:, 0]
    k = k - k.transpose(1, 2)
    assert torch.allclose(batch_rodrigues(r), torch.linalg.matrix_exp(k), atol=1e-12)


def test_rodrigues_gradient_finite_at_zero_and_correct():
    r0 = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    batch_rodrigues(r0).sum().backward()
    assert torch.isfinite(r0.grad).all()
    # dR/dr at 0 is the skew generator: d(sum R)/dr = 0 by antisymmetry, so use a
    # weighted sum and compare with the analytic answer K(e_i) for each component.
    w = torch.randn(3, 3, dtype=torch.float64)
    r1 = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    (batch_rodrigues(r1)[0] * w).sum().backward()
    want = torch.tensor([w[2, 1] - w[1, 2], w[0, 2] - w[2, 0], w[1, 0] - w[0, 1]])
    assert torch.allclose(r1.grad[0], want.double(), atol=1e-14)
    for scale in (0.0, 1e-3, 1e-2, 0.7):
        r = (torch.randn(4, 3, dtype=torch.float64) * scale).requires_grad_()
        assert torch.autograd.gradcheck(batch_rodrigues, (r,), eps=1e-7, atol=1e-7)


def test_rodrigues_promotes_low_precision_and_ignores_autocast():
    r = torch.randn(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = batch_rodrigues(r)
        got_bf16 = batch_rodrigues(r.bfloat16())
    assert got.dtype == torch.float32 and got_bf16.dtype == torch.float32
    assert torch.equal(got, batch_rodrigues(r))
    assert torch.equal(got_bf16, batch_rodrigues(r.bfloat16().float()))


def test_pose_features_layout():
    rot = batch_rodrigues(torch.randn(2 * 5, 3, dtype=torch.float64)).reshape(2, 5, 3, 3)
    got = pose_features(rot)
    assert got.shape == (2, 36)
    for b in range(2):
        k = 0
        for j in range(1, 5):
            for row in range(3):
                for col in range(3):
                    want = rot[b, j, row, col].item() - (1.0 if row == col else 0.0)
                    assert got[b, k].item() == pytest.approx(want, abs=1e-15)
                    k += 1


def naive_chain(rot: np.ndarray, joints: np.ndarray, parents: list[int]):
    """Textbook chain: G_j = G_p [R_j | J_j - J_p]; relative A_j = G_j [I | -J_j]."""
    glob, rel = [], []
    for j, p in enumerate(parents):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0.0)
        g = local if p < 0 else glob[p] @ local
        glob.append(g)
        unrest = np.eye(4)
        unrest[:3, 3] = -joints[j]
        rel.append(g @ unrest)
    return np.stack([g[:3, 3] for g in glob]), np.stack(rel)


def test_forward_kinematics_matches_textbook_chain():
    gen = torch.Generator().manual_seed(3)
    batch = 3
    rot = batch_rodrigues(torch.randn(batch * 5, 3, generator=gen, dtype=torch.float64))
    rot = rot.reshape(batch, 5, 3, 3)
    joints = torch.randn(batch, 5, 3, generator=gen, dtype=torch.float64)
    posed, rel = forward_kinematics(rot, joints, PARENTS)
    for b in range(batch):
        want_posed, want_rel = naive_chain(rot[b].numpy(), joints[b].numpy(), PARENTS)
        np.testing.assert_allclose(posed[b].numpy(), want_posed, atol=1e-12)
        np.testing.assert_allclose(rel[b].numpy(), want_rel, atol=1e-12)


def test_forward_kinematics_identity_at_rest_and_rejects_bad_tree():
    joints = torch.randn(2, 5, 3)
    eye = torch.eye(3).expand(2, 5, 3, 3)
    posed, rel = forward_kinematics(eye, joints, PARENTS)
    assert torch.equal(posed, joints)
    assert torch.equal(rel, torch.eye(4).expand(2, 5, 4, 4))
    with pytest.raises(ValueError, match="parent"):
        forward_kinematics(eye, joints, [-1, 2, 0, 1, 1])
    with pytest.raises(ValueError, match="root"):
        forward_kinematics(eye, joints, [0, 0, 1, 1, 1])


def test_skin_vertices_matches_per_vertex_blend():
    gen = torch.Generator().manual_seed(4)
    batch, nv = 2, 25
    rot = batch_rodrigues(torch.randn(batch * 5, 3, generator=gen, dtype=torch.float64))
    joints = torch.randn(batch, 5, 3, generator=gen, dtype=torch.float64)
    _, rel = forward_kinematics(rot.reshape(batch, 5, 3, 3), joints, PARENTS)
    weights = torch.rand(nv, 5, generator=gen, dtype=torch.float64)
    weights = weights / weights.sum(1, keepdim=True)
    verts = torch.randn(batch, nv, 3, generator=gen, dtype=torch.float64)
    got = skin_vertices(verts, rel, weights)
    for b in range(batch):
        for v in range(nv):
            t = sum(weights[v, j].item() * rel[b, j].numpy() for j in range(5))
            want = t @ np.append(verts[b, v].numpy(), 1.0)
            np.testing.assert_allclose(got[b, v].numpy(), want[:3], atol=1e-12)
