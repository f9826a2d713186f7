"""Rasterizer vs a naive per-pixel x per-triangle reference (loops, edge functions, z-test)."""
from __future__ import annotations

import math

import pytest
import torch

from dcnn_flame.render.primitives import icosphere
from dcnn_flame.render.rasterize import rasterize, rasterize_face_ids


def naive_rasterize(verts, faces, H, W, cull=False, perspective=False):
    """Reference in float64 Python loops. Coverage: all edge functions >= 0 (ties
    accepted); nearest depth wins, the lower face id on exact depth ties.
    Returns face ids [B, H, W], bary [B, H, W, 3], depth [B, H, W], and for each pixel
    the pixel-space distance to the nearest edge line of its face (inf in background)."""
    verts = verts.double()
    B = verts.shape[0]
    fid = torch.full((B, H, W), -1, dtype=torch.long)
    bary = torch.zeros(B, H, W, 3, dtype=torch.float64)
    depth = torch.zeros(B, H, W, dtype=torch.float64)
    for b in range(B):
        fb = faces if faces.dim() == 2 else faces[b]
        for i in range(H):
            for j in range(W):
                px, py = j + 0.5, i + 0.5
                best = math.inf
                for f in range(fb.shape[0]):
                    pts = []
                    for k in range(3):
                        x, y, z = verts[b, fb[f, k]].tolist()
                        pts.append(((x + 1) * W / 2, (1 - y) * H / 2, z))
                    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = pts
                    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
                    if area == 0 or (cull and area > 0):
                        continue
                    w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / area
                    w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / area
                    w2 = ((x0 - px) * (y1 - py) - (y0 - py) * (x1 - px)) / area
                    if min(w0, w1, w2) < 0:
                        continue
                    if perspective:
                        s = w0 / z0 + w1 / z1 + w2 / z2
                        w0, w1, w2, d = w0 / z0 / s, w1 / z1 / s, w2 / z2 / s, 1 / s
                    else:
                        d = w0 * z0 + w1 * z1 + w2 * z2
                    if d < best:
                        best = d
                        fid[b, i, j] = f
                        bary[b, i, j] = torch.tensor([w0, w1, w2])
                        depth[b, i, j] = d
    return fid, bary, depth


def edge_distance(verts, faces, b, f, i, j, H, W):
    """Pixel-space distance from pixel centre (i, j) to the nearest edge line of face f."""
    fb = faces if faces.dim() == 2 else faces[b]
    p = [((verts[b, fb[f, k], 0].item() + 1) * W / 2, (1 - verts[b, fb[f, k], 1].item()) * H / 2)
         for k in range(3)]
    px, py = j + 0.5, i + 0.5
    out = math.inf
    for k in range(3):
        (ax, ay), (bx, by) = p[k], p[(k + 1) % 3]
        length = math.hypot(bx - ax, by - ay)
        if length > 0:
            out = min(out, abs((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / length)
    return out


def depth_at(verts, faces, b, f, i, j, H, W):
    fb = faces if faces.dim() == 2 else faces[b]
    pts = [((verts[b, fb[f, k], 0].item() + 1) * W / 2, (1 - verts[b, fb[f, k], 1].item()) * H / 2,
            verts[b, fb[f, k], 2].item()) for k in range(3)]
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = pts
    px, py = j + 0.5, i + 0.5
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / area
    w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / area
    return w0 * z0 + w1 * z1 + (1 - w0 - w1) * z2


def compare(verts, faces, H, W, cull=False, perspective=False, max_diff_frac=0.02, dtype=torch.float64):
    ref_f, ref_b, ref_d = naive_rasterize(verts, faces, H, W, cull, perspective)
    frag = rasterize(verts.to(dtype), faces, (H, W), cull_backfaces=cull,
                     perspective_correct=perspective)
    diff = (frag.face_idx != ref_f).nonzero().tolist()
    assert len(diff) <= max_diff_frac * ref_f.numel(), f"{len(diff)} differing pixels"
    for b, i, j in diff:
        mine, ref = frag.face_idx[b, i, j].item(), ref_f[b, i, j].item()
        # A differing pixel must be an exact tie: on an edge of one of the two faces,
        # or where both faces are at the same depth.
        dists = [edge_distance(verts, faces, b, f, i, j, H, W) for f in (mine, ref) if f >= 0]
        on_edge = min(dists) < 1e-6 * max(H, W)
        same_depth = (mine >= 0 and ref >= 0 and not perspective and
                      abs(depth_at(verts, faces, b, mine, i, j, H, W)
                          - depth_at(verts, faces, b, ref, i, j, H, W)) < 1e-5)
        assert on_edge or same_depth, (b, i, j, mine, ref)
    agree = frag.face_idx == ref_f
    tol = 1e-5 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(frag.bary[agree].double(), ref_b[agree], atol=tol, rtol=0)
    torch.testing.assert_close(frag.depth[agree].double(), ref_d[agree], atol=tol, rtol=0)
    assert torch.equal(frag.mask, frag.face_idx >= 0)
    return frag, ref_f, len(diff)


def random_triangles(B, F, seed, z_per_vertex=True):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, F, 1, 2, generator=g) * 1.6 - 0.8
    xy = centres + (torch.rand(B, F, 3, 2, generator=g) - 0.5) * 1.6
    if z_per_vertex:
        z = torch.rand(B, F, 3, 1, generator=g) * 2.0 - 1.0
    else:
        z = (torch.rand(B, F, 1, 1, generator=g) * 2.0 - 1.0).expand(B, F, 3, 1)
    verts = torch.cat([xy, z], -1).reshape(B, F * 3, 3).double()
    faces = torch.arange(F * 3).view(F, 3)
    return verts, faces


def rotation(axis_angle):
    a = torch.tensor(axis_angle, dtype=torch.float64)
    theta = a.norm()
    k = a / theta
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def cube():
    v = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)],
                     dtype=torch.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = []
    for a, b, c, d in quads:
        f += [(a, b, c), (a, c, d)]
    faces = torch.tensor(f)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    inward = (n * tri.mean(1)).sum(-1) < 0
    return v, torch.where(inward[:, None], faces[:, [0, 2, 1]], faces)


