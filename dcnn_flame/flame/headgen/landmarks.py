"""The 68 iBUG landmarks on the procedural head, with yaw-dependent contour bins.

iBUG order (image seen from the front, so the subject's right is on the left):
0-16 jaw line from the subject's right ear to the left ear (8 = chin), 17-21 right
brow (outer -> inner), 22-26 left brow (inner -> outer), 27-30 nose bridge (top ->
tip), 31-35 nostril base (right -> left), 36-41 right eye (outer corner, upper lid,
inner corner, lower lid), 42-47 left eye (inner corner, upper lid, outer corner,
lower lid), 48-59 outer lips (right corner, upper lip, left corner, lower lip),
60-67 inner lips (right corner, upper, left corner, lower).

Dynamic contour: bin ``b`` (0..78) holds the 17 contour points for head yaw
``b - 39`` degrees, yaw being a right-handed rotation about +y (positive turns the
face towards +x, the subject's left), as :mod:`dcnn_flame.flame.layer` looks it up.
For each bin the contour points are the outline of the face as seen by an
orthographic camera on +z: each point is the vertex of the face/jaw region farthest
from a centre below the nose within a fixed direction wedge in the image.
"""
from __future__ import annotations

import numpy as np

from dcnn_flame.flame.data import LandmarkEmbedding
from dcnn_flame.flame.headgen.layout import Layout
from dcnn_flame.flame.headgen.mesh import SKIN, HeadMesh
from dcnn_flame.flame.headgen.surface import lip_outline

NUM_YAW_BINS = 79
MAX_YAW_DEG = 39
#: Image-plane directions (degrees, x right, y up) of the 17 contour points seen
#: from the contour centre: 0 points left-up (subject's right), 8 straight down.
CONTOUR_DIRECTIONS_DEG = 160.0 + 13.75 * np.arange(17)
#: The contour centre (below the nose, inside the head).
CONTOUR_CENTRE = np.array([0.0, -0.022, 0.040])


def _skin_faces(mesh: HeadMesh) -> np.ndarray:
    return np.nonzero(np.all(mesh.part[mesh.faces] == SKIN, axis=1))[0]


def _edge_point(mesh: HeadMesh, chain: np.ndarray, frac: float, skin_faces: np.ndarray):
    """Face and barycentrics of the point at arc-length fraction ``frac`` along a
    polyline of mesh vertices (lies on one of its edges)."""
    p = mesh.vertices[chain]
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    k = int(np.clip(np.searchsorted(s, frac, side="right") - 1, 0, len(chain) - 2))
    lam = float(np.clip((frac - s[k]) / max(s[k + 1] - s[k], 1e-12), 0.0, 1.0))
    a, b = chain[k], chain[k + 1]
    f = mesh.faces[skin_faces]
    hit = np.nonzero(np.any(f == a, axis=1) & np.any(f == b, axis=1))[0]
    if len(hit) == 0:
        raise RuntimeError("procedural head: landmark edge is not on the skin")
    face = skin_faces[hit[0]]
    bary = np.zeros(3)
    bary[list(mesh.faces[face]).index(a)] = 1.0 - lam
    bary[list(mesh.faces[face]).index(b)] = lam
    return face, bary


def _vertex_point(mesh: HeadMesh, vid: int, skin_faces: np.ndarray):
    face = int(_first_face_of_vertex(mesh, skin_faces)[vid])
    if face < 0:
        raise RuntimeError(f"procedural head: vertex {vid} is on no skin face")
    bary = np.zeros(3)
    bary[list(mesh.faces[face]).index(vid)] = 1.0
    return face, bary


def _first_face_of_vertex(mesh: HeadMesh, skin_faces: np.ndarray) -> np.ndarray:
    """[V] one skin face holding each vertex (-1 for none), kept on the mesh."""
    hit = mesh.meta.get("first_skin_face")
    if hit is None:
        hit = np.full(len(mesh.vertices), -1, dtype=np.int64)
        f = mesh.faces[skin_faces]
        for k in range(3):
            hit[f[::-1, k]] = skin_faces[::-1]
        mesh.meta["first_skin_face"] = hit
    return hit


