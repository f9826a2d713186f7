"""SH lighting, normals, texture sampling and displacement detail normals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from dcnn_flame.render.primitives import icosphere
from dcnn_flame.render.shading import (
    SH_CONSTANTS, SH_LM, detail_normal_map, face_normals, sample_texture, sh_basis, sh_shading,
    uv_fragments, vertex_normals)


def real_sh(l, m, normals):
    """Orthonormal real SH from scipy's complex Y_l^m (Condon-Shortley phase removed
    by the (-1)^m factor), at unit directions [N, 3]."""
    x, y, z = normals.T
    polar = np.arccos(np.clip(z, -1, 1))
    azim = np.arctan2(y, x)
    Y = special.sph_harm_y(l, abs(m), polar, azim)
    if m > 0:
        return math.sqrt(2) * (-1) ** m * Y.real
    if m < 0:
        return math.sqrt(2) * (-1) ** m * Y.imag
    return Y.real


def test_sh_basis_matches_real_spherical_harmonics():
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = sh_basis(n).numpy()
    lambert = {0: 1.0, 1: 2 * math.pi / 3, 2: math.pi / 4}  # DECA: band 0 unscaled
    for k, (l, m) in enumerate(SH_LM):
        expected = lambert[l] * real_sh(l, m, n.numpy())
        np.testing.assert_allclose(basis[:, k], expected, atol=1e-12, err_msg=f"k={k} (l={l}, m={m})")


def test_sh_constants_are_the_deca_values():
    # The numbers DECA-style models were trained with (Lambertian factors times y_lm).
    pi = math.pi
    expected = [1 / math.sqrt(4 * pi)] + [(2 * pi / 3) * math.sqrt(3 / (4 * pi))] * 3 + \
        [(pi / 4) * 3 * math.sqrt(5 / (12 * pi))] * 3 + \
        [(pi / 4) * 1.5 * math.sqrt(5 / (12 * pi)), (pi / 4) * 0.5 * math.sqrt(5 / (4 * pi))]
    np.testing.assert_allclose(SH_CONSTANTS, expected, rtol=1e-12)


def test_dc_only_lighting_is_constant():
    g = torch.Generator().manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=g), dim=1)
    sh = torch.zeros(2, 9, 3)
    sh[:, 0] = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    shading = sh_shading(n, sh)
    expected = sh[:, 0, :, None, None] * SH_CONSTANTS[0]
    torch.testing.assert_close(shading, expected.expand_as(shading))
    # [B, 27] is the same coefficients flattened band-major.
    torch.testing.assert_close(sh_shading(n, sh.reshape(2, 27)), shading)
    with pytest.raises(ValueError, match="9 bands x RGB"):
        sh_shading(n, torch.zeros(2, 9))


def test_sh_shading_is_linear_in_coefficients():
    g = torch.Generator().manual_seed(2)
    n = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64), dim=1)
    sh = torch.randn(1, 9, 3, generator=g, dtype=torch.float64)
    out = sh_shading(n, sh)
    basis = sh_basis(n.permute(0, 2, 3, 1))
    naive = torch.zeros_like(out)
    for c in range(3):
        for k in range(9):
            naive[:, c] += sh[:, k, c] * basis[..., k]
    torch.testing.assert_close(out, naive)


def test_vertex_normals_match_naive_loop():
    v, f = icosphere(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    verts = (v + 0.1 * torch.randn(2, *v.shape, generator=g, dtype=torch.float64))
    out = vertex_normals(verts, f)
    for b in range(2):
        acc = torch.zeros_like(v)
        for a, bb, c in f.tolist():
            n = torch.linalg.cross(verts[b, bb] - verts[b, a], verts[b, c] - verts[b, a])
            for idx in (a, bb, c):
                acc[idx] += n
        torch.testing.assert_close(out[b], acc / acc.norm(dim=1, keepdim=True))
    # Outward on a sphere, and per-mesh faces agree with shared faces.
    assert ((out * verts).sum(-1) > 0).all()
    torch.testing.assert_close(vertex_normals(verts, f.expand(2, -1, -1)), out)
    fn = face_normals(verts, f)
    torch.testing.assert_close(fn.norm(dim=-1), torch.ones(2, f.shape[0], dtype=torch.float64))


def test_sample_texture_uv_convention():
    # 2x2 texture: row 0 is the top of the image (v = 1).
    tex = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    uv = torch.tensor([[[[0.25, 0.75], [0.75, 0.75]], [[0.25, 0.25], [0.75, 0.25]]]])
    out = sample_texture(tex, uv)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # (0, 0) is the bottom-left corner: it clamps to the bottom-left texel.
    corner = sample_texture(tex, torch.zeros(1, 1, 1, 2))
    assert corner.item() == 3.0
    # A shared [1, C, Ht, Wt] map broadcasts over the batch.
    assert sample_texture(tex, uv.expand(3, -1, -1, -1)).shape == (3, 1, 2, 2)


def plane(n=16):
    lin = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    gv, gu = torch.meshgrid(lin, lin, indexing="ij")
    uv = torch.stack([gu, gv], -1).view(-1, 2)
    verts = torch.cat([uv * 2.0, torch.zeros(uv.shape[0], 1, dtype=torch.float64)], -1)  # x = 2u, y = 2v
    f = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            f += [(a, b, e), (a, e, d)]
    return verts.unsqueeze(0), torch.tensor(f), uv


def test_detail_normals_flat_displacement_and_sinusoid():
    verts, faces, uv = plane()
    T = 64
    frag = uv_fragments(uv, faces, T)
    assert frag.mask.all()
    zero = torch.zeros(1, 1, T, T, dtype=torch.float64)
    n_det, n_smooth, valid = detail_normal_map(verts, faces, frag, zero)
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(n_det, ez.expand_as(n_det))
    torch.testing.assert_close(n_smooth, ez.expand_as(n_smooth))

    # Height field z = a sin(k x) along the normal (+z); analytic normal
    # (-dz/dx, 0, 1) normalised. Texel centres: u = (c + 0.5) / T, x = 2u.
    a, k = 0.05, 3.0
    x = (torch.arange(T, dtype=torch.float64) + 0.5) / T * 2.0
    disp = (a * torch.sin(k * x)).view(1, 1, 1, T).expand(1, 1, T, T)
    n_det, _, _ = detail_normal_map(verts, faces, frag, disp)
    slope = a * k * torch.cos(k * x)
    expected = torch.stack([-slope, torch.zeros_like(slope), torch.ones_like(slope)], 0)
    expected = (expected / expected.norm(dim=0, keepdim=True)).view(1, 3, 1, T).expand(1, 3, T, T)
    inner = slice(1, T - 1)  # central differences: error O(h^2)
    torch.testing.assert_close(n_det[..., inner, inner], expected[..., inner, inner], atol=2e-3, rtol=0)
    # Edge texels use one-sided differences: still close.
    torch.testing.assert_close(n_det, expected, atol=2e-2, rtol=0)


def test_detail_normals_mirrored_uv_keep_orientation():
    verts, faces, uv = plane(8)
    mirrored = uv.clone()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    frag = uv_fragments(mirrored, faces, 32)
    n_det, _, valid = detail_normal_map(verts, faces, frag, torch.zeros(1, 1, 32, 32, dtype=torch.float64))
    assert valid.all()
    assert (n_det[:, 2] > 0.999).all()