def to_ndc(verts):
    """World -> rasterizer input with the orthographic convention depth = -z."""
    return torch.cat([verts[..., :2], -verts[..., 2:]], -1)


def test_random_overlapping_triangles_match_reference():
    verts, faces = random_triangles(B=2, F=16, seed=0)
    _, ref, ndiff = compare(verts, faces, 13, 17)
    assert (ref >= 0).float().mean() > 0.3  # the scene is not empty
    assert len(ref.unique()) > 8
    assert ndiff == 0  # random float vertices: no exact ties


def test_random_triangles_float32_match_reference():
    verts, faces = random_triangles(B=2, F=8, seed=3, z_per_vertex=False)
    compare(verts, faces, 12, 12, dtype=torch.float32, max_diff_frac=0.01)


def test_cube_with_exact_ties_matches_reference():
    v, faces = cube()
    views = [v, v @ rotation([0.3, 0.5, 0.1]).T, v @ rotation([1.0, -0.2, 0.4]).T]
    verts = to_ndc(torch.stack(views) * 1.2)
    frag, ref, ndiff = compare(verts, faces, 16, 16)
    # Front view: the diagonal of the front face passes exactly through pixel centres;
    # both rules cover those pixels (with different faces), so the coverage is equal.
    assert torch.equal(frag.mask, ref >= 0)


def test_tetrahedra_backface_culling_matches_reference():
    g = torch.Generator().manual_seed(1)
    base = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) * 0.4
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    tri = base[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    faces = torch.where(((n * tri.mean(1)).sum(-1) < 0)[:, None], faces[:, [0, 2, 1]], faces)
    meshes = []
    for _ in range(2):
        R = rotation((torch.rand(3, generator=g) * 2 - 1).tolist())
        # Two interpenetrating tetrahedra per scene, stacked as one mesh.
        t1 = base @ R.T + torch.tensor([0.15, 0.0, 0.0], dtype=torch.float64)
        t2 = base @ R.T @ rotation([0.0, 0.7, 0.0]).T - torch.tensor([0.2, 0.1, 0.1], dtype=torch.float64)
        meshes.append(torch.cat([t1, t2]))
    verts = to_ndc(torch.stack(meshes))
    faces2 = torch.cat([faces, faces + 4])
    frag_c, _, _ = compare(verts, faces2, 15, 15, cull=True)
    frag_n, _, _ = compare(verts, faces2, 15, 15, cull=False)
    # Closed meshes: culling changes nothing visible (barring interpenetration ties).
    assert (frag_c.face_idx == frag_n.face_idx).float().mean() > 0.97


def test_perspective_correct_barycentrics_hit_the_pixel_ray():
    from dcnn_flame.render.camera import PerspectiveCamera

    v, faces = icosphere(1, dtype=torch.float64)
    R = rotation([0.2, 0.6, 0.0]).unsqueeze(0)
    cam = PerspectiveCamera(focal=torch.tensor([1.8], dtype=torch.float64), R=R,
                            t=torch.tensor([[0.1, 0.0, -3.0]], dtype=torch.float64))
    ndc = cam.project(v.unsqueeze(0))
    frag, _, ndiff = compare(ndc, faces, 14, 14, perspective=True)
    H = W = 14
    # The perspective-correct interpolation of the 3D positions projects back onto
    # the pixel centre, at the interpolated depth.
    pos = (frag.bary.unsqueeze(-1) * v.unsqueeze(0)[:, frag.vert_idx.view(1, -1)].view(1, H, W, 3, 3)).sum(-2)
    back = cam.project(pos.view(1, -1, 3)).view(1, H, W, 3)
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) * 2 / W - 1
    ys = 1 - (torch.arange(H, dtype=torch.float64) + 0.5) * 2 / H
    m = frag.mask[0]
    torch.testing.assert_close(back[0, ..., 0][m], xs.expand(H, W)[m], atol=1e-9, rtol=0)
    torch.testing.assert_close(back[0, ..., 1][m], ys[:, None].expand(H, W)[m], atol=1e-9, rtol=0)
    torch.testing.assert_close(back[0, ..., 2][m], frag.depth[0][m], atol=1e-9, rtol=0)


