"""Simple closed meshes for tests, demos and benchmarks (icosphere, UV sphere).

Faces are counter-clockwise seen from outside (outward normals), the convention the
rasterizer's ``cull_backfaces`` assumes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _orient_outward(verts: Tensor, faces: Tensor) -> Tensor:
    """Flip faces whose normal points towards the centre (meshes centred at 0)."""
    tri = verts[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    inward = (n * tri.mean(1)).sum(-1) < 0
    return torch.where(inward[:, None], faces[:, [0, 2, 1]], faces)


def icosphere(subdivisions: int = 2, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Unit icosphere.

    Args:
        subdivisions: each step splits every triangle into 4 (20 * 4**s faces,
            10 * 4**s + 2 vertices).
    Returns:
        (verts [V, 3], faces [F, 3] int64).
    """
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = torch.tensor([
        [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0],
        [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
        [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float64)
    faces = torch.tensor([
        [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
        [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
        [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
        [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=torch.int64)
    verts = verts / verts.norm(dim=1, keepdim=True)
    for _ in range(subdivisions):
        V = verts.shape[0]
        a, b, c = faces.unbind(1)
        edges = torch.stack([torch.stack([a, b], 1), torch.stack([b, c], 1), torch.stack([c, a], 1)], 1)
        lo, hi = edges.min(-1).values, edges.max(-1).values
        uniq, inv = torch.unique(lo * V + hi, return_inverse=True)
        mids = (verts[uniq // V] + verts[uniq % V]) / 2.0
        mids = mids / mids.norm(dim=1, keepdim=True)
        m = inv + V  # [F, 3] midpoint of edges ab, bc, ca
        verts = torch.cat([verts, mids])
        faces = torch.cat([
            torch.stack([a, m[:, 0], m[:, 2]], 1), torch.stack([b, m[:, 1], m[:, 0]], 1),
            torch.stack([c, m[:, 2], m[:, 1]], 1), m], 0)
    return verts.to(dtype), _orient_outward(verts, faces)


def uv_sphere(
    n_lat: int = 16, n_lon: int = 32, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unit latitude-longitude sphere with a UV layout, poles on +-y, u = 0.5 facing +z.

    ``n_lat=51, n_lon=100`` gives 5002 vertices and 10000 faces (a FLAME-sized mesh).

    Returns:
        (verts [V, 3], faces [F, 3] int64, uv_coords [Vt, 2], uv_faces [F, 3] int64);
        V = 2 + (n_lat - 1) * n_lon, F = 2 * n_lon * (n_lat - 1).
    """
    if n_lat < 2 or n_lon < 3:
        raise ValueError(f"uv_sphere needs n_lat >= 2 and n_lon >= 3, got {n_lat}, {n_lon}")
    r = torch.arange(1, n_lat, dtype=torch.float64)
    k = torch.arange(n_lon, dtype=torch.float64)
    theta = (r / n_lat * math.pi).view(-1, 1)
    phi = (k / n_lon * 2.0 * math.pi - math.pi).view(1, -1)  # phi = 0 (u = 0.5) at +z
    ring = torch.stack([
        torch.sin(theta) * torch.sin(phi), torch.cos(theta).expand(-1, n_lon),
        torch.sin(theta) * torch.cos(phi)], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                      torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)])
    north, south = 0, verts.shape[0] - 1

    def vid(ri: Tensor, ki: Tensor) -> Tensor:  # ring ri in 0..n_lat-2
        return 1 + ri * n_lon + ki % n_lon

    # UV grid: (n_lat + 1) rows x (n_lon + 1) columns, duplicated seam column.
    def tid(row: Tensor, col: Tensor) -> Tensor:
        return row * (n_lon + 1) + col

    uu, vv = torch.meshgrid(torch.arange(n_lat + 1), torch.arange(n_lon + 1), indexing="ij")
    uv_coords = torch.stack([vv / n_lon, 1.0 - uu / n_lat], -1).reshape(-1, 2).to(torch.float64)
    kk = torch.arange(n_lon)
    faces, uvf = [], []
    faces.append(torch.stack([torch.full_like(kk, north), vid(torch.zeros_like(kk), kk),
                              vid(torch.zeros_like(kk), kk + 1)], 1))
    uvf.append(torch.stack([tid(torch.zeros_like(kk), kk), tid(torch.ones_like(kk), kk),
                            tid(torch.ones_like(kk), kk + 1)], 1))
    for ri in range(n_lat - 2):
        rr = torch.full_like(kk, ri)
        a, b = vid(rr, kk), vid(rr, kk + 1)
        c, d = vid(rr + 1, kk), vid(rr + 1, kk + 1)
        ta, tb = tid(rr + 1, kk), tid(rr + 1, kk + 1)
        tc, td = tid(rr + 2, kk), tid(rr + 2, kk + 1)
        faces += [torch.stack([a, c, d], 1), torch.stack([a, d, b], 1)]
        uvf += [torch.stack([ta, tc, td], 1), torch.stack([ta, td, tb], 1)]
    last = torch.full_like(kk, n_lat - 2)
    faces.append(torch.stack([vid(last, kk), torch.full_like(kk, south), vid(last, kk + 1)], 1))
    uvf.append(torch.stack([tid(last + 1, kk), tid(last + 2, kk), tid(last + 1, kk + 1)], 1))
    faces = torch.cat(faces)
    uv_faces = torch.cat(uvf)
    oriented = _orient_outward(verts, faces)
    flipped = (oriented != faces).any(1)
    uv_faces = torch.where(flipped[:, None], uv_faces[:, [0, 2, 1]], uv_faces)
    return verts.to(dtype), oriented, uv_coords.to(dtype), uv_faces