def _frontal_point(mesh: HeadMesh, xy: np.ndarray, skin_faces: np.ndarray):
    """Front-most skin triangle under frontal point ``xy`` and its barycentrics."""
    v = mesh.vertices
    f = mesh.faces[skin_faces]
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = np.abs(area) > 1e-14
    area = np.where(ok, area, 1.0)
    w0 = ((b[:, 0] - xy[0]) * (c[:, 1] - xy[1]) - (b[:, 1] - xy[1]) * (c[:, 0] - xy[0])) / area
    w1 = ((c[:, 0] - xy[0]) * (a[:, 1] - xy[1]) - (c[:, 1] - xy[1]) * (a[:, 0] - xy[0])) / area
    w2 = 1.0 - w0 - w1
    inside = ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9) & (area > 0) & (a[:, 2] > 0.0)
    if not inside.any():
        raise RuntimeError(f"procedural head: no front skin triangle under landmark {xy}")
    z = w0 * a[:, 2] + w1 * b[:, 2] + w2 * c[:, 2]
    k = np.nonzero(inside)[0][np.argmax(z[inside])]
    return skin_faces[k], np.array([w0[k], w1[k], w2[k]])


def _static_points(mesh: HeadMesh, lay: Layout):
    """Face ids and barycentrics of landmarks 17..67."""
    sf = _skin_faces(mesh)
    out = []
    # Brows 17-21 (right, outer -> inner) and 22-26 (left, inner -> outer).
    brow_x = np.array([0.0510, 0.0420, 0.0320, 0.0225, 0.0135])
    for sgn, xs in ((-1, brow_x), (+1, brow_x[::-1])):
        for ax in xs:
            out.append(_frontal_point(mesh, np.array([sgn * ax, float(lay.brow_line(ax))]), sf))
    # Nose bridge 27-30, top -> tip.
    top = lay.eye_y + 0.004
    for yy in np.linspace(top, lay.nose_tip_y, 4):
        out.append(_frontal_point(mesh, np.array([0.0, yy]), sf))
    # Nostril base 31-35, right -> left.
    for xx, dy in ((-0.0095, 0.0040), (-0.0050, 0.0016), (0.0, 0.0006), (0.0050, 0.0016), (0.0095, 0.0040)):
        out.append(_frontal_point(mesh, np.array([xx, lay.nose_base_y + dy]), sf))
    # Eyes: lid margins are mesh polylines (inner -> outer corner).
    for side, order in ((-1, "right"), (+1, "left")):
        up, lo = mesh.lid_upper[side], mesh.lid_lower[side]
        if order == "right":  # 36 outer, 37, 38 upper (outer->inner), 39 inner, 40, 41 lower
            pts = [_vertex_point(mesh, int(up[-1]), sf), _edge_point(mesh, up, 2 / 3, sf),
                   _edge_point(mesh, up, 1 / 3, sf), _vertex_point(mesh, int(up[0]), sf),
                   _edge_point(mesh, lo, 1 / 3, sf), _edge_point(mesh, lo, 2 / 3, sf)]
        else:  # 42 inner, 43, 44 upper (inner->outer), 45 outer, 46, 47 lower (outer->inner)
            pts = [_vertex_point(mesh, int(up[0]), sf), _edge_point(mesh, up, 1 / 3, sf),
                   _edge_point(mesh, up, 2 / 3, sf), _vertex_point(mesh, int(up[-1]), sf),
                   _edge_point(mesh, lo, 2 / 3, sf), _edge_point(mesh, lo, 1 / 3, sf)]
        out.extend(pts)
    # Outer lips 48-59: right corner, upper border right -> left, left corner, lower
    # border left -> right.
    mw = lay.mouth_half_width
    upper_x = np.array([-0.62, -0.25, 0.0, 0.25, 0.62]) * mw
    lower_x = np.array([0.62, 0.25, 0.0, -0.25, -0.62]) * mw
    sy, _, _ = lip_outline(np.array([mw]), lay)
    out.append(_frontal_point(mesh, np.array([-(mw + 0.0012), float(sy[0])]), sf))
    sy, hu, _ = lip_outline(upper_x, lay)
    for xx, yy in zip(upper_x, sy + 0.92 * hu):
        out.append(_frontal_point(mesh, np.array([xx, yy]), sf))
    sy, _, _ = lip_outline(np.array([mw]), lay)
    out.append(_frontal_point(mesh, np.array([mw + 0.0012, float(sy[0])]), sf))
    sy, _, hl = lip_outline(lower_x, lay)
    for xx, yy in zip(lower_x, sy - 0.92 * hl):
        out.append(_frontal_point(mesh, np.array([xx, yy]), sf))
    # Inner lips 60-67 on the slit: corners are shared vertices, the rest split.
    up, lo = mesh.slit_upper, mesh.slit_lower
    out.append(_vertex_point(mesh, int(up[0]), sf))
    for frac in (0.25, 0.5, 0.75):
        out.append(_edge_point(mesh, up, frac, sf))
    out.append(_vertex_point(mesh, int(up[-1]), sf))
    for frac in (0.75, 0.5, 0.25):
        out.append(_edge_point(mesh, lo, frac, sf))
    faces = np.array([o[0] for o in out], dtype=np.int64)
    bary = np.stack([o[1] for o in out])
    assert len(faces) == 51
    return faces, bary


