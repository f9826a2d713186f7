"""The skin surface: a smooth head-and-neck base plus facial relief.

The base is a family of meridian curves around a vertical axis, parametrised by
``t`` in [0, 1] (0 = crown, 1 = neck cut) and azimuth ``az`` (0 = straight ahead, +z;
+pi/2 = the subject's left, +x). At each ``t`` the horizontal cross-section is a
superellipse with separate front, side and back radii, so the face is flatter than
the back of the skull. Facial relief (brows, eye sockets, nose, lips, chin,
cheekbones, ears) is added on top as smooth height fields over the frontal
(x, y) plane; near each eye opening the skin is pulled onto a sphere just outside
the eyeball so the lids rest on the eye.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial import cKDTree

from dcnn_flame.flame.headgen.layout import Layout, smoothstep

# Meridian knots: t, front radius, side radius, back radius, front height, side
# height, back height, superellipse exponent. Radii are horizontal distances from
# the axis (x = 0, z = Layout.axis_z); heights are y. Row 0 is the crown (a pole).
_KNOTS = np.array([
    # t     front  side    back    y_front  y_side   y_back  n
    [0.00, 0.000, 0.000, 0.000, 0.1250, 0.1250, 0.1250, 2.00],
    [0.10, 0.046, 0.036, 0.046, 0.1180, 0.1200, 0.1180, 2.00],
    [0.20, 0.078, 0.064, 0.076, 0.0960, 0.1030, 0.0970, 2.05],
    [0.30, 0.092, 0.0745, 0.089, 0.0620, 0.0760, 0.0650, 2.15],
    [0.38, 0.097, 0.0775, 0.093, 0.0340, 0.0500, 0.0350, 2.30],
    [0.45, 0.097, 0.0765, 0.089, 0.0080, 0.0200, 0.0050, 2.45],
    [0.52, 0.095, 0.0735, 0.080, -0.0220, -0.0100, -0.0200, 2.50],
    [0.60, 0.093, 0.0665, 0.068, -0.0500, -0.0400, -0.0450, 2.45],
    [0.68, 0.089, 0.0590, 0.061, -0.0770, -0.0640, -0.0650, 2.35],
    [0.73, 0.081, 0.0545, 0.058, -0.0955, -0.0770, -0.0800, 2.25],
    [0.79, 0.058, 0.0515, 0.058, -0.1050, -0.0900, -0.0950, 2.15],
    [0.84, 0.046, 0.0505, 0.058, -0.1160, -0.1020, -0.1100, 2.10],
    [1.00, 0.045, 0.0510, 0.060, -0.1750, -0.1750, -0.1750, 2.10],
])
_SPLINES = [PchipInterpolator(_KNOTS[:, 0], _KNOTS[:, k]) for k in range(1, 8)]


def base_surface(t: np.ndarray, az: np.ndarray, layout: Layout) -> np.ndarray:
    """Points of the base head (no facial relief).

    Args:
        t: [...] meridian parameter in [0, 1] (0 = crown, 1 = neck cut).
        az: [...] azimuth in radians (0 = front, +pi/2 = subject's left).

    Returns:
        [..., 3] points in metres.
    """
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    az = np.asarray(az, dtype=np.float64)
    front, side, back, y_f, y_s, y_b, n = (s(t) for s in _SPLINES)
    c, s = np.cos(az), np.sin(az)
    depth = np.where(c >= 0.0, front, back)
    tiny = 1e-9
    rho = 1.0 / ((np.abs(s) / np.maximum(side, tiny)) ** n
                 + (np.abs(c) / np.maximum(depth, tiny)) ** n + tiny) ** (1.0 / n)
    rho = np.where(t <= 0.0, 0.0, rho)
    cf = np.maximum(c, 0.0) ** 2
    cb = np.maximum(-c, 0.0) ** 2
    y = y_s + (y_f - y_s) * cf + (y_b - y_s) * cb
    return np.stack([rho * s, y, layout.axis_z + rho * c], axis=-1)


def base_normals(t: np.ndarray, az: np.ndarray, layout: Layout) -> np.ndarray:
    """[..., 3] outward unit normals of :func:`base_surface` (finite differences)."""
    t = np.asarray(t, dtype=np.float64)
    az = np.asarray(az, dtype=np.float64)
    eps = 1e-4
    tc = np.clip(t, eps, 1.0 - eps)
    dt = base_surface(tc + eps, az, layout) - base_surface(tc - eps, az, layout)
    da = base_surface(tc, az + eps, layout) - base_surface(tc, az - eps, layout)
    n = np.cross(dt, da)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    # The crown is a pole of the parametrisation: its normal is straight up.
    near_pole = t < 2e-3
    n[near_pole] = np.array([0.0, 1.0, 0.0])
    return n


# --------------------------------------------------------------------- facial relief


def _g(x, y, cx, cy, sx, sy):
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


class EyeField:
    """Signed distance (metres, frontal plane) to both lid margins: < 0 inside the
    eye openings. Built once from the layout's lid polylines."""

    def __init__(self, layout: Layout, n: int = 400) -> None:
        upper, lower = layout.eye_opening(+1, n)
        self._ux, self._uy = upper[:, 0], upper[:, 1]
        self._lx, self._ly = lower[:, 0], lower[:, 1]
        pts = np.concatenate([upper, lower])
        pts = np.concatenate([pts, pts * np.array([-1.0, 1.0])])
        self._tree = cKDTree(pts)
        self.layout = layout

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ax = np.abs(x)
        lo_x, hi_x = self.layout.eye_inner_x, self.layout.eye_outer_x
        y_up = np.interp(ax, self._ux, self._uy)
        y_lo = np.interp(ax, self._lx, self._ly)
        return (ax > lo_x) & (ax < hi_x) & (y < y_up) & (y > y_lo)

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        d, _ = self._tree.query(np.stack([x.ravel(), y.ravel()], axis=1))
        d = d.reshape(x.shape)
        return np.where(self.inside(x, y), -d, d)

    def upper_side(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True above the line joining each eye's corners (upper-lid side)."""
        lay = self.layout
        ax = np.abs(x)
        s = (ax - lay.eye_inner_x) / (lay.eye_outer_x - lay.eye_inner_x)
        return y > lay.eye_inner_y + s * (lay.eye_outer_y - lay.eye_inner_y)


_NOSE_PROFILE = None


def _nose_profile() -> tuple[PchipInterpolator, PchipInterpolator]:
    """Nose height (in front of the face) and half-width as functions of y, both
    relative to the layout's default numbers (re-targeted in :func:`nose_relief`)."""
    global _NOSE_PROFILE
    if _NOSE_PROFILE is None:
        # y measured as fraction from root (0) to tip (1) to base (1.42), in the
        # default layout's proportions.
        u = np.array([-0.25, 0.0, 0.25, 0.55, 0.8, 0.93, 1.0, 1.08, 1.2, 1.32, 1.42, 1.55])
        h = np.array([0.0, 0.06, 0.28, 0.60, 0.86, 0.97, 1.0, 0.95, 0.72, 0.40, 0.17, 0.0])
        w = np.array([0.55, 0.52, 0.52, 0.58, 0.72, 0.88, 0.98, 1.05, 1.12, 1.08, 0.95, 0.85])
        _NOSE_PROFILE = (PchipInterpolator(u, h, extrapolate=True),
                         PchipInterpolator(u, w, extrapolate=True))
    return _NOSE_PROFILE


def nose_relief(x: np.ndarray, y: np.ndarray, lay: Layout) -> np.ndarray:
    """Height of the nose in front of the face at frontal (x, y)."""
    hp, wp = _nose_profile()
    u = (lay.nose_root_y - y) / (lay.nose_root_y - lay.nose_tip_y)
    uc = np.clip(u, -0.25, 1.55)
    inside = (u > -0.25) & (u < 1.55)
    h = np.where(inside, np.clip(hp(uc), 0.0, None), 0.0) * lay.nose_tip_height
    half = wp(uc) * 0.0105
    q = np.clip(np.abs(x) / half, 0.0, 1.0)
    # A rounded ridge: flat-topped near the midline, fading to 0 at +-half.
    cross = (1.0 - q**2) ** 2 * (1.0 + 0.6 * q**2)
    ridge = h * cross
    # Wings of the nose (alae): round pads beside the tip.
    ala = 0.0075 * _g(np.abs(x), y, lay.ala_x - 0.002, lay.nose_base_y + 0.0055, 0.0055, 0.0058)
    # Tip lobule: a softly rounded ball on the ridge.
    tip = 0.0035 * _g(x, y, 0.0, lay.nose_tip_y - 0.001, 0.0065, 0.0065)
    return np.maximum(ridge + tip, ala + 0.25 * ridge)


def lip_outline(x: np.ndarray, lay: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mouth slit height and the red-lip (vermilion) heights above/below it at x.

    Returns:
        (slit_y, upper_height, lower_height), each shaped like ``x``.
    """
    mw = lay.mouth_half_width
    slit_y = lay.mouth_y - 0.0008 * (1.0 - np.clip(x / mw, -1.0, 1.0) ** 2)
    u = np.clip(np.abs(x) / (mw + 0.002), 0.0, 1.0)
    span = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0))
    # Upper lip red: Cupid's bow (peaks at +-5.5 mm, a dip at the centre).
    bow = 1.0 + 0.12 * _g(np.abs(x), 0.0, 0.0055, 0.0, 0.004, 1.0) - 0.10 * _g(x, 0, 0, 0, 0.0025, 1)
    hu = lay.upper_lip_height * span**0.6 * bow + 1e-4
    hl = lay.lower_lip_height * span**0.7 + 1e-4
    return slit_y, hu, hl


def lip_relief(x: np.ndarray, y: np.ndarray, lay: Layout) -> np.ndarray:
    """Lips, muzzle, corners, philtrum, chin and the groove above the chin."""
    mw = lay.mouth_half_width
    slit_y, hu, hl = lip_outline(x, lay)
    span = np.sqrt(np.clip(1.0 - np.clip(np.abs(x) / (mw + 0.002), 0.0, 1.0) ** 2, 0.0, 1.0))
    su = (y - slit_y) / hu
    sl = (slit_y - y) / hl
    upper = (0.0052 * np.exp(-(((su - 0.45) / 0.60) ** 2))
             + 0.0007 * np.exp(-(((su - 1.0) / 0.15) ** 2))) * span**0.5
    lower = 0.0062 * np.exp(-(((sl - 0.48) / 0.62) ** 2)) * span**0.5
    lips = np.where(y >= slit_y, upper, lower)
    muzzle = 0.0095 * _g(x, y, 0.0, lay.mouth_y - 0.002, 0.030, 0.026)
    corners = -0.0022 * _g(np.abs(x), y, mw + 0.0015, lay.mouth_y, 0.0045, 0.0045)
    philtrum = -0.0007 * _g(x, y, 0.0, lay.mouth_y + 0.015, 0.0025, 0.006)
    chin = 0.0065 * _g(x, y, 0.0, lay.chin_y, 0.0150, 0.0125)
    groove = -0.0028 * _g(x, y, 0.0, lay.mouth_y - 0.0165, 0.0135, 0.0038)
    return lips + muzzle + corners + philtrum + chin + groove


def upper_face_relief(x: np.ndarray, y: np.ndarray, lay: Layout) -> np.ndarray:
    """Brow ridge, glabella, eye sockets, cheekbones, temples."""
    ax = np.abs(x)
    brow_line = lay.brow_y + 0.0025 * (1.0 - ((ax - 0.030) / 0.026) ** 2)
    brow = 0.0040 * np.exp(-(((y - brow_line) / 0.0070) ** 2)) * smoothstep(0.002, 0.016, ax) \
        * (1.0 - smoothstep(0.050, 0.064, ax))
    glabella = 0.0022 * _g(x, y, 0.0, lay.brow_y - 0.003, 0.012, 0.009)
    socket = -0.0080 * _g(ax, y, lay.eye_x + 0.0005, lay.eye_y + 0.0005, 0.0180, 0.0115)
    cheek = 0.0055 * _g(ax, y, 0.047, lay.eye_y - 0.022, 0.016, 0.012)
    under_eye = -0.0012 * _g(ax, y, lay.eye_x + 0.002, lay.eye_y - 0.013, 0.012, 0.004)
    temple = -0.0030 * _g(ax, y, 0.066, lay.eye_y + 0.018, 0.010, 0.016)
    return brow + glabella + socket + cheek + under_eye + temple


def ear_relief(y: np.ndarray, z: np.ndarray, lay: Layout) -> np.ndarray:
    """Outward (along the side normal) height of the ears, as a function of (y, z)."""
    v = (y - lay.ear_y) / 0.032
    w = (z - lay.ear_z) / 0.0185
    r = np.sqrt(v**2 + w**2)
    flap = 0.0120 * (1.0 - smoothstep(0.55, 1.05, r)) * (0.75 + 0.25 * np.clip(-w, -1.0, 1.0))
    helix = 0.0022 * np.exp(-(((r - 0.72) / 0.16) ** 2))
    concha = -0.0050 * np.exp(-(((v + 0.05) / 0.36) ** 2) - ((w - 0.15) / 0.40) ** 2)
    return np.maximum(flap + helix + concha, 0.0)


class SkinField:
    """Maps base-surface points to the final skin (base + facial relief + lids)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.eyes = EyeField(layout)

    def front_mask(self, base: np.ndarray, normal: np.ndarray) -> np.ndarray:
        return smoothstep(0.15, 0.55, normal[..., 2]) * smoothstep(-0.120, -0.100, base[..., 1])

    def relief(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lay = self.layout
        return upper_face_relief(x, y, lay) + nose_relief(x, y, lay) + lip_relief(x, y, lay)

    def lid_axes(self) -> np.ndarray:
        """[3] semi-axes of the ellipsoid the lid margins lie on (around the eyeball
        centre). Wider than tall so the corners can sit beside the eyeball; every
        axis exceeds ``eye_radius + lid_gap`` so the lids never cut the eye."""
        lay = self.layout
        r = lay.eye_radius + lay.lid_gap
        return np.array([r + 0.0055, r + 0.0008, r])

    def eye_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy) from the nearer eyeball centre in the frontal plane."""
        lay = self.layout
        side = np.where(x >= 0.0, 1.0, -1.0)
        return x - side * lay.eye_x, y - lay.eye_y

    def lid_z(self, x: np.ndarray, y: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """z of the skin hugging the eyeball at signed margin distance ``sd``."""
        lay = self.layout
        dx, dy = self.eye_coords(x, y)
        # Lids thicken from the margin outwards (thin margin, fleshy lid).
        axes = self.lid_axes()[None] * (1.0 + 0.10 * smoothstep(0.0, 0.004, sd))[..., None]
        e2 = (dx / axes[..., 0]) ** 2 + (dy / axes[..., 1]) ** 2
        # Past the ellipsoid's outline keep a floor so the blend below stays smooth.
        return lay.eye_z + axes[..., 2] * np.sqrt(1.0 - np.minimum(e2, 0.80))

    def lid_weight(self, sd: np.ndarray) -> np.ndarray:
        """1 where the skin follows the lids, 0 where the facial relief takes over."""
        return 1.0 - smoothstep(0.0008, 0.0060, sd)

    def __call__(self, base: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Skin points [..., 3] for base points and base normals [..., 3]."""
        lay = self.layout
        x, y, z = base[..., 0], base[..., 1], base[..., 2]
        mask = self.front_mask(base, normal)
        z_face = z + mask * self.relief(x, y)
        sd = self.eyes.signed_distance(x, y)
        w = self.lid_weight(sd) * mask
        z_new = (1.0 - w) * z_face + w * self.lid_z(x, y, sd)
        out = np.stack([x, y, z_new], axis=-1)
        side_w = smoothstep(0.55, 0.85, np.abs(normal[..., 0]))
        out = out + (side_w * ear_relief(y, z, lay))[..., None] * normal
        return out
