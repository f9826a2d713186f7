"""Soft silhouette vs a naive loop, saturation, and gradients."""
from __future__ import annotations

import math

import torch

from dcnn_flame.render.primitives import icosphere
from dcnn_flame.render.rasterize import rasterize
from dcnn_flame.render.soft import face_adjacency, soft_silhouette


def seg_dist(p, a, b):
    e = (b[0] - a[0], b[1] - a[1])
    l2 = e[0] ** 2 + e[1] ** 2
    t = min(1.0, max(0.0, ((p[0] - a[0]) * e[0] + (p[1] - a[1]) * e[1]) / l2))
    return math.hypot(p[0] - a[0] - t * e[0], p[1] - a[1] - t * e[1])


def naive_soft(verts, faces, H, W, sigma):
    """Loop reference: max_f sigmoid(+-d / sigma), inside: distance to the face's
    silhouette edges (1 if it has none), outside: distance to the face."""
    B = verts.shape[0]
    out = torch.zeros(B, H, W, dtype=torch.float64)
    F = faces.shape[0]
    for b in range(B):
        pts = [[((verts[b, faces[f, k], 0].item() + 1) * W / 2, (1 - verts[b, faces[f, k], 1].item()) * H / 2)
                for k in range(3)] for f in range(F)]
        area = []
        for p in pts:
            area.append((p[1][0] - p[0][0]) * (p[2][1] - p[0][1]) - (p[1][1] - p[0][1]) * (p[2][0] - p[0][0]))
        sil = []
        for f in range(F):
            s = []
            for i in range(3):
                a, c = faces[f, (i + 1) % 3].item(), faces[f, (i + 2) % 3].item()
                nbs = [g for g in range(F) if g != f and a in faces[g].tolist() and c in faces[g].tolist()]
                s.append(not nbs or any(math.copysign(1, area[g]) != math.copysign(1, area[f]) for g in nbs))
            sil.append(s)
        for i in range(H):
            for j in range(W):
                p = (j + 0.5, i + 0.5)
                best = 0.0
                for f in range(F):
                    q = pts[f]
                    sign = math.copysign(1, area[f])
                    inside = all(
                        sign * ((q[(k + 2) % 3][0] - q[(k + 1) % 3][0]) * (p[1] - q[(k + 1) % 3][1])
                                - (q[(k + 2) % 3][1] - q[(k + 1) % 3][1]) * (p[0] - q[(k + 1) % 3][0])) >= 0
                        for k in range(3))
                    d = [seg_dist(p, q[(k + 1) % 3], q[(k + 2) % 3]) for k in range(3)]
                    if inside:
                        ds = [d[k] for k in range(3) if sil[f][k]]
                        best = max(best, 1.0 / (1.0 + math.exp(-min(ds) / sigma)) if ds else 1.0)
                    else:
                        best = max(best, 1.0 / (1.0 + math.exp(min(d) / sigma)))
                out[b, i, j] = best
    return out


def test_face_adjacency_on_closed_mesh():
    v, f = icosphere(1)
    nb = face_adjacency(f)
    assert (nb >= 0).all()
    for face in range(f.shape[0]):
        for i in range(3):
            a, c = f[face, (i + 1) % 3].item(), f[face, (i + 2) % 3].item()
            other = nb[face, i].item()
            assert other != face and a in f[other].tolist() and c in f[other].tolist()
    single = face_adjacency(torch.tensor([[0, 1, 2]]))
    assert (single == -1).all()


def test_matches_naive_loop_on_small_meshes():
    # An open quad (two front faces sharing an edge) plus a back-facing triangle.
    verts = torch.tensor([[[-0.6, -0.5, 0.0], [0.5, -0.6, 0.0], [0.6, 0.4, 0.0], [-0.5, 0.5, 0.0],
                           [0.1, 0.2, -0.5], [0.7, 0.8, -0.5], [0.2, 0.9, -0.5]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 6, 5]])
    verts = torch.cat([verts, verts * 0.7 + 0.1])
    for sigma in (0.4, 1.0):
        ours = soft_silhouette(verts, faces, (12, 14), sigma)
        ref = naive_soft(verts, faces, 12, 14, sigma)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # band cut: sigmoid(-10)


def test_interior_of_closed_mesh_is_one_and_far_outside_zero():
    v, f = icosphere(2)
    verts = torch.cat([v[:, :2] * 0.6, -v[:, 2:]], -1).unsqueeze(0)
    H = 32
    soft = soft_silhouette(verts, f, H, sigma=0.5)
    hard = rasterize(verts, f, H).mask
    # Pixel-centre distance to the circle of radius 0.6 NDC (= 9.6 px).
    c = (torch.arange(H) + 0.5 - H / 2)
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    inner = r < 9.6 - 3
    outer = r > 9.6 + 6
    assert hard[0][inner].all()
    assert (soft[0][inner] == 1).all()  # shared interior edges do not darken
    assert (soft[0][outer] < 1e-4).all()
    # Monotone decay across the rim, about 0.5 on the (polygonal) silhouette.
    row = soft[0, H // 2, : H // 2]
    assert (row[1:] >= row[:-1]).all()
    assert ((soft[0] - 0.5).abs() < 0.25)[(r - 9.5).abs() < 0.5].float().mean() > 0.5
    torch.testing.assert_close(soft[0], soft[0].flip(1), atol=1e-5, rtol=0)


def test_chunked_equals_unchunked():
    v, f = icosphere(1)
    verts = torch.cat([v[:, :2] * 0.5, -v[:, 2:]], -1).unsqueeze(0).repeat(2, 1, 1)
    verts[1, :, 0] += 0.2
    a = soft_silhouette(verts, f, 20, 0.7)
    b = soft_silhouette(verts, f, 20, 0.7, max_candidates=37)
    assert torch.equal(a, b)


def test_gradcheck_wrt_vertices():
    verts = torch.tensor([[[-0.55, -0.45, 0.0], [0.5, -0.52, 0.0], [0.05, 0.6, 0.0]]],
                         dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    out = soft_silhouette(verts, faces, 10, 0.8)
    assert 0 < out.sum() < 100
    assert torch.autograd.gradcheck(lambda v: soft_silhouette(v, faces, 10, 0.8), (verts,),
                                    eps=1e-6, atol=1e-5)


def test_growing_the_mesh_increases_coverage():
    v, f = icosphere(1)
    base = torch.cat([v[:, :2] * 0.5, -v[:, 2:]], -1).unsqueeze(0)
    scale = torch.tensor(1.0, requires_grad=True)
    soft = soft_silhouette(base * torch.stack([scale, scale, torch.tensor(1.0)]), f, 24, 0.5)
    soft.sum().backward()
    assert scale.grad > 0
