"""Gradients of rasterization outputs w.r.t. vertex positions and attributes."""
from __future__ import annotations

import torch

from dcnn_flame.render.interpolate import interpolate
from dcnn_flame.render.rasterize import rasterize, rasterize_face_ids


def tiny_mesh():
    # Two triangles sharing an edge plus one overlapping triangle in front.
    verts = torch.tensor([[[-0.7, -0.6, 0.3], [0.6, -0.7, 0.1], [0.55, 0.65, 0.2],
                           [-0.76, 0.7, 0.4], [-0.3, -0.2, -0.2], [0.25, -0.1, -0.1],
                           [0.0, 0.35, -0.3]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    return verts, faces


def far_from_edges(verts, faces, size, margin=1e-3):
    """True if no pixel centre is within ``margin`` NDC of any edge (so finite
    differences of 1e-6 cannot change which face covers a pixel)."""
    H, W = size
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) * 2 / W - 1
    ys = 1 - (torch.arange(H, dtype=torch.float64) + 0.5) * 2 / H
    p = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(-1, 2)
    tri = verts[0, faces][..., :2]
    for f in range(tri.shape[0]):
        for k in range(3):
            a, b = tri[f, k], tri[f, (k + 1) % 3]
            e = b - a
            t = (((p - a) * e).sum(-1) / (e * e).sum()).clamp(0, 1)
            d = (p - a - t[:, None] * e).norm(dim=-1)
            if d.min() < margin:
                return False
    return True


def test_interpolate_gradcheck_wrt_vertices_and_attributes():
    verts, faces = tiny_mesh()
    size = (7, 9)
    assert far_from_edges(verts, faces, size)
    g = torch.Generator().manual_seed(0)
    attrs = torch.rand(1, 7, 2, generator=g, dtype=torch.float64)
    verts.requires_grad_(True)
    attrs.requires_grad_(True)

    def f(v, a):
        frag = rasterize(v, faces, size)
        return interpolate(a, frag), frag.depth

    out, _ = f(verts, attrs)
    assert out.abs().sum() > 0
    assert torch.autograd.gradcheck(f, (verts, attrs), eps=1e-6, atol=1e-6)


def test_face_varying_and_perspective_gradcheck():
    verts, faces = tiny_mesh()
    verts = verts.clone()
    verts[..., 2] += 2.0  # positive depths for perspective correction
    size = (7, 9)
    assert far_from_edges(verts, faces, size)
    g = torch.Generator().manual_seed(1)
    fv = torch.rand(1, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    verts.requires_grad_(True)

    def f(v, a):
        frag = rasterize(v, faces, size, perspective_correct=True)
        return interpolate(a, frag), frag.depth, frag.bary

    assert torch.autograd.gradcheck(f, (verts, fv), eps=1e-6, atol=1e-6)


def test_barycentric_gradient_matches_analytic_direction():
    """Moving a vertex towards a pixel raises that vertex's weight there."""
    verts, faces = tiny_mesh()
    verts = verts[:, :4].clone().requires_grad_(True)
    faces = faces[:2]
    frag = rasterize(verts, faces, 8)
    i, j = 3, 4
    f = frag.face_idx[0, i, j].item()
    k = 0  # corner 0 of that face
    frag.bary[0, i, j, k].backward()
    vid = faces[f, k]
    px = (j + 0.5) * 2 / 8 - 1
    py = 1 - (i + 0.5) * 2 / 8
    to_pixel = torch.tensor([px, py], dtype=torch.float64) - verts[0, vid, :2].detach()
    assert (verts.grad[0, vid, :2] * to_pixel).sum() > 0
    # Vertices not on the face get no gradient.
    others = [v for v in range(4) if v not in faces[f].tolist()]
    assert verts.grad[0, others].abs().sum() == 0


def test_background_gradients_are_finite_and_zero():
    verts, faces = tiny_mesh()
    verts.requires_grad_(True)
    frag = rasterize(verts * 0.1, faces, 16)  # small mesh: mostly background
    ids = rasterize_face_ids(verts.detach() * 0.1, faces, (16, 16))
    assert torch.equal(ids, frag.face_idx)
    (frag.bary.sum() + frag.depth.sum()).backward()
    assert torch.isfinite(verts.grad).all()