def contour_region(mesh: HeadMesh, lay: Layout) -> np.ndarray:
    """Skin vertex ids the contour may use: the face and jaw in front of the ears,
    above the jaw's underside."""
    v = mesh.vertices
    t = mesh.param[:, 0]
    return np.nonzero((mesh.part == SKIN) & (v[:, 2] > lay.ear_z + 0.026) & (t < 0.765)
                      & (v[:, 1] < lay.eye_y + 0.015))[0]


def contour_vertices(mesh: HeadMesh, lay: Layout, yaw_deg: float) -> np.ndarray:
    """[17] vertex ids of the face outline for a head turned by ``yaw_deg``."""
    region = contour_region(mesh, lay)
    a = np.deg2rad(yaw_deg)
    rot = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    q = mesh.vertices[region] @ rot.T
    c = rot @ CONTOUR_CENTRE
    d = q[:, :2] - c[:2]
    ang = np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))
    dist = np.hypot(d[:, 0], d[:, 1])
    out = np.empty(17, dtype=np.int64)
    for k, beta in enumerate(CONTOUR_DIRECTIONS_DEG):
        diff = np.abs((ang - beta + 180.0) % 360.0 - 180.0)
        for width in (4.0, 7.0, 12.0, 20.0):
            m = diff < width
            if m.any():
                break
        # Farthest in the wedge; the wedge's angular offset is a weak tie-breaker.
        score = dist * np.cos(np.deg2rad(diff))
        out[k] = region[np.nonzero(m)[0][np.argmax(score[m])]]
    return out


def landmark_embedding(mesh: HeadMesh, lay: Layout) -> LandmarkEmbedding:
    """The full 68-point embedding with 79 dynamic contour bins."""
    sf = _skin_faces(mesh)
    static_faces, static_bary = _static_points(mesh, lay)
    dyn_faces = np.zeros((NUM_YAW_BINS, 17), dtype=np.int64)
    dyn_bary = np.zeros((NUM_YAW_BINS, 17, 3))
    for b in range(NUM_YAW_BINS):
        for k, vid in enumerate(contour_vertices(mesh, lay, b - MAX_YAW_DEG)):
            dyn_faces[b, k], dyn_bary[b, k] = _vertex_point(mesh, int(vid), sf)
    frontal = MAX_YAW_DEG
    full_faces = np.concatenate([dyn_faces[frontal], static_faces])
    full_bary = np.concatenate([dyn_bary[frontal], static_bary])
    return LandmarkEmbedding(static_faces=static_faces, static_bary=static_bary,
                             full_faces=full_faces, full_bary=full_bary,
                             dynamic_faces=dyn_faces, dynamic_bary=dyn_bary)


def landmark_points(vertices: np.ndarray, faces: np.ndarray, face_ids: np.ndarray,
                    bary: np.ndarray) -> np.ndarray:
    """[..., 3] points from an embedding on a [V, 3] mesh."""
    return (vertices[faces[face_ids]] * bary[..., None]).sum(-2)