def test_shared_edges_are_watertight():
    """A flat grid whose vertices and diagonals hit pixel centres exactly: every pixel
    centre inside the square is covered by exactly one triangle (top-left rule)."""
    n, H = 4, 16
    # Pixel centre (row i, column j) is at x = (2j + 1) / 16 - 1, y = 1 - (2i + 1) / 16:
    # vertices on columns 4, 6, .., 12 and rows 3, 5, .., 11.
    xs = torch.linspace(-0.4375, 0.5625, n + 1, dtype=torch.float64)
    ys = torch.linspace(0.5625, -0.4375, n + 1, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    verts = torch.stack([gx, gy, torch.zeros_like(gx)], -1).view(1, -1, 3)
    f = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            f += [(a, b, e), (a, e, d)] if (r + c) % 2 else [(a, b, d), (b, e, d)]
    faces = torch.tensor(f)
    counts = torch.zeros(H, H, dtype=torch.long)
    for k in range(faces.shape[0]):
        counts += rasterize_face_ids(verts, faces[k:k + 1], (H, H))[0].ge(0).long()
    # The top-left rule owns the square's left and top borders, not its right and
    # bottom ones: columns 4..11, rows 3..10.
    expected = torch.zeros(H, H, dtype=torch.long)
    expected[3:11, 4:12] = 1
    assert torch.equal(counts, expected), counts
    # And the full mesh covers the same set of pixels.
    assert torch.equal(rasterize_face_ids(verts, faces, (H, H))[0].ge(0).long(), expected)


def test_chunked_equals_unchunked_and_batch_entries_are_independent():
    verts, faces = random_triangles(B=3, F=12, seed=5)
    verts = verts.float()
    full = rasterize(verts, faces, (20, 24))
    chunked = rasterize(verts, faces, (20, 24), max_candidates=7)
    assert torch.equal(full.face_idx, chunked.face_idx)
    assert torch.equal(full.bary, chunked.bary)
    assert torch.equal(full.depth, chunked.depth)
    for b in range(3):
        single = rasterize(verts[b:b + 1], faces, (20, 24), max_candidates=50)
        assert torch.equal(single.face_idx[0], full.face_idx[b])
        assert torch.equal(single.bary[0], full.bary[b])


def test_per_mesh_faces_equal_shared_faces():
    verts, faces = random_triangles(B=2, F=6, seed=7)
    shared = rasterize(verts, faces, 10)
    per_mesh = rasterize(verts, faces.expand(2, -1, -1).clone(), 10)
    assert torch.equal(shared.face_idx, per_mesh.face_idx)
    assert torch.equal(shared.bary, per_mesh.bary)


def test_offscreen_degenerate_and_nonfinite_faces_are_ignored():
    verts = torch.tensor([[[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0],
                           [5.0, 5.0, 0.0], [6.0, 5.0, 0.0], [5.0, 6.0, 0.0],
                           [0.0, 0.0, -1.0], [0.1, 0.1, -1.0], [0.2, 0.2, -1.0],
                           [0.0, 0.0, -2.0], [float("nan"), 0.3, -2.0], [0.3, 0.0, -2.0]]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    frag = rasterize(verts, faces, 8)
    assert set(frag.face_idx.unique().tolist()) == {-1, 0}
    assert torch.isfinite(frag.bary).all() and torch.isfinite(frag.depth).all()


def test_input_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"verts_ndc must be \[B, V, 3\]"):
        rasterize(torch.zeros(4, 3), torch.zeros(1, 3, dtype=torch.long), 8)
    with pytest.raises(TypeError, match="faces must be int64"):
        rasterize(torch.zeros(1, 4, 3), torch.zeros(1, 3), 8)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_stages_match_eager():
    """torch.compile of the per-candidate stages (first call compiles: slow)."""
    verts, faces = random_triangles(B=2, F=12, seed=11)
    verts = verts.float()
    eager = rasterize(verts, faces, (18, 22))
    compiled = rasterize(verts, faces, (18, 22), compile=True)
    assert torch.equal(eager.face_idx, compiled.face_idx)
    v, f = icosphere(2)
    ndc = torch.cat([v[:, :2] * 0.7, -v[:, 2:]], -1).unsqueeze(0).repeat(3, 1, 1)
    ndc[1, :, 0] += 0.2
    a = rasterize(ndc, f, 40, max_candidates=500)
    b = rasterize(ndc, f, 40, max_candidates=500, compile=True)
    assert torch.equal(a.face_idx, b.face_idx)
