"""Blendshapes of the procedural head: identity, AU expressions, eyelids.

Expression components 0..16 are one facial action unit each, in
:data:`dcnn_flame.constants.AU_IDS` order; coefficient 1.0 is a strong (FACS ~E)
activation. Lids move by rotating about their eyeball's horizontal axis, so they
slide over the eye instead of cutting through it. Fields that keep the lips closed
are continuous across the mouth slit (both lips move together); only AU10, AU25
and AU26 move the two lips apart.
"""
from __future__ import annotations

import numpy as np

from dcnn_flame.constants import AU_IDS
from dcnn_flame.flame.headgen.layout import Layout, smoothstep
from dcnn_flame.flame.headgen.mesh import CAVITY, EYE_L, EYE_R, RIM_L, RIM_R, SKIN, HeadMesh
from dcnn_flame.flame.headgen.surface import EyeField, nose_relief

#: Names of the semantic identity components (the rest are random smooth fields).
SHAPE_COMPONENT_NAMES: tuple[str, ...] = (
    "head width",
    "head height and length",
    "jaw width",
    "nose size",
    "eye spacing",
    "lip fullness",
    "chin prominence",
    "cheek fullness",
    "forehead slope",
    "face depth",
)

#: Per-vertex RMS displacement (m) of identity component 0 at coefficient 1; later
#: components decay like a PCA spectrum: sigma_k = SHAPE_SIGMA0 * (k + 1) ** -SHAPE_DECAY.
SHAPE_SIGMA0 = 0.0030
SHAPE_DECAY = 0.6
#: How far a cavity ring follows the lips it hangs from (ring 0 = the lips).
_CAVITY_FOLLOW = np.array([1.0, 0.85, 0.6, 0.35, 0.15, 0.05, 0.0, 0.0])


def _g(x, y, cx, cy, sx, sy):
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


class FaceFrame:
    """Per-vertex facial coordinates of the rest mesh that the fields are written in."""

    def __init__(self, mesh: HeadMesh, layout: Layout) -> None:
        self.mesh = mesh
        self.layout = layout
        v = mesh.vertices
        self.v = v
        self.n = len(v)
        self.x, self.y, self.z = v[:, 0], v[:, 1], v[:, 2]
        self.ax = np.abs(self.x)
        self.sx = np.where(self.x >= 0.0, 1.0, -1.0)
        self.skin = mesh.part == SKIN
        self.front = self.skin & (self.z > 0.0)
        eyes = EyeField(layout)
        self.sd = np.where(self.front, eyes.signed_distance(self.x, self.y), 1.0)
        self.upper_eye = eyes.upper_side(self.x, self.y)
        # Lip side: +1 upper lip, -1 lower lip, from the slit polyline and its copies.
        su = v[mesh.slit_upper]
        self.slit_x, self.slit_y = su[:, 0], su[:, 1]
        slit_y = np.interp(self.x, self.slit_x, self.slit_y)
        self.dy_slit = self.y - slit_y
        lip = np.where(self.dy_slit >= 0.0, 1.0, -1.0)
        lip[mesh.slit_upper] = 1.0
        lip[mesh.slit_lower] = -1.0
        lip[mesh.slit_upper[[0, -1]]] = 0.0
        self.lip_side = lip
        self.mw = layout.mouth_half_width
        # Lips open in an oval: zero at the corners, so the corner vertices stay shared.
        self.open_profile = np.sqrt(np.clip(1.0 - (self.x / self.mw) ** 2, 0.0, None))
        # Translation fields fade out at the lid margins (the lids move by rotation).
        self.lid_protect = smoothstep(0.0025, 0.0090, self.sd)

    def zeros(self) -> np.ndarray:
        return np.zeros((self.n, 3))

    def vec(self, dx, dy, dz) -> np.ndarray:
        z = np.zeros(self.n)
        return np.stack([dx + z, dy + z, dz + z], axis=1)

    # -------------------------------------------------------------- propagation
    def finish(self, field: np.ndarray, lid_angles: dict | None = None) -> np.ndarray:
        """Zero non-skin parts, then let rims and cavity follow their skin vertex.

        ``lid_angles``: side -> [V] rotation (rad, about +x through that eyeball's
        centre, positive = down) already applied to the skin; rims rotate with the
        same angle as their margin vertex.
        """
        mesh = self.mesh
        out = np.where(self.skin[:, None], field, 0.0)
        cav = mesh.part == CAVITY
        follow = _CAVITY_FOLLOW[np.clip(mesh.depth[cav], 0, len(_CAVITY_FOLLOW) - 1)]
        out[cav] = field[mesh.attach[cav]] * follow[:, None]
        for part, side in ((RIM_L, +1), (RIM_R, -1)):
            rim = mesh.part == part
            if lid_angles is None:
                out[rim] = 0.0
            else:
                ang = lid_angles[side][mesh.attach[rim]]
                out[rim] = _rotate_about_eye(self.v[rim], self.layout.eye_centre(side), ang)
        out[(mesh.part == EYE_L) | (mesh.part == EYE_R)] = 0.0
        return out


