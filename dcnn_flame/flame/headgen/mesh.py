"""Triangulate the procedural head: skin, eyeballs, lid rims and a mouth cavity.

The skin is meshed in a 2-D chart: the (t, az) parameter domain of
:mod:`~dcnn_flame.flame.headgen.surface` mapped conformally (for the base head's
average metric) onto a disk, ``(X, Y) = rho(t) (sin az, -cos az)``. Points come
from a graded quadtree of square lattices (fine on the face, coarse on the back
and neck), plus explicit polylines for the lid margins, the mouth slit, the UV
seam at the back of the head and the neck cut. Every polyline edge is kept free of
other points within its diametral circle, so it is an edge of the (unconstrained)
Delaunay triangulation. Triangles inside the eye openings are dropped and the
vertices along the mouth slit are duplicated, so the lips can part.

Closed eyeballs (a UV sphere whose pole looks forward), a short rim tucking each
lid margin in behind the lid, and a mouth cavity hanging off the lips complete
the mesh. Everything is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import Delaunay, cKDTree

from dcnn_flame.flame.headgen.layout import Layout, smoothstep
from dcnn_flame.flame.headgen.surface import SkinField, base_normals, base_surface

#: Vertex part labels.
SKIN, EYE_L, EYE_R, CAVITY, RIM_L, RIM_R = 0, 1, 2, 3, 4, 5

#: Target edge lengths (metres) per resolution: back of head, face, fine features.
RESOLUTIONS = {
    "low": (0.0220, 0.0090, 0.0060),
    "default": (0.0165, 0.0057, 0.0036),
    "high": (0.0085, 0.0034, 0.0022),
}


@dataclass
class HeadMesh:
    """The triangulated head and the bookkeeping later stages need."""

    vertices: np.ndarray
    """[V, 3] rest positions (metres)."""
    faces: np.ndarray
    """[F, 3] int64, counter-clockwise seen from outside."""
    part: np.ndarray
    """[V] int8 part label (SKIN, EYE_L, EYE_R, CAVITY, RIM_L, RIM_R)."""
    base: np.ndarray
    """[V, 3] base-surface point of skin vertices (their position before relief);
    other parts copy their attached skin point or their own position."""
    param: np.ndarray
    """[V, 2] (t, az) of skin vertices, NaN elsewhere."""
    uv_coords: np.ndarray
    uv_faces: np.ndarray
    lid_upper: dict[int, np.ndarray]
    """side (+1 left, -1 right) -> upper lid margin vertex ids, inner -> outer corner."""
    lid_lower: dict[int, np.ndarray]
    """side -> lower lid margin vertex ids, inner -> outer corner (corners shared)."""
    slit_upper: np.ndarray
    """Mouth slit vertex ids on the upper lip, right corner -> left corner
    (the two corners are shared with ``slit_lower``)."""
    slit_lower: np.ndarray
    """Mouth slit vertex ids on the lower lip, right corner -> left corner."""
    neck_ring: np.ndarray
    """Vertex ids on the open neck cut."""
    eye_vertices: dict[int, np.ndarray]
    """side -> eyeball vertex ids."""
    eye_equator: dict[int, np.ndarray]
    """side -> ids of the eyeball ring at 90 degrees from the pupil (its mean is the
    eyeball centre)."""
    eye_polar: dict[int, np.ndarray]
    """side -> [n] angle of each eyeball vertex from the pupil axis (radians)."""
    attach: np.ndarray
    """[V] id of the skin vertex a rim/cavity vertex hangs off (itself for skin,
    -1 for eyeballs)."""
    depth: np.ndarray
    """[V] how far (rings) a rim/cavity vertex is from the skin, 0 on skin."""
    cavity_lower: np.ndarray
    """[V] 0..1 how much a cavity vertex belongs to the lower jaw (0 elsewhere)."""
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- chart


class Chart:
    """Conformal disk chart of the skin's (t, az) domain."""

    def __init__(self, layout: Layout, n_t: int = 2001, n_az: int = 256) -> None:
        t = np.linspace(1e-4, 1.0, n_t)
        az = np.linspace(-np.pi, np.pi, n_az, endpoint=False)
        tt, aa = np.meshgrid(t, az, indexing="ij")
        p = base_surface(tt, aa, layout)
        d_t = np.linalg.norm(np.gradient(p, t, axis=0), axis=-1).mean(1)
        d_a = np.linalg.norm(np.gradient(p, az, axis=1), axis=-1).mean(1)
        # Conformal radius: d(log rho)/dt = |dP/dt| / |dP/daz|; the 1/t part is
        # integrated exactly so the pole stays regular (rho ~ t there).
        g = d_t / d_a - 1.0 / t
        rho = t * np.exp(np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(t))]))
        self.t = np.concatenate([[0.0], t])
        self.rho = np.concatenate([[0.0], rho])
        self.rho_max = float(rho[-1])

    def to_chart(self, t: np.ndarray, az: np.ndarray) -> np.ndarray:
        r = np.interp(t, self.t, self.rho)
        return np.stack([r * np.sin(az), -r * np.cos(az)], axis=-1)

    def from_chart(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.hypot(xy[..., 0], xy[..., 1])
        t = np.interp(r, self.rho, self.t)
        az = np.arctan2(xy[..., 0], -xy[..., 1])
        return t, az


def _skin_points(t: np.ndarray, az: np.ndarray, skin: SkinField):
    base = base_surface(t, az, skin.layout)
    normal = base_normals(t, az, skin.layout)
    return skin(base, normal), base


def _spacing_3d(p: np.ndarray, res: tuple[float, float, float], skin: SkinField) -> np.ndarray:
    """Target edge length at skin points ``p`` [N, 3]."""
    lay = skin.layout
    h_back, h_face, h_fine = res
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    face = (smoothstep(-0.005, 0.035, z) * smoothstep(0.085, 0.065, np.abs(x))
            * smoothstep(-0.125, -0.105, y) * smoothstep(0.095, 0.075, y))
    ears = smoothstep(0.05, 0.03, np.hypot(y - lay.ear_y, z - lay.ear_z)) * smoothstep(0.05, 0.07, np.abs(x))
    face = np.maximum(face, 0.6 * ears)
    h = h_back + (h_face - h_back) * face
    fine = np.zeros_like(h)
    ex, ey = lay.eye_x, lay.eye_y
    fine = np.maximum(fine, smoothstep(0.030, 0.018, np.hypot((np.abs(x) - ex) * 0.9, (y - ey) * 1.3)))
    fine = np.maximum(fine, smoothstep(0.032, 0.022, np.hypot(x * 0.9, (y - lay.mouth_y) * 1.7)))
    nose_y = np.clip(y, lay.nose_base_y - 0.004, lay.nose_root_y - 0.01)
    fine = np.maximum(fine, smoothstep(0.022, 0.013, np.hypot(x, (y - nose_y))))
    fine = fine * smoothstep(0.0, 0.04, z)
    return h + (h_fine - h) * fine


def _chart_scale(chart: Chart, t: np.ndarray, az: np.ndarray, skin: SkinField) -> np.ndarray:
    """Chart units per metre of skin at (t, az) (geometric mean of both directions)."""
    eps_t, eps_a = 2e-4, 2e-4
    tc = np.clip(t, eps_t, 1.0 - eps_t)
    p_t1, _ = _skin_points(tc + eps_t, az, skin)
    p_t0, _ = _skin_points(tc - eps_t, az, skin)
    p_a1, _ = _skin_points(tc, az + eps_a, skin)
    p_a0, _ = _skin_points(tc, az - eps_a, skin)
    ds_t = np.linalg.norm(p_t1 - p_t0, axis=-1) + 1e-12
    ds_a = np.linalg.norm(p_a1 - p_a0, axis=-1) + 1e-12
    r1 = np.interp(tc + eps_t, chart.t, chart.rho)
    r0 = np.interp(tc - eps_t, chart.t, chart.rho)
    rc = np.interp(tc, chart.t, chart.rho)
    j_t = (r1 - r0) / ds_t
    j_a = rc * 2 * eps_a / ds_a
    return np.sqrt(j_t * j_a)


def _required_chart_spacing(chart: Chart, xy: np.ndarray, res, skin: SkinField) -> np.ndarray:
    t, az = chart.from_chart(xy)
    p, _ = _skin_points(t, az, skin)
    return _spacing_3d(p, res, skin) * _chart_scale(chart, t, az, skin)


def _graded_lattice(chart: Chart, res, skin: SkinField, rng: np.random.Generator) -> np.ndarray:
    """Quadtree of square lattices: a cell splits while it is coarser than the
    required chart spacing at its centre. Returns [N, 2] chart points."""
    a0 = 0.5
    n0 = int(np.ceil(chart.rho_max / a0)) + 1
    ci, cj = np.meshgrid(np.arange(-n0, n0), np.arange(-n0, n0), indexing="ij")
    cells = np.stack([ci.ravel(), cj.ravel()], axis=1)
    centres = (cells + 0.5) * a0
    cells = cells[np.hypot(centres[:, 0], centres[:, 1]) < chart.rho_max + a0]
    max_level = 14
    points = []
    levels = []
    level = 0
    while len(cells):
        a = a0 / 2.0**level
        centres = (cells + 0.5) * a
        need = _required_chart_spacing(chart, centres, res, skin)
        split = (need < a * 0.92) & (level < max_level)
        leaf = cells[~split]
        # Corners of leaves at this level, in integer units of the finest level.
        scale = 2 ** (max_level - level)
        for di in (0, 1):
            for dj in (0, 1):
                points.append((leaf + np.array([di, dj])) * scale)
                levels.append(np.full(len(leaf), level))
        kids = cells[split]
        cells = np.concatenate([kids * 2 + np.array(o) for o in ((0, 0), (0, 1), (1, 0), (1, 1))])
        level += 1
    pts = np.concatenate(points)
    lev = np.concatenate(levels)
    # A corner shared by cells of several levels keeps the finest level's spacing.
    order = np.lexsort((-lev, pts[:, 1], pts[:, 0]))
    pts, lev = pts[order], lev[order]
    first = np.ones(len(pts), dtype=bool)
    first[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts, lev = pts[first], lev[first]
    unit = a0 / 2.0**max_level
    xy = pts * unit
    spacing = a0 / 2.0**lev
    # A little jitter avoids co-circular quadruples (ambiguous Delaunay diagonals).
    xy = xy + rng.uniform(-0.06, 0.06, size=xy.shape) * spacing[:, None]
    return xy


# ------------------------------------------------------------------- feature curves


def frontal_to_param(xy: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(t, az) of the front base-surface points with frontal coordinates ``xy`` [N, 2]."""
    t_grid = np.linspace(0.15, 0.9, 300)
    a_grid = np.linspace(-1.4, 1.4, 300)
    tt, aa = np.meshgrid(t_grid, a_grid, indexing="ij")
    p = base_surface(tt, aa, layout)
    tree = cKDTree(p[..., :2].reshape(-1, 2))
    _, idx = tree.query(xy)
    t = tt.ravel()[idx].copy()
    az = aa.ravel()[idx].copy()
    eps = 1e-6
    for _ in range(12):
        f = base_surface(t, az, layout)[:, :2] - xy
        ft = (base_surface(t + eps, az, layout)[:, :2] - base_surface(t - eps, az, layout)[:, :2]) / (2 * eps)
        fa = (base_surface(t, az + eps, layout)[:, :2] - base_surface(t, az - eps, layout)[:, :2]) / (2 * eps)
        det = ft[:, 0] * fa[:, 1] - ft[:, 1] * fa[:, 0]
        dt = (f[:, 0] * fa[:, 1] - f[:, 1] * fa[:, 0]) / det
        da = (ft[:, 0] * f[:, 1] - ft[:, 1] * f[:, 0]) / det
        t -= dt
        az -= da
    err = np.abs(base_surface(t, az, layout)[:, :2] - xy).max()
    if err > 1e-7:
        raise RuntimeError(f"procedural head: feature point inversion failed (error {err:.2e} m)")
    return t, az


def _resample_polyline(p: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along polyline ``p`` [M, D]."""
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    q = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(q, s, p[:, k]) for k in range(p.shape[1])], axis=1)


def _densify(p: np.ndarray, closed: bool, per_edge: int = 8) -> np.ndarray:
    q = np.concatenate([p, p[:1]]) if closed else p
    w = np.linspace(0.0, 1.0, per_edge, endpoint=False)
    out = (q[:-1, None, :] * (1 - w)[None, :, None] + q[1:, None, :] * w[None, :, None]).reshape(-1, p.shape[1])
    return np.concatenate([out, q[-1:]])


def _points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule; ``pts`` [N, 2], ``poly`` [M, 2] closed implicitly."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-300) + x0)
    return np.count_nonzero(crosses, axis=1) % 2 == 1


# ----------------------------------------------------------------------------- builder


def _counts(res_name: str) -> dict[str, int]:
    h_fine = RESOLUTIONS[res_name][2]
    return {
        "lid": max(7, int(round(0.031 / h_fine)) + 1),
        "slit": max(9, int(round(0.050 / h_fine)) + 1),
        "eye_seg": 12 if res_name == "low" else (18 if res_name == "default" else 24),
    }


def build_head_mesh(layout: Layout, resolution: str = "default") -> HeadMesh:
    """Triangulate the head for ``layout`` at ``resolution`` ('low', 'default', 'high')."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r} is not one of {sorted(RESOLUTIONS)}")
    res = RESOLUTIONS[resolution]
    counts = _counts(resolution)
    rng = np.random.default_rng(20240601)
    skin = SkinField(layout)
    chart = Chart(layout)

    # Feature polylines in frontal (x, y), then in the chart.
    lids = {}
    for side in (+1, -1):
        up, lo = layout.eye_opening(side, 200)
        up = _resample_polyline(up, counts["lid"])
        lo = _resample_polyline(lo, counts["lid"])
        lids[side] = (up, lo)
    slit = _resample_polyline(layout.mouth_slit(400), counts["slit"])

    feature_xy = [lids[+1][0], lids[+1][1][1:-1], lids[-1][0], lids[-1][1][1:-1], slit]
    ft, fa = frontal_to_param(np.concatenate(feature_xy), layout)
    fchart = chart.to_chart(ft, fa)
    n_lid = counts["lid"]
    n_slit = counts["slit"]
    sizes = [n_lid, n_lid - 2, n_lid, n_lid - 2, n_slit]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    loops = {}
    for k, side in enumerate((+1, -1)):
        u = np.arange(offs[2 * k], offs[2 * k + 1])
        lo = np.arange(offs[2 * k + 1], offs[2 * k + 2])
        # Loop order: upper inner->outer, then lower outer->inner (corners shared).
        loops[side] = (u, lo)
    slit_ids = np.arange(offs[4], offs[5])

    # Seam (back of the head, az = pi) from the pole to the neck cut, and the cut ring.
    lattice = _graded_lattice(chart, res, skin, rng)
    r_seam = [0.0]
    while True:
        xy = np.array([[0.0, r_seam[-1]]])
        step = float(_required_chart_spacing(chart, xy + np.array([[0.0, 1e-4]]), res, skin)[0])
        nxt = r_seam[-1] + step
        if nxt > chart.rho_max - 0.5 * step:
            break
        r_seam.append(nxt)
    r_seam = np.array(r_seam)
    # Stretch so the last step lands on the cut.
    r_seam = r_seam * (chart.rho_max / (r_seam[-1] + (r_seam[-1] - r_seam[-2])))
    seam = np.stack([np.zeros_like(r_seam), r_seam], axis=1)
    ring_step = float(_required_chart_spacing(chart, np.array([[0.0, -chart.rho_max * 0.999]]), res, skin)[0])
    n_ring = max(12, int(np.ceil(2 * np.pi * chart.rho_max / ring_step)))
    ang = np.pi + 2 * np.pi * np.arange(n_ring) / n_ring  # starts on the seam (az = pi)
    ring = np.stack([chart.rho_max * np.sin(ang), -chart.rho_max * np.cos(ang)], axis=1)

    # Keep lattice points clear of every polyline edge's diametral circle.
    keep = np.hypot(lattice[:, 0], lattice[:, 1]) < chart.rho_max - 0.75 * ring_step
    curves = [
        (fchart[np.concatenate([loops[s][0], loops[s][1][::-1]])], True) for s in (+1, -1)
    ] + [(fchart[slit_ids], False), (np.concatenate([seam, ring[:1]]), False)]
    for pts, closed in curves:
        dense = _densify(pts, closed)
        q = np.concatenate([pts, pts[:1]]) if closed else pts
        step = np.linalg.norm(np.diff(q, axis=0), axis=1)
        # Local step for each dense sample.
        local = np.repeat(step, 8)
        local = np.concatenate([local, step[-1:]])[: len(dense)]
        d, idx = cKDTree(dense).query(lattice)
        keep &= d > 0.72 * local[idx]
    # Drop lattice points inside the eye openings.
    for s in (+1, -1):
        poly = fchart[np.concatenate([loops[s][0], loops[s][1][::-1]])]
        keep &= ~_points_in_polygon(lattice, poly)
    lattice = lattice[keep]

    chart_pts = np.concatenate([fchart, seam, ring, lattice])
    n_feat = len(fchart)
    seam_ids = n_feat + np.arange(len(seam))
    ring_ids = n_feat + len(seam) + np.arange(len(ring))
    tri = Delaunay(chart_pts).simplices.astype(np.int64)
    a, b, c = (chart_pts[tri[:, k]] for k in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    tri[area < 0] = tri[area < 0][:, [0, 2, 1]]
    # Remove the eye openings.
    cen = chart_pts[tri].mean(1)
    drop = np.zeros(len(tri), dtype=bool)
    for s in (+1, -1):
        poly = fchart[np.concatenate([loops[s][0], loops[s][1][::-1]])]
        drop |= _points_in_polygon(cen, poly)
    tri = tri[~drop]

    t_all, az_all = chart.from_chart(chart_pts)
    t_all[seam_ids] = np.clip(t_all[seam_ids], 0.0, 1.0)
    az_all[seam_ids] = np.pi
    az_all[0] = az_all[0]
    t_all[:n_feat], az_all[:n_feat] = ft, fa
    t_all[ring_ids] = 1.0
    az_all[ring_ids] = ang - 2 * np.pi * (ang > np.pi)
    az_all[seam_ids[0]] = np.pi
    t_all[seam_ids[0]] = 0.0

    # Check every polyline edge survived as a mesh edge.
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    edge_set = set(map(tuple, edges.tolist()))
    for s in (+1, -1):
        loop = np.concatenate([loops[s][0], loops[s][1][::-1]])
        _require_edges(edge_set, loop, True, f"lid margin {s:+d}")
    _require_edges(edge_set, slit_ids, False, "mouth slit")
    _require_edges(edge_set, seam_ids, False, "uv seam")

    # Split the mouth slit: interior slit vertices get a lower-lip copy.
    positions, base = _skin_points(t_all, az_all, skin)
    interior = slit_ids[1:-1]
    n_pts = len(chart_pts)
    lower_copy = n_pts + np.arange(len(interior))
    remap = np.full(n_pts, -1, dtype=np.int64)
    remap[interior] = lower_copy
    slit_xy = positions[slit_ids][:, :2]
    touches = np.isin(tri, interior)
    rows = np.nonzero(touches.any(1))[0]
    cen3 = positions[tri[rows]].mean(1)
    slit_y_at = np.interp(cen3[:, 0], slit_xy[:, 0], slit_xy[:, 1])
    below = cen3[:, 1] < slit_y_at
    sub = tri[rows[below]]
    m = np.isin(sub, interior)
    sub[m] = remap[sub[m]]
    tri[rows[below]] = sub
    positions = np.concatenate([positions, positions[interior]])
    base = np.concatenate([base, base[interior]])
    t_all = np.concatenate([t_all, t_all[interior]])
    az_all = np.concatenate([az_all, az_all[interior]])
    slit_upper = slit_ids.copy()
    slit_lower = np.concatenate([slit_ids[:1], lower_copy, slit_ids[-1:]])

    # Drop unused chart points (none expected) and orient outwards.
    used = np.zeros(len(positions), dtype=bool)
    used[tri.ravel()] = True
    if not used.all():
        raise RuntimeError(f"procedural head: {np.count_nonzero(~used)} unused skin vertices")
    tri = _orient_outwards(positions, tri)
    chart_all = np.concatenate([chart_pts, chart_pts[interior]])
    seam_ids = np.concatenate([seam_ids, ring_ids[:1]])  # the cut ring starts on the seam
    tri = _flip_to_3d_delaunay(positions, tri, chart_all, fixed=seam_ids)

    n_skin = len(positions)
    builder = _PartBuilder(positions, tri, base, n_skin)
    lid_upper, lid_lower = {}, {}
    for side in (+1, -1):
        up_ids, lo_ids = loops[side]
        lid_upper[side] = up_ids
        lid_lower[side] = np.concatenate([up_ids[:1], lo_ids, up_ids[-1:]])
        loop = np.concatenate([up_ids, lo_ids[::-1]])
        builder.add_lid_rim(loop, layout, side)
    cav_loop = np.concatenate([slit_upper, slit_lower[1:-1][::-1]])
    builder.add_mouth_cavity(cav_loop, slit_upper, slit_lower, layout)
    eye_vertices, eye_equator, eye_polar = {}, {}, {}
    for side in (+1, -1):
        ids, equator, polar = builder.add_eyeball(layout, side, counts["eye_seg"])
        eye_vertices[side], eye_equator[side], eye_polar[side] = ids, equator, polar

    verts = np.concatenate(builder.verts)
    faces = np.concatenate(builder.faces)
    part = np.concatenate(builder.part)
    param = np.full((len(verts), 2), np.nan)
    param[:n_skin, 0] = t_all
    param[:n_skin, 1] = az_all
    uv, uv_faces = _uv_layout(verts, faces, part, param, seam_ids, builder, eye_polar, eye_vertices)
    return HeadMesh(
        vertices=verts, faces=faces, part=part, base=np.concatenate(builder.base), param=param,
        uv_coords=uv, uv_faces=uv_faces, lid_upper=lid_upper, lid_lower=lid_lower,
        slit_upper=slit_upper, slit_lower=slit_lower, neck_ring=ring_ids,
        eye_vertices=eye_vertices, eye_equator=eye_equator, eye_polar=eye_polar,
        attach=np.concatenate(builder.attach), depth=np.concatenate(builder.depth),
        cavity_lower=np.concatenate(builder.cav_lower),
        meta={"seam": seam_ids, "n_skin": n_skin, "rim_rings": builder.rim_rings,
              "cavity_rings": builder.cavity_rings},
    )


def _area2(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    a, b, c = p[f[..., 0]], p[f[..., 1]], p[f[..., 2]]
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _flip_to_3d_delaunay(v: np.ndarray, f: np.ndarray, chart: np.ndarray, fixed: np.ndarray,
                         max_iter: int = 30) -> np.ndarray:
    """Edge flips until no interior edge has opposite angles (in 3-D) summing past pi.

    The chart's Delaunay triangulation is only Delaunay for the base head's metric;
    on steep relief (nose sides) this restores well-shaped triangles. A flip must
    keep both triangles' orientation in the ``chart`` [V, 2] (no folds). Edges between
    two ``fixed`` vertices (the UV seam) are kept; boundary edges never flip.
    """
    f = f.copy()
    orient = np.sign(np.sum(np.sign(_area2(chart, f))))
    n_v = len(v)
    fixed_mask = np.zeros(n_v, dtype=bool)
    fixed_mask[fixed] = True
    for _ in range(max_iter):
        u = f.reshape(-1)
        w = np.roll(f, -1, axis=1).reshape(-1)
        opp = np.roll(f, -2, axis=1).reshape(-1)
        key = np.minimum(u, w) * n_v + np.maximum(u, w)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        pair = np.nonzero(ks[1:] == ks[:-1])[0]
        e1, e2 = order[pair], order[pair + 1]
        a, b = u[e1], w[e1]
        c, d = opp[e1], opp[e2]
        keep = ~(fixed_mask[a] & fixed_mask[b])
        e1, e2, a, b, c, d = e1[keep], e2[keep], a[keep], b[keep], c[keep], d[keep]

        def angle(p, q, r):
            x, y = v[q] - v[p], v[r] - v[p]
            cosv = np.einsum("ij,ij->i", x, y) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-30)
            return np.arccos(np.clip(cosv, -1.0, 1.0))

        total = angle(c, a, b) + angle(d, a, b)
        cand = np.nonzero(total > np.pi + 1e-3)[0]
        if len(cand) == 0:
            break
        cand = cand[np.argsort(-total[cand])]
        a, b, c, d = a[cand], b[cand], c[cand], d[cand]
        f1, f2 = e1[cand] // 3, e2[cand] // 3
        # f1 = (a, b, c) and f2 = (b, a, d): the quad a, d, b, c flips to (a, d, c), (d, b, c).
        old_n = np.cross(v[b] - v[a], v[c] - v[a]) + np.cross(v[a] - v[b], v[d] - v[b])
        n1 = np.cross(v[d] - v[a], v[c] - v[a])
        n2 = np.cross(v[b] - v[d], v[c] - v[d])
        new_key = np.minimum(c, d) * n_v + np.maximum(c, d)
        ok = ((np.einsum("ij,ij->i", n1, old_n) > 0) & (np.einsum("ij,ij->i", n2, old_n) > 0)
              & (orient * _area2(chart, np.stack([a, d, c], 1)) > 0)
              & (orient * _area2(chart, np.stack([d, b, c], 1)) > 0)
              & (c != d) & ~np.isin(new_key, key))
        used = np.zeros(len(f), dtype=bool)
        added: set[int] = set()
        n_flip = 0
        for k in np.nonzero(ok)[0]:
            if used[f1[k]] or used[f2[k]] or int(new_key[k]) in added:
                continue
            f[f1[k]] = (a[k], d[k], c[k])
            f[f2[k]] = (d[k], b[k], c[k])
            used[f1[k]] = used[f2[k]] = True
            added.add(int(new_key[k]))
            n_flip += 1
        if n_flip == 0:
            break
    return f


def _require_edges(edge_set: set, ids: np.ndarray, closed: bool, what: str) -> None:
    nxt = np.roll(ids, -1) if closed else ids[1:]
    cur = ids if closed else ids[:-1]
    missing = [(int(a), int(b)) for a, b in zip(cur, nxt) if (min(a, b), max(a, b)) not in edge_set]
    if missing:
        raise RuntimeError(f"procedural head: {len(missing)} {what} edges are not mesh edges")


def _orient_outwards(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    c = v[f].mean(1) - np.array([0.0, 0.0, -0.01])
    if np.sum(np.einsum("ij,ij->i", n, c)) < 0:
        f = f[:, [0, 2, 1]]
    return f


class _PartBuilder:
    """Accumulates extra parts (rims, cavity, eyeballs) onto the skin mesh.

    Strip-like parts (rims, cavity) also record, per face corner, its (ring, column)
    grid coordinate so they can get a seam-free rectangular UV island.
    """

    def __init__(self, skin_v: np.ndarray, skin_f: np.ndarray, skin_base: np.ndarray, n_skin: int):
        self.verts = [skin_v]
        self.faces = [skin_f]
        self.face_rc: list[np.ndarray | None] = [None]
        self.face_island: list[str | None] = [None]
        self.base = [skin_base]
        self.part = [np.full(n_skin, SKIN, dtype=np.int8)]
        self.attach = [np.arange(n_skin)]
        self.depth = [np.zeros(n_skin, dtype=np.int64)]
        self.cav_lower = [np.zeros(n_skin)]
        self.n = n_skin
        self.skin_faces = skin_f
        self.rim_rings: dict[int, list[np.ndarray]] = {}
        self.cavity_rings: list[np.ndarray] = []

    def _add(self, v, part, attach, depth, base=None, cav_lower=None):
        ids = self.n + np.arange(len(v))
        self.verts.append(v)
        self.base.append(v.copy() if base is None else base)
        self.part.append(np.full(len(v), part, dtype=np.int8))
        self.attach.append(attach)
        self.depth.append(depth)
        self.cav_lower.append(np.zeros(len(v)) if cav_lower is None else cav_lower)
        self.n += len(v)
        return ids

    def _strip(self, outer: np.ndarray, inner: np.ndarray, k: int, forward: bool, island: str) -> None:
        """Quads between ring k-1 (``outer``) and ring k (``inner``), both closed loops.

        ``forward``: the neighbouring faces already hold the directed edge
        outer[0] -> outer[1], so these faces must run the other way round.
        """
        n = len(outer)
        j = np.arange(n)
        a, b = outer, np.roll(outer, -1)
        c, d = inner, np.roll(inner, -1)
        ra = np.stack([np.full(n, k - 1.0), j], 1)
        rb = np.stack([np.full(n, k - 1.0), j + 1.0], 1)
        rc = np.stack([np.full(n, float(k)), j], 1)
        rd = np.stack([np.full(n, float(k)), j + 1.0], 1)
        if forward:
            f = np.concatenate([np.stack([b, a, c], 1), np.stack([b, c, d], 1)])
            g = np.concatenate([np.stack([rb, ra, rc], 1), np.stack([rb, rc, rd], 1)])
        else:
            f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
            g = np.concatenate([np.stack([ra, rb, rd], 1), np.stack([ra, rd, rc], 1)])
        self.faces.append(f)
        self.face_rc.append(g)
        self.face_island.append(island)

    def _holds(self, a: int, b: int) -> bool:
        for f in self.faces:
            if np.any((f == a) & (np.roll(f, -1, axis=1) == b)):
                return True
        return False

    def add_lid_rim(self, loop: np.ndarray, layout: Layout, side: int) -> None:
        """Two rings tucking the lid margin in behind the lid, ending inside the eye."""
        centre = layout.eye_centre(side)
        outer = self.verts[0][loop]
        d = outer - centre
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        island = "rim_l" if side > 0 else "rim_r"
        rings = []
        prev = loop
        for k, radius in enumerate((layout.eye_radius + 0.35 * layout.lid_gap,
                                    layout.eye_radius - 0.0018), start=1):
            pos = centre + d * radius
            if k == 1:  # halfway, so the rim folds in rather than jumping
                pos = outer + 0.55 * (pos - outer)
            ids = self._add(pos, RIM_L if side > 0 else RIM_R, loop.copy(), np.full(len(loop), k))
            self._strip(prev, ids, k, self._holds(int(prev[0]), int(prev[1])), island)
            rings.append(ids)
            prev = ids
        self.rim_rings[side] = rings

    def add_mouth_cavity(self, loop: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                         layout: Layout) -> None:
        """Rings behind the lips that widen into an oral cavity and close at the back."""
        v = self.verts[0]
        mw = layout.mouth_half_width
        p0 = v[loop]
        n_up = len(upper)
        # Angle around the mouth: 0 right corner, pi/2 top, pi left corner, 3pi/2 bottom.
        phi = np.arccos(np.clip(-p0[:, 0] / mw, -1.0, 1.0))
        phi[n_up:] = 2 * np.pi - phi[n_up:]
        lower_w = np.zeros(len(loop))
        lower_w[n_up:] = 1.0
        lower_w[0] = lower_w[n_up - 1] = 0.5
        z_lip = p0[:, 2].max()
        y_c = layout.mouth_y
        # (half width, half height, depth behind the lips, centre drop, blend to ellipse)
        shape = [(0.96 * mw, 0.0015, 0.0030, 0.0, 0.35),
                 (0.86 * mw, 0.0050, 0.0085, 0.0005, 0.8),
                 (0.95 * mw, 0.0120, 0.0200, 0.0020, 1.0),
                 (0.88 * mw, 0.0145, 0.0360, 0.0030, 1.0),
                 (0.60 * mw, 0.0110, 0.0520, 0.0030, 1.0),
                 (0.30 * mw, 0.0060, 0.0600, 0.0030, 1.0)]
        prev = loop
        for k, (ax, ay, dz, drop, blend) in enumerate(shape, start=1):
            ell = np.stack([-ax * np.cos(phi), y_c - drop + ay * np.sin(phi),
                            np.full(len(phi), z_lip - dz)], axis=1)
            pos = p0 + blend * (ell - p0)
            if blend < 1.0:
                pos[:, 2] = z_lip - dz - (z_lip - p0[:, 2]) * (1.0 - blend)
            # Jaw membership fades from the lips' hard upper/lower split to 1/2 deep inside.
            lw = 0.5 + (lower_w - 0.5) * (1.0 - (k - 1) / len(shape)) ** 0.5
            ids = self._add(pos, CAVITY, loop.copy(), np.full(len(loop), k), cav_lower=lw)
            self._strip(prev, ids, k, self._holds(int(prev[0]), int(prev[1])), "cavity")
            self.cavity_rings.append(ids)
            prev = ids
        # Close the back with a fan around a centre vertex.
        centre = self.verts[-1].mean(0, keepdims=True) - np.array([[0.0, 0.0, 0.004]])
        k = len(shape) + 1
        cid = self._add(centre, CAVITY, np.array([loop[0]]), np.array([k]), cav_lower=np.array([0.5]))
        n = len(prev)
        j = np.arange(n)
        a, b = prev, np.roll(prev, -1)
        cc = np.full(n, cid[0])
        ra = np.stack([np.full(n, k - 1.0), j], 1)
        rb = np.stack([np.full(n, k - 1.0), j + 1.0], 1)
        rc = np.stack([np.full(n, float(k)), j + 0.5], 1)
        if self._holds(int(prev[0]), int(prev[1])):
            self.faces.append(np.stack([b, a, cc], 1))
            self.face_rc.append(np.stack([rb, ra, rc], 1))
        else:
            self.faces.append(np.stack([a, b, cc], 1))
            self.face_rc.append(np.stack([ra, rb, rc], 1))
        self.face_island.append("cavity")

    def add_eyeball(self, layout: Layout, side: int, n_seg: int):
        """A UV sphere around the eye centre, pole (pupil) along +z, cornea bulge."""
        c = layout.eye_centre(side)
        r = layout.eye_radius
        polar = np.deg2rad([5.0, 11.0, 18.0, 25.0, 30.0, 38.0, 50.0, 65.0, 90.0, 115.0, 140.0, 162.0])
        iris = np.deg2rad(30.0)
        ang = 2 * np.pi * np.arange(n_seg) / n_seg
        pp, aa = np.meshgrid(polar, ang, indexing="ij")
        bulge = layout.cornea_bulge * np.clip(1.0 - (pp / iris) ** 2, 0.0, None) ** 2
        rr = r + bulge
        ring_pts = np.stack([rr * np.sin(pp) * np.cos(aa), rr * np.sin(pp) * np.sin(aa),
                             rr * np.cos(pp)], axis=-1).reshape(-1, 3)
        front = np.array([[0.0, 0.0, r + layout.cornea_bulge]])
        back = np.array([[0.0, 0.0, -r]])
        pts = np.concatenate([front, ring_pts, back]) + c
        pol = np.concatenate([[0.0], pp.ravel(), [np.pi]])
        part = EYE_L if side > 0 else EYE_R
        ids = self._add(pts, part, np.full(len(pts), -1), np.zeros(len(pts), dtype=np.int64))
        f0, back_id = ids[0], ids[-1]
        grid = ids[1:-1].reshape(len(polar), n_seg)
        faces = []
        nxt = np.roll(np.arange(n_seg), -1)
        faces.append(np.stack([np.full(n_seg, f0), grid[0], grid[0][nxt]], 1))
        for i in range(len(polar) - 1):
            a, b = grid[i], grid[i][nxt]
            c2, d = grid[i + 1], grid[i + 1][nxt]
            faces.append(np.stack([a, c2, d], 1))
            faces.append(np.stack([a, d, b], 1))
        faces.append(np.stack([grid[-1], np.full(n_seg, back_id), grid[-1][nxt]], 1))
        f = np.concatenate(faces)
        v = np.concatenate(self.verts)
        if _signed_volume(v[ids] - c, f - ids[0]) < 0:
            f = f[:, [0, 2, 1]]
        self.faces.append(f)
        self.face_rc.append(None)
        self.face_island.append(None)
        equator = grid[int(np.argmin(np.abs(polar - np.pi / 2)))]
        return ids, equator, pol


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


# ------------------------------------------------------------------------------ UVs

#: UV atlas: skin above v = SKIN_V0; islands for eyes, rims and the cavity below.
SKIN_V0 = 0.20
ISLANDS = {
    "eye_r": (0.010, 0.008, 0.190, 0.188),
    "eye_l": (0.200, 0.008, 0.380, 0.188),
    "rim_r": (0.395, 0.100, 0.600, 0.185),
    "rim_l": (0.395, 0.010, 0.600, 0.095),
    "cavity": (0.615, 0.010, 0.990, 0.185),
}
#: Eyeball UV radius grows like (angle from the pupil) ** EYE_UV_POWER: the iris and
#: pupil get most of the island's texels.
EYE_UV_POWER = 0.6


def skin_uv(t: np.ndarray, az: np.ndarray) -> np.ndarray:
    """Cylindrical unwrap: u from azimuth (the face gets 1.5x the back's texels,
    seam at the back), v from the meridian parameter (crown at the top)."""
    u = 0.5 + (az + 0.5 * np.sin(az)) / (2 * np.pi)
    v = 1.0 - 0.004 - (1.0 - SKIN_V0 - 0.008) * t
    return np.stack([u, v], axis=-1)


def _uv_layout(verts, faces, part, param, seam_ids, builder: _PartBuilder, eye_polar, eye_vertices):
    n_v = len(verts)
    uv = np.zeros((n_v, 2))
    skin = part == SKIN
    uv[skin] = skin_uv(param[skin, 0], param[skin, 1])
    # Eyeballs: azimuthal projection around the pupil.
    for side, key in ((+1, "eye_l"), (-1, "eye_r")):
        ids = eye_vertices[side]
        u0, v0, u1, v1 = ISLANDS[key]
        axis_xy = 0.5 * (verts[ids[0]] + verts[ids[-1]])
        d = verts[ids] - axis_xy
        ang = np.arctan2(d[:, 1], d[:, 0])
        rad = 0.5 * (eye_polar[side] / np.pi) ** EYE_UV_POWER
        uv[ids, 0] = 0.5 * (u0 + u1) + (u1 - u0) * rad * np.cos(ang)
        uv[ids, 1] = 0.5 * (v0 + v1) + (v1 - v0) * rad * np.sin(ang)
    uv_faces = faces.copy()
    extra: list[np.ndarray] = []
    n_uv = n_v

    def new_uv(values: np.ndarray) -> np.ndarray:
        nonlocal n_uv
        extra.append(values)
        ids = n_uv + np.arange(len(values))
        n_uv += len(values)
        return ids

    # Strip parts: one rectangle per island, columns along the loop, rows = rings.
    n_rows: dict[str, float] = {}
    for rc, island in zip(builder.face_rc, builder.face_island):
        if rc is not None:
            n_rows[island] = max(n_rows.get(island, 0.0), float(rc[..., 0].max()))
    offset = 0
    for f, rc, island in zip(builder.faces, builder.face_rc, builder.face_island):
        if rc is not None:
            u0, v0, u1, v1 = ISLANDS[island]
            n_col = rc[..., 1].max()
            n_row = n_rows[island]
            coords = np.stack([u0 + (u1 - u0) * rc[..., 1] / n_col,
                               v1 - (v1 - v0) * rc[..., 0] / n_row], axis=-1)
            if np.sum(np.sign(_area2(coords.reshape(-1, 2), np.arange(coords.size // 2).reshape(-1, 3)))) < 0:
                coords[..., 0] = u0 + u1 - coords[..., 0]  # keep islands counter-clockwise
            coords = coords.reshape(-1, 2)
            uv_faces[offset:offset + len(f)] = new_uv(coords).reshape(-1, 3)
        offset += len(f)

    # Eyeball back poles: one UV per face, on the island's rim at the face's angle.
    for side, key in ((+1, "eye_l"), (-1, "eye_r")):
        back = eye_vertices[side][-1]
        rows = np.nonzero(np.any(faces == back, axis=1))[0]
        u0, v0, u1, v1 = ISLANDS[key]
        cu, cv = 0.5 * (u0 + u1), 0.5 * (v0 + v1)
        for r in rows:
            others = [vid for vid in faces[r] if vid != back]
            ang = np.arctan2(uv[others, 1] - cv, uv[others, 0] - cu)
            mean_ang = np.arctan2(np.sin(ang).sum(), np.cos(ang).sum())
            k = int(np.nonzero(faces[r] == back)[0][0])
            uv_faces[r, k] = new_uv(np.array([[cu + 0.5 * (u1 - u0) * np.cos(mean_ang),
                                               cv + 0.5 * (v1 - v0) * np.sin(mean_ang)]]))[0]

    # Skin seam (az = pi): faces on the subject's left (az > 0) see seam vertices at
    # u = 1, faces on the right at u = 0; faces around the crown pole get their own
    # pole UV.
    seam_set = np.zeros(n_v, dtype=bool)
    seam_set[seam_ids] = True
    pole = seam_ids[0]
    rows = np.nonzero((seam_set[faces] & (part[faces] == SKIN)).any(1))[0]
    for r in rows:
        off = [k for k in range(3) if not seam_set[faces[r, k]]]
        side_az = np.mean(param[faces[r, off], 1])
        seam_u = 1.0 if side_az > 0 else 0.0
        for k in range(3):
            vid = faces[r, k]
            if not seam_set[vid]:
                continue
            if vid == pole:
                us = [uv[faces[r, j], 0] if not seam_set[faces[r, j]] else seam_u
                      for j in range(3) if j != k]
                uv_faces[r, k] = new_uv(np.array([[float(np.mean(us)), uv[vid, 1]]]))[0]
            elif uv[vid, 0] != seam_u:
                uv_faces[r, k] = new_uv(np.array([[seam_u, uv[vid, 1]]]))[0]
    if extra:
        uv = np.concatenate([uv] + extra)
    # Compact: drop per-vertex UVs no face uses (rim/cavity vertices use island copies).
    used = np.unique(uv_faces)
    remap = np.full(len(uv), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return np.clip(uv[used], 0.0, 1.0), remap[uv_faces]
