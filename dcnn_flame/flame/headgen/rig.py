"""Skeleton of the procedural head: joint regressor, skinning weights, pose correctives.

Joints (FLAME order): 0 global (root of the neck, on the neck cut), 1 neck (top of
the neck, between the jaw angles and behind them), 2 jaw (on the line joining the two
jaw hinges in front of the ears), 3 left eye, 4 right eye (eyeball centres).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from dcnn_flame.flame.headgen.layout import Layout, smoothstep
from dcnn_flame.flame.headgen.mesh import CAVITY, EYE_L, EYE_R, SKIN, HeadMesh

GLOBAL, NECK, JAW, EYE_LEFT, EYE_RIGHT = range(5)
#: FLAME's kinematic tree: global <- neck <- (jaw, left eye, right eye).
PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)


def kintree_table() -> np.ndarray:
    """[2, 5] int64: parents (root -1) and joint ids."""
    return np.stack([PARENTS, np.arange(5, dtype=np.int64)])


def _patch_weights(v: np.ndarray, candidates: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    d = np.linalg.norm(v[candidates] - centre, axis=1)
    w = np.clip(1.0 - (d / radius) ** 2, 0.0, None) ** 2
    if w.sum() <= 0:
        raise RuntimeError(f"procedural head: no vertices within {radius} m of {centre}")
    return w / w.sum()


def joint_regressor(mesh: HeadMesh, layout: Layout) -> np.ndarray:
    """[5, V] rows summing to 1 (non-negative)."""
    v = mesh.vertices
    n = len(v)
    reg = np.zeros((5, n))
    reg[GLOBAL, mesh.neck_ring] = 1.0 / len(mesh.neck_ring)
    skin = np.nonzero(mesh.part == SKIN)[0]
    # Neck and jaw: mirrored skin patches (left + right) so the joint lands on x = 0,
    # between the two patches: behind the jaw angles, and on the jaw hinges.
    for joint, centre, radius in ((NECK, np.array([0.055, -0.050, -0.040]), 0.016),
                                  (JAW, np.array([layout.jaw_hinge_x, layout.jaw_hinge_y,
                                                  layout.jaw_hinge_z]), 0.012)):
        for side in (+1.0, -1.0):
            c = centre * np.array([side, 1.0, 1.0])
            # Project the patch centre onto the skin (nearest skin vertex) first.
            near = skin[np.argmin(np.linalg.norm(v[skin] - c, axis=1))]
            reg[joint, skin] += 0.5 * _patch_weights(v, skin, v[near], radius)
    reg[EYE_LEFT, mesh.eye_equator[+1]] = 1.0 / len(mesh.eye_equator[+1])
    reg[EYE_RIGHT, mesh.eye_equator[-1]] = 1.0 / len(mesh.eye_equator[-1])
    return reg


def graph_laplacian(n: int, faces: np.ndarray) -> sp.csr_matrix:
    """Uniform (umbrella) Laplacian L = D - A of the mesh edge graph."""
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    a.data[:] = 1.0
    return (sp.diags(np.asarray(a.sum(1)).ravel()) - a).tocsr()


def harmonic_fill(lap: sp.csr_matrix, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Solve L x = 0 on the free vertices with x[fixed] = values (smooth interpolation)."""
    n = lap.shape[0]
    free = np.ones(n, dtype=bool)
    free[fixed] = False
    x = np.zeros(n)
    x[fixed] = values
    if free.any():
        l_ff = lap[free][:, free]
        rhs = -lap[free][:, ~free] @ x[~free]
        # Isolated free components (no fixed vertex) would make L_ff singular.
        l_ff = l_ff + sp.eye(l_ff.shape[0]) * 1e-9
        x[free] = spsolve(l_ff.tocsc(), rhs)
    return x


def jaw_weights(mesh: HeadMesh, layout: Layout) -> np.ndarray:
    """[V] jaw skinning weight of skin vertices (cavity/rims filled in by the caller).

    Fixed to 1 on the lower lip and chin, 0 on the upper lip, above the mouth, behind
    the jaw hinge and on the neck; smooth (harmonic) in between.
    """
    v = mesh.vertices
    skin = mesh.part == SKIN
    n_skin = int(mesh.meta["n_skin"])
    sv = v[:n_skin]
    x, y, z = sv[:, 0], sv[:, 1], sv[:, 2]
    mw = layout.mouth_half_width
    lap = graph_laplacian(n_skin, mesh.faces[np.all(mesh.faces < n_skin, axis=1)])
    del skin
    one = np.zeros(n_skin, dtype=bool)
    zero = np.zeros(n_skin, dtype=bool)
    one[mesh.slit_lower[1:-1]] = True
    zero[mesh.slit_upper[1:-1]] = True
    # Chin and lower jaw body: well below the mouth, in front of the jaw angle.
    one |= (y < layout.mouth_y - 0.014) & (y > layout.menton_y + 0.004) & (z > 0.045) & (np.abs(x) < 0.045)
    zero |= y > layout.mouth_y + 0.014
    zero |= (np.abs(x) > mw + 0.004) & (y > layout.mouth_y + 0.006)
    zero |= z < layout.jaw_hinge_z - 0.020
    zero |= y < -0.122
    zero &= ~one
    fixed = np.nonzero(one | zero)[0]
    w = harmonic_fill(lap, fixed, one[fixed].astype(np.float64))
    return np.clip(w, 0.0, 1.0)


