"""Retargeting checked against the synthetic world's ground truth (no Ray).

The AU check is analytic rather than through a trained AU detector (training one on renders
takes minutes, too slow for CI): the procedural head's ground-truth AU geometry is the mesh
displacement of each unit AU through the retargeter itself (expression components + jaw).
For each bank expression, the retargeted mesh's displacement is decomposed on those 17 AU
displacement fields by least squares; the intended (non-zero) AUs of the profile must be the
ones recovered with the highest activations, and the activations must match the profile.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcnn_flame.constants import AU_IDS, NUM_AUS
from dcnn_flame.generation import emotions
from dcnn_flame.generation.retarget import (LinearAUMap, Retargeter, bake_displacement, load_au_map,
                                            vertex_uvs)


@pytest.fixture(scope="module")
def retargeter(head):
    return Retargeter(head, n_shape=100, n_expr=50, au_map=load_au_map(head))


@pytest.fixture(scope="module")
def identity():
    return torch.from_numpy(np.random.default_rng(3).standard_normal(100).astype(np.float32))


def test_each_bank_expression_ranks_its_intended_aus_highest(retargeter, identity):
    bank = emotions.default_bank()
    eye = torch.eye(NUM_AUS)
    with torch.no_grad():
        basis_out = retargeter.retarget_bank(identity, eye)
        basis = (basis_out.vertices - basis_out.neutral[None]).reshape(NUM_AUS, -1).T.double()  # [3V, 17]
        out = retargeter.retarget_bank(identity, torch.from_numpy(bank.matrix()))
    for k, name in enumerate(bank.names):
        profile = bank.vector(name)
        disp = (out.vertices[k] - out.neutral).reshape(-1).double()
        recovered = torch.linalg.lstsq(basis, disp[:, None]).solution[:, 0].numpy()
        intended = set(np.flatnonzero(profile > 0))
        if not intended:
            assert np.abs(recovered).max() < 1e-4 and float(disp.abs().max()) < 1e-7, name
            continue
        top = set(np.argsort(-recovered)[: len(intended)])
        assert top == intended, (name, [AU_IDS[i] for i in top], [AU_IDS[i] for i in intended])
        others = np.delete(recovered, sorted(intended))
        assert recovered[sorted(intended)].min() > others.max() + 0.05, name
        # The jaw is a rotation (not linear in the AU), so the fit is not exact where the mouth
        # opens (lip AUs then absorb some of it, negatively); the intended ones match the profile.
        idx = sorted(intended)
        np.testing.assert_allclose(recovered[idx], profile[idx], atol=0.1, err_msg=name)


def test_identity_shape_is_unchanged_across_expressions(retargeter, identity, head):
    """Fit the identity back from every expression mesh on the vertices the jaw does not move:
    it must be the character's shape, for every expression."""
    bank = emotions.default_bank()
    with torch.no_grad():
        out = retargeter.retarget_bank(identity, torch.from_numpy(bank.matrix()))
        zero = retargeter.retarget_bank(torch.zeros(100), torch.from_numpy(bank.matrix()))
    jaw_joint = 2
    rigid = np.asarray(head.lbs_weights)[:, jaw_joint] == 0
    shapedirs = torch.as_tensor(np.asarray(head.shapedirs)[:, :, :100], dtype=torch.float64)[rigid].reshape(-1, 100)
    r = torch.from_numpy(rigid)
    diff = (out.vertices - zero.vertices).double()[:, r].reshape(len(bank.names), -1)  # [K, 3V']
    fit = torch.linalg.lstsq(shapedirs, diff.T).solution.T.float()  # [K, 100]
    for k, name in enumerate(bank.names):
        torch.testing.assert_close(fit[k], identity, atol=2e-3, rtol=0, msg=name)
    # And the expression offsets are the same on every identity where the jaw does not act.
    other = torch.from_numpy(np.random.default_rng(9).standard_normal(100).astype(np.float32))
    with torch.no_grad():
        out2 = retargeter.retarget_bank(other, torch.from_numpy(bank.matrix()))
    d1 = (out.vertices - out.neutral[None])[:, torch.from_numpy(rigid)]
    d2 = (out2.vertices - out2.neutral[None])[:, torch.from_numpy(rigid)]
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)


def test_intensity_scales_the_expression_linearly(retargeter, identity):
    bank = emotions.default_bank()
    with torch.no_grad():
        full = retargeter.retarget_bank(identity, torch.from_numpy(bank.vector("sad"))[None])
        half = retargeter.retarget_bank(identity, torch.from_numpy(bank.vector("sad", 0.5))[None])
    torch.testing.assert_close(half.expression, 0.5 * full.expression)


def test_performance_retarget_swaps_identity(retargeter, identity):
    """An actor's expression on the character = FLAME(character shape, actor expression, jaw)."""
    g = torch.Generator().manual_seed(0)
    expr, jaw = torch.randn(3, 50, generator=g) * 0.5, torch.randn(3, 3, generator=g) * 0.05
    with torch.no_grad():
        out = retargeter.retarget_from_performance(identity, expr, jaw)
        pose = torch.zeros(3, 15)
        pose[:, 6:9] = jaw
        ref = retargeter.flame(shape=identity[None].expand(3, -1), expression=expr, pose=pose).vertices
    torch.testing.assert_close(out.vertices, ref)
    with pytest.raises(ValueError, match="components"):
        retargeter.retarget_from_performance(identity, torch.zeros(1, 20), torch.zeros(1, 3))


def test_vertex_uvs_and_bake_displacement_against_a_loop(head):
    uv, used = vertex_uvs(head.num_vertices, head.faces, head.uv_coords, head.uv_faces)
    ref = np.zeros((head.num_vertices, 2), np.float32)
    seen = np.zeros(head.num_vertices, bool)
    for f, uf in zip(np.asarray(head.faces), np.asarray(head.uv_faces)):  # first corner wins
        for v, t in zip(f, uf):
            if not seen[v]:
                ref[v], seen[v] = head.uv_coords[t], True
    np.testing.assert_allclose(uv, ref)
    assert (used == seen).all()
    # A constant displacement d moves every used vertex by d along its unit normal.
    from dcnn_flame.render.shading import vertex_normals

    v = torch.as_tensor(np.asarray(head.v_template), dtype=torch.float32)[None]
    faces = torch.as_tensor(np.asarray(head.faces), dtype=torch.int64)
    moved = bake_displacement(v, faces, torch.from_numpy(uv), torch.from_numpy(used), torch.full((1, 1, 8, 8), 0.003))
    n = vertex_normals(v, faces)
    u = torch.from_numpy(used)
    torch.testing.assert_close(moved[0, u], v[0, u] + 0.003 * n[0, u], atol=1e-6, rtol=0)
    torch.testing.assert_close(moved[0, ~u], v[0, ~u])


def test_linear_au_map_and_missing_map_errors(head):
    a, j = np.random.default_rng(0).standard_normal((17, 50)), np.random.default_rng(1).standard_normal((17, 3))
    m = LinearAUMap(a, j)
    au = torch.rand(4, 17)
    e, jj = m(au)
    torch.testing.assert_close(e, au @ torch.from_numpy(a).float())
    with pytest.raises(ValueError, match=r"\[17, E\]"):
        LinearAUMap(a[:5], j)
    import dataclasses

    bare = dataclasses.replace(head, extras={})
    with pytest.raises(ValueError, match="au_map_path"):
        load_au_map(bare)