def _rotate_about_eye(p: np.ndarray, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Displacement of points rotated by ``angle`` (rad, positive = downwards) about the
    horizontal axis through ``centre``, plus an outward push that keeps the linear
    blendshape's chord outside the arc at half intensity."""
    d = p - centre
    c, s = np.cos(angle), np.sin(angle)
    # Rotation about +x by +a moves the front (+z) downwards.
    y2 = d[:, 1] * c - d[:, 2] * s
    z2 = d[:, 1] * s + d[:, 2] * c
    disp = np.stack([np.zeros(len(p)), y2 - d[:, 1], z2 - d[:, 2]], axis=1)
    r = np.hypot(y2, z2) + 1e-12
    push = 2.0 * r * (1.0 - np.cos(0.5 * angle))
    disp[:, 1] += push * y2 / r
    disp[:, 2] += push * z2 / r
    return disp


# ---------------------------------------------------------------------------- eyelids


class LidModel:
    """Rotation angles that move each eye's lids, from the actual margin vertices."""

    def __init__(self, frame: FaceFrame) -> None:
        self.f = frame
        mesh, lay = frame.mesh, frame.layout
        self.close_angle = {}
        self.x_range = {}
        for side in (+1, -1):
            c = lay.eye_centre(side)
            up = frame.v[mesh.lid_upper[side]]
            lo = frame.v[mesh.lid_lower[side]]
            th_up = np.arctan2(up[:, 1] - c[1], up[:, 2] - c[2])
            # Lids meet just above the lower margin (which rises a little itself).
            th_lo = np.arctan2(lo[:, 1] + 0.0004 - c[1], lo[:, 2] - c[2])
            ax_up = np.abs(up[:, 0])
            th_lo_at_up = np.interp(ax_up, np.abs(lo[:, 0]), th_lo) if lo[0, 0] * side < lo[-1, 0] * side \
                else np.interp(ax_up, np.abs(lo[::-1, 0]), th_lo[::-1])
            # theta decreases downwards; closing = rotate down by (th_up - th_lo).
            order = np.argsort(ax_up)
            self.close_angle[side] = (ax_up[order], np.clip(th_up - th_lo_at_up, 0.0, None)[order])
            self.x_range[side] = (ax_up.min(), ax_up.max())

    def _profile(self, side: int) -> np.ndarray:
        """[V] closing angle of the margin at each vertex's |x| (0 past the corners)."""
        xs, ang = self.close_angle[side]
        return np.interp(self.f.ax, xs, ang, left=0.0, right=0.0)

    def angles(self, side: int, upper: float, lower: float, upper_reach: float = 0.011,
               lower_reach: float = 0.006) -> np.ndarray:
        """[V] rotation (rad, + = down) of the skin near eye ``side``.

        ``upper``: fraction of the full closing angle for the upper lid (+ closes);
        ``lower``: angle (rad) for the lower lid (- raises it). Both fade with the
        distance from the margin (``*_reach`` metres).
        """
        f = self.f
        on_side = (f.sx == side) & f.front
        prof = self._profile(side)
        peak = max(prof.max(), 1e-9)
        up = f.upper_eye & on_side
        lo = ~f.upper_eye & on_side
        fall_up = 1.0 - smoothstep(0.0015, upper_reach, f.sd)
        fall_lo = 1.0 - smoothstep(0.0010, lower_reach, f.sd)
        lo_prof = np.clip(prof / peak, 0.0, 1.0) ** 0.5
        ang = np.zeros(f.n)
        ang[up] = upper * prof[up] * fall_up[up]
        ang[lo] = lower * lo_prof[lo] * fall_lo[lo]
        return ang

    def field(self, angles_by_side: dict[int, np.ndarray]) -> np.ndarray:
        f = self.f
        out = f.zeros()
        for side, ang in angles_by_side.items():
            m = np.abs(ang) > 0
            out[m] += _rotate_about_eye(f.v[m], f.layout.eye_centre(side), ang[m])
        return f.finish(out, angles_by_side)


def eyelid_fields(frame: FaceFrame, lids: LidModel) -> np.ndarray:
    """[2, V, 3] FLAME-2023-style eyelid closing: index 0 left eye, 1 right eye."""
    out = []
    for side in (+1, -1):
        ang = {side: lids.angles(side, 1.0, -0.03)}
        ang[-side] = np.zeros(frame.n)
        out.append(lids.field(ang))
    return np.stack(out)


# ------------------------------------------------------------------------ AU fields


def _brow_vertical(f: FaceFrame) -> np.ndarray:
    """1 on the brows, fading up the forehead and down to 0 well above the lid."""
    lay = f.layout
    return (smoothstep(lay.eye_y + 0.004, lay.brow_y - 0.003, f.y)
            * (1.0 - 0.85 * smoothstep(lay.brow_y + 0.004, lay.brow_y + 0.055, f.y)))


def au_fields(frame: FaceFrame, lids: LidModel) -> dict[int, np.ndarray]:
    """AU id -> [V, 3] displacement at intensity 1 (strong)."""
    f = frame
    lay = f.layout
    x, y, z, ax, sx = f.x, f.y, f.z, f.ax, f.sx
    mw, my = f.mw, lay.mouth_y
    front = f.front.astype(np.float64)
    prot = f.lid_protect * front
    brow_v = _brow_vertical(f) * prot
    both = lambda up, lo: {+1: lids.angles(+1, up, lo), -1: lids.angles(-1, up, lo)}  # noqa: E731
    au = {}

    # AU1 inner brow raiser / AU2 outer brow raiser.
    inner = np.exp(-(((ax - 0.017) / 0.013) ** 2))
    au[1] = f.finish(f.vec(-0.0008 * sx * inner * brow_v, 0.0065 * inner * brow_v, 0.0))
    outer = np.exp(-(((ax - 0.046) / 0.013) ** 2))
    au[2] = f.finish(f.vec(0.0005 * sx * outer * brow_v, 0.0065 * outer * brow_v, 0.0))
    # AU4 brow lowerer: down and together, skin bunching forward between the brows.
    mid = np.exp(-(((ax - 0.022) / 0.020) ** 2)) * brow_v
    glabella = _g(x, y, 0.0, lay.brow_y - 0.004, 0.010, 0.008) * front
    au[4] = f.finish(f.vec(-0.0035 * sx * mid * np.exp(-(((ax - 0.014) / 0.02) ** 2)),
                           -0.0045 * mid, 0.0008 * mid + 0.0015 * glabella))
    # AU5 upper lid raiser: upper margins up ~3 mm.
    au[5] = lids.field(both(-0.42, 0.0))
    # AU6 cheek raiser: cheeks up and forward, lower lids pushed up.
    cheek = _g(ax, y, 0.040, lay.eye_y - 0.024, 0.019, 0.013) * prot
    crow = _g(ax, y, lay.eye_outer_x + 0.008, lay.eye_y, 0.007, 0.010) * prot
    cheek_field = f.vec(0.0008 * sx * cheek, 0.0045 * cheek + 0.0012 * crow, 0.0018 * cheek)
    au[6] = lids.field(both(0.0, -0.12)) + f.finish(cheek_field)
    # AU7 lid tightener: lower lids up (more), upper lids down a little.
    au[7] = lids.field(both(0.15, -0.21))
    # AU9 nose wrinkler: nose sides and wings up, the upper lip up a little.
    nose_side = (_g(ax, y, 0.010, lay.nose_root_y - 0.022, 0.010, 0.016)
                 + 0.9 * _g(ax, y, lay.ala_x, lay.nose_base_y + 0.006, 0.008, 0.007))
    upper_lip = _g(x, y, 0.0, my + 0.008, 0.016, 0.008) * (f.lip_side > 0)
    brow_in = np.exp(-(((ax - 0.015) / 0.010) ** 2)) * brow_v
    au[9] = f.finish(f.vec(0.0, 0.0040 * nose_side * prot + 0.0015 * upper_lip - 0.0015 * brow_in,
                           0.0010 * nose_side * prot))
    # AU10 upper lip raiser: upper lip up (parting the lips), strongest beside the centre.
    up_region = _upper_lip_weight(f) * (0.7 + 0.3 * np.exp(-(((ax - 0.010) / 0.008) ** 2)))
    au[10] = f.finish(f.vec(0.0, 0.0040 * up_region, 0.0010 * up_region))
    # AU12 lip corner puller: corners up, out and back (smile); cheeks lift.
    corner = _corner_weight(f, 0.017, 0.020, 0.013)
    cheek_lift = _g(ax, y, 0.034, my + 0.020, 0.014, 0.014) * front
    au[12] = f.finish(f.vec(0.0045 * sx * corner, 0.0070 * corner + 0.0020 * cheek_lift,
                            -0.0030 * corner + 0.0020 * cheek_lift))
    # AU14 dimpler: corners tightened inwards and back, a dimple beside them.
    corner14 = _corner_weight(f, 0.010, 0.012, 0.010)
    dimple = _g(ax, y, mw + 0.007, my, 0.004, 0.006) * front
    au[14] = f.finish(f.vec(-0.0022 * sx * corner14, 0.0010 * corner14,
                            -0.0032 * corner14 - 0.0018 * dimple))
    # AU15 lip corner depressor: corners down.
    corner15 = _corner_weight(f, 0.015, 0.013, 0.013)
    au[15] = f.finish(f.vec(0.0008 * sx * corner15, -0.0055 * corner15, -0.0005 * corner15))
    # AU17 chin raiser: chin up, lower lip pushed up and out (both lips move together); the
    # chin boss bulges forward and the furrow between it and the lower lip deepens (FACS). The
    # bulge and the furrow are local changes of the surface normal, so they show in shading: a
    # broad chin lift alone looks like a shorter chin, an identity trait, in a single image.
    chin = _g(x, y, 0.0, lay.chin_y + 0.003, 0.020, 0.016) * front
    pout = _g(x, y, 0.0, my - 0.006, 0.020, 0.009) * front
    boss = _g(x, y, 0.0, lay.chin_y + 0.011, 0.013, 0.007) * front
    furrow = _g(x, y, 0.0, my - lay.lower_lip_height - 0.004, 0.014, 0.004) * front * (f.lip_side < 0)
    au[17] = f.finish(f.vec(0.0, 0.0040 * chin + 0.0020 * pout,
                            0.0010 * chin + 0.0022 * pout + 0.0025 * boss - 0.0020 * furrow))
    # AU20 lip stretcher: corners sideways and a little down, lips flatten.
    corner20 = _corner_weight(f, 0.022, 0.016, 0.012)
    lips_flat = _g(x, y, 0.0, my, 0.020, 0.010) * front
    au[20] = f.finish(f.vec(0.0055 * sx * corner20, -0.0015 * corner20,
                            -0.0012 * corner20 - 0.0010 * lips_flat))
    # AU23 lip tightener: red lips narrow towards the slit and press back, and the skin just
    # past the red borders bunches forward into a rim (FACS). The corners stay where they are:
    # pulling them in is AU14's cue (dimpler), which AU23 used to share.
    red = np.exp(-((x / (mw + 0.003)) ** 6)) * front
    thin = np.exp(-((f.dy_slit / 0.008) ** 2)) * red
    border = np.where(f.lip_side > 0, lay.upper_lip_height, lay.lower_lip_height)
    rim = np.exp(-(((np.abs(f.dy_slit) - border - 0.002) / 0.003) ** 2)) * red
    au[23] = f.finish(f.vec(0.0, -0.0035 * np.tanh(f.dy_slit / 0.004) * thin,
                            -0.0020 * thin + 0.0015 * rim))
    # AU25 lips part: upper lip up a little, lower lip down (gap ~6 mm at the centre).
    au[25] = f.finish(_lips_part(f, 0.0018, 0.0045))
    # AU26 jaw drop (blendshape part; the jaw joint rotates too, see au_to_jaw):
    # lips part a little more and the chin drops.
    chin_drop = _g(x, y, 0.0, lay.chin_y, 0.030, 0.020) * front * (f.lip_side <= 0)
    au[26] = f.finish(_lips_part(f, 0.0008, 0.0020) + f.vec(0.0, -0.0012 * chin_drop, 0.0))
    # AU45 blink: both upper lids close fully.
    au[45] = lids.field(both(1.0, -0.03))
    missing = set(AU_IDS) - set(au)
    assert not missing, missing
    return au


def _corner_weight(f: FaceFrame, s_medial: float, s_lateral: float, s_vert: float) -> np.ndarray:
    """Smooth bump on both mouth corners, wider towards the cheek than the centre."""
    lay = f.layout
    dxc = f.ax - f.mw
    s = np.where(dxc < 0.0, s_medial, s_lateral)
    return np.exp(-((dxc / s) ** 2) - ((f.y - lay.mouth_y) / s_vert) ** 2) * f.front


def _upper_lip_weight(f: FaceFrame) -> np.ndarray:
    """1 on the upper lip at the slit, fading up to the nose and out past the corners."""
    lay = f.layout
    up = (f.lip_side > 0).astype(np.float64)
    height = np.clip(f.dy_slit, 0.0, None)
    fall = 1.0 - smoothstep(0.004, lay.nose_base_y - lay.mouth_y + 0.004, height)
    return up * f.open_profile * fall * f.front


def _lips_part(f: FaceFrame, up: float, down: float) -> np.ndarray:
    lay = f.layout
    prof = f.open_profile * f.front
    above = np.clip(f.dy_slit, 0.0, None)
    below = np.clip(-f.dy_slit, 0.0, None)
    up_w = (f.lip_side > 0) * prof * (1.0 - smoothstep(0.002, lay.nose_base_y - lay.mouth_y, above))
    lo_w = (f.lip_side < 0) * prof * (1.0 - smoothstep(0.004, 0.030, below))
    return f.vec(0.0, up * up_w - down * lo_w, -0.0008 * lo_w)


# -------------------------------------------------------------------- random fields


def _face_centres(frame: FaceFrame, rng: np.random.Generator, n: int) -> np.ndarray:
    cand = np.nonzero(frame.front & (frame.z > 0.03) & (frame.ax < 0.058)
                      & (frame.y > -0.100) & (frame.y < 0.065))[0]
    return frame.v[rng.choice(cand, size=n)]


def random_expression_fields(frame: FaceFrame, rng: np.random.Generator, count: int) -> np.ndarray:
    """[V, 3, count] smooth localised mixtures on the face, decaying in magnitude."""
    out = np.zeros((frame.n, 3, count))
    protect = frame.lid_protect * frame.front
    for k in range(count):
        field = frame.zeros()
        for _ in range(int(rng.integers(2, 5))):
            c = _face_centres(frame, rng, 1)[0]
            radius = rng.uniform(0.008, 0.020)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            w = np.exp(-np.sum((frame.v - c) ** 2, axis=1) / radius**2)
            if rng.random() < 0.5:  # mirrored pair: symmetric motion
                cm = c * np.array([-1.0, 1.0, 1.0])
                wm = np.exp(-np.sum((frame.v - cm) ** 2, axis=1) / radius**2)
                field += np.outer(w, direction) + np.outer(wm, direction * np.array([-1.0, 1.0, 1.0]))
            else:
                field += np.outer(w, direction)
        field *= protect[:, None]
        peak = np.abs(field).max() + 1e-12
        amplitude = 0.0022 * (1.0 + k / 8.0) ** -0.5
        out[:, :, k] = frame.finish(field * (amplitude / peak))
    return out


# --------------------------------------------------------------------- identity basis


def _semantic_shape_fields(frame: FaceFrame) -> list[np.ndarray]:
    f = frame
    lay = f.layout
    x, y, z, ax, sx = f.x, f.y, f.z, f.ax, f.sx
    front = smoothstep(-0.01, 0.04, z)
    fields = []
    fields.append(f.vec(0.06 * x, 0.0, 0.0))  # head width
    fields.append(f.vec(0.0, 0.05 * y, 0.03 * (z + 0.01)))  # head height/length
    lower = smoothstep(-0.015, -0.070, y)
    fields.append(f.vec(0.09 * x * lower, 0.0, 0.0))  # jaw width
    nose = nose_relief(x, y, lay) * front
    nose_zone = _g(x, y, 0.0, lay.nose_tip_y, 0.018, 0.030) * front
    fields.append(f.vec(0.10 * x * nose_zone, -0.0025 * nose_zone, 0.30 * nose))  # nose size
    eye_zone = _g(ax, y, lay.eye_x, lay.eye_y, 0.022, 0.020) * front
    fields.append(f.vec(0.0030 * sx * eye_zone, 0.0, 0.0))  # eye spacing
    lips = _g(x, y, 0.0, lay.mouth_y, 0.022, 0.009) * front
    fields.append(f.vec(0.0, -0.0015 * np.tanh(f.dy_slit / 0.004) * -lips, 0.0030 * lips))  # lips
    chin = _g(x, y, 0.0, lay.chin_y - 0.004, 0.018, 0.018) * front
    fields.append(f.vec(0.0, -0.0030 * chin, 0.0040 * chin))  # chin
    cheek = _g(ax, y, 0.048, lay.mouth_y + 0.015, 0.020, 0.025) * f.skin
    fields.append(f.vec(0.0030 * sx * cheek, 0.0, 0.0015 * cheek))  # cheek fullness
    forehead = smoothstep(lay.brow_y + 0.005, 0.105, y) * front
    fields.append(f.vec(0.0, 0.0, -0.0060 * forehead))  # forehead slope
    face = front * smoothstep(-0.120, -0.095, y) * (1.0 - smoothstep(0.04, 0.09, y))
    fields.append(f.vec(0.0, 0.0, 0.0040 * face))  # face depth
    return fields


def _random_shape_field(frame: FaceFrame, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Sum of a few Gaussian displacement bumps of width ~``scale`` anywhere on the head."""
    skin = np.nonzero(frame.skin)[0]
    field = frame.zeros()
    for _ in range(6):
        c = frame.v[rng.choice(skin)]
        direction = rng.normal(size=3)
        w = np.exp(-np.sum((frame.v - c) ** 2, axis=1) / scale**2)
        field += np.outer(w, direction)
    return field


def identity_basis(frame: FaceFrame, rng: np.random.Generator, n_shape: int) -> np.ndarray:
    """[V, 3, n_shape]: semantic components first, orthogonalised in order, then random
    smooth fields of decreasing width; per-vertex RMS ``SHAPE_SIGMA0 (k+1)^-0.6``."""
    mesh, lay = frame.mesh, frame.layout
    fields = _semantic_shape_fields(frame)[:n_shape]
    for k in range(len(fields), n_shape):
        # Later components are finer, like a PCA spectrum.
        scale = max(0.060 * (1.0 + k / 40.0) ** -0.5, 0.012)
        fields.append(_random_shape_field(frame, rng, scale))
    # Eyeballs move rigidly with the field at their centre and the skin around the
    # eyes blends into that motion, so lids keep hugging the eyes.
    dist = {s: np.hypot(frame.x - s * lay.eye_x, frame.y - lay.eye_y) for s in (+1, -1)}
    probes = {s: _probe(frame, lay.eye_centre(s)) for s in (+1, -1)}
    movable = frame.skin | (mesh.part == CAVITY) | (mesh.part == RIM_L) | (mesh.part == RIM_R)
    out = np.zeros((frame.n, 3, n_shape))
    for k, fld in enumerate(fields):
        fld = np.where(movable[:, None], fld, 0.0)
        for s, part in ((+1, EYE_L), (-1, EYE_R)):
            ids, wts = probes[s]
            centre_val = (fld[ids] * wts[:, None]).sum(0)
            w = (1.0 - smoothstep(0.016, 0.026, dist[s])) * (frame.sx == s) * (frame.z > 0.02)
            fld = fld * (1.0 - w[:, None]) + w[:, None] * centre_val
            fld[mesh.part == part] = centre_val
        out[:, :, k] = fld
    n_v = frame.n
    q = orthonormal_columns(out.reshape(-1, n_shape))
    sigma = SHAPE_SIGMA0 * (np.arange(n_shape) + 1.0) ** -SHAPE_DECAY
    return (q * sigma[None, :] * np.sqrt(n_v)).reshape(n_v, 3, n_shape)


def orthonormal_columns(a: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the columns of ``a`` [N, K] (K << N), as CholeskyQR2.

    Equal to the Q of the QR decomposition with a positive diagonal (column k keeps
    its direction and depends only on columns 0..k). Only matrix products and a
    K x K Cholesky written out here: LAPACK's threaded QR crawls on a busy machine.
    """
    q = a
    for _ in range(2):
        lower = _cholesky(q.T @ q)
        q = q @ _lower_inverse(lower).T
    return q


def _cholesky(g: np.ndarray) -> np.ndarray:
    n = len(g)
    low = np.zeros_like(g)
    for j in range(n):
        d = g[j, j] - low[j, :j] @ low[j, :j]
        if d <= 0:
            raise RuntimeError("procedural head: identity components are linearly dependent")
        low[j, j] = np.sqrt(d)
        low[j + 1:, j] = (g[j + 1:, j] - low[j + 1:, :j] @ low[j, :j]) / low[j, j]
    return low


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    n = len(low)
    inv = np.zeros_like(low)
    for i in range(n):
        inv[i, i] = 1.0 / low[i, i]
        inv[i, :i] = -(low[i, :i] @ inv[:i, :i]) / low[i, i]
    return inv


def _probe(frame: FaceFrame, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skin vertices and weights that sample a field near ``point`` (inverse distance)."""
    skin = np.nonzero(frame.skin)[0]
    d = np.linalg.norm(frame.v[skin] - point, axis=1)
    idx = np.argsort(d)[:12]
    w = 1.0 / (d[idx] + 1e-4)
    return skin[idx], w / w.sum()