def skinning_weights(mesh: HeadMesh, layout: Layout) -> np.ndarray:
    """[V, 5] non-negative, rows sum to 1."""
    v = mesh.vertices
    n = len(v)
    n_skin = int(mesh.meta["n_skin"])
    w = np.zeros((n, 5))
    jaw = np.zeros(n)
    jaw[:n_skin] = jaw_weights(mesh, layout)
    # Rims follow their lid vertex; the cavity splits between the jaws by its side.
    rim = (mesh.part != SKIN) & (mesh.part != CAVITY) & (mesh.attach >= 0)
    jaw[rim] = jaw[mesh.attach[rim]]
    cav = mesh.part == CAVITY
    jaw[cav] = mesh.cavity_lower[cav]
    y = v[:, 1]
    glob = (1.0 - smoothstep(-0.165, -0.115, y)) * (1.0 - jaw)
    glob[(mesh.part == EYE_L) | (mesh.part == EYE_R) | cav] = 0.0
    w[:, JAW] = jaw
    w[:, GLOBAL] = glob
    w[:, NECK] = 1.0 - jaw - glob
    for part, joint in ((EYE_L, EYE_LEFT), (EYE_R, EYE_RIGHT)):
        m = mesh.part == part
        w[m] = 0.0
        w[m, joint] = 1.0
    w = np.clip(w, 0.0, None)
    return w / w.sum(1, keepdims=True)


def _feature_index(joint: int, row: int, col: int) -> int:
    """Index into the 36 pose features of (R_joint - I)[row, col] (joints 1..4)."""
    return 9 * (joint - 1) + 3 * row + col


def _add_rotation_corrective(posedirs: np.ndarray, joint: int, axis: int, field: np.ndarray) -> None:
    """Make a rotation by +angle about ``axis`` add ``sin(angle) * field``.

    For R = rot(axis, a), (R - I) holds +sin a at (k, j) and -sin a at (j, k) with
    (j, k) the two other axes in cyclic order, so half the field on each entry.
    """
    j, k = (axis + 1) % 3, (axis + 2) % 3
    posedirs[:, :, _feature_index(joint, k, j)] += 0.5 * field
    posedirs[:, :, _feature_index(joint, j, k)] -= 0.5 * field


def pose_correctives(mesh: HeadMesh, layout: Layout, normals: np.ndarray,
                     lid_close: dict[int, np.ndarray]) -> np.ndarray:
    """[V, 3, 36] pose-corrective blendshapes.

    * neck flexion (+x rotation, chin down): the throat bulges; extension stretches it.
    * neck turn (+y) / tilt (+z): the neck side being turned/tilted towards bulges.
    * jaw opening (+x): soft tissue under the chin bulges down, the cheeks draw in.
    * eye looking down (+x): the upper lid follows the cornea down (up for -x).

    Args:
        normals: [V, 3] outward vertex normals of the rest mesh.
        lid_close: side -> [V, 3] field closing that eye's upper lid (the blink).
    """
    v = mesh.vertices
    n = len(v)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    skin = (mesh.part == SKIN).astype(np.float64)
    posedirs = np.zeros((n, 3, 36))
    neck_band = smoothstep(-0.165, -0.140, y) * (1.0 - smoothstep(-0.105, -0.085, y)) * skin
    throat = neck_band * smoothstep(-0.02, 0.03, z)
    _add_rotation_corrective(posedirs, 1, 0, 0.012 * throat[:, None] * normals)
    side_band = neck_band * smoothstep(0.01, 0.045, np.abs(x))
    _add_rotation_corrective(posedirs, 1, 1, 0.008 * (np.sign(x) * side_band)[:, None] * normals)
    _add_rotation_corrective(posedirs, 1, 2, -0.008 * (np.sign(x) * side_band)[:, None] * normals)

    under_chin = (smoothstep(-0.125, -0.110, y) * (1.0 - smoothstep(-0.095, -0.080, y))
                  * smoothstep(0.0, 0.04, z) * (1.0 - smoothstep(0.02, 0.05, np.abs(x))) * skin)
    jaw_field = 0.012 * under_chin[:, None] * (0.6 * normals + np.array([0.0, -0.8, 0.0]))
    cheeks = (np.exp(-((np.abs(x) - 0.045) / 0.012) ** 2 - ((y - layout.mouth_y) / 0.018) ** 2)
              * smoothstep(0.0, 0.03, z) * skin)
    jaw_field += 0.006 * cheeks[:, None] * np.stack([-np.sign(x), np.zeros(n), np.zeros(n)], 1)
    _add_rotation_corrective(posedirs, 2, 0, jaw_field)

    for side, joint in ((+1, 3), (-1, 4)):
        _add_rotation_corrective(posedirs, joint, 0, 1.3 * lid_close[side])
    return posedirs


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """[V, 3] area-weighted unit vertex normals."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)
