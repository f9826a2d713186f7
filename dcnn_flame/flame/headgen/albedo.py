"""Procedural albedo in the head's UV space: a mean texture and a linear basis.

Every texel is painted from the 3-D rest position it maps to (found by rasterising
the UV layout), so the texture follows the geometry: skin, darker brows and lash
lines, red lips, nostrils, short dark hair, pink lid rims, white sclera with a
coloured iris and black pupil, a dark red mouth interior with teeth.
"""
from __future__ import annotations

import numpy as np

from dcnn_flame.flame.headgen.layout import Layout, smoothstep
from dcnn_flame.flame.headgen.mesh import CAVITY, EYE_L, EYE_R, RIM_L, RIM_R, SKIN, HeadMesh
from dcnn_flame.flame.headgen.raster import fill_empty, rasterize
from dcnn_flame.flame.headgen.surface import EyeField, lip_outline

#: Names of the albedo basis components (coefficient ~N(0, 1) each).
ALBEDO_COMPONENT_NAMES: tuple[str, ...] = (
    "skin lightness",
    "skin hue (red-yellow vs. cool)",
    "cheek and nose redness",
    "lip colour",
    "brow darkness",
    "hair lightness",
    "iris colour (brown to blue)",
    "skin mottling 1",
    "skin mottling 2",
    "periorbital darkness",
)

SKIN_RGB = np.array([0.80, 0.60, 0.49])
LIP_RGB = np.array([0.70, 0.36, 0.36])
BROW_RGB = np.array([0.22, 0.15, 0.11])
HAIR_RGB = np.array([0.20, 0.14, 0.10])
RIM_RGB = np.array([0.74, 0.44, 0.42])
SCLERA_RGB = np.array([0.93, 0.91, 0.88])
IRIS_RGB = np.array([0.38, 0.24, 0.13])
MOUTH_RGB = np.array([0.52, 0.22, 0.22])
THROAT_RGB = np.array([0.12, 0.03, 0.03])
TEETH_RGB = np.array([0.88, 0.86, 0.80])


class _Texels:
    """Rest-pose attributes of every texel, interpolated from the mesh."""

    def __init__(self, mesh: HeadMesh, size: int) -> None:
        uv = mesh.uv_coords
        pix = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)
        fid, bary = rasterize(pix, None, mesh.uv_faces, size, size)
        valid = fid >= 0
        # Pad across island borders so bilinear lookups never hit empty texels.
        fid = fill_empty(fid, valid)
        bary = fill_empty(bary, valid)
        corners = mesh.faces[fid]  # [H, W, 3]
        self.p = (mesh.vertices[corners] * bary[..., None]).sum(-2)
        self.depth = (mesh.depth[corners] * bary).sum(-1)
        part_of_face = mesh.part[mesh.faces].max(1)
        self.part = part_of_face[fid]
        self.valid = valid


def _g(x, y, cx, cy, sx, sy):
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


def _masks(tex: _Texels, lay: Layout) -> dict[str, np.ndarray]:
    x, y, z = tex.p[..., 0], tex.p[..., 1], tex.p[..., 2]
    ax = np.abs(x)
    skin = (tex.part == SKIN).astype(np.float64)
    front = skin * smoothstep(0.0, 0.02, z)
    m = {"skin": skin}
    slit_y, hu, hl = lip_outline(x, lay)
    dy = y - slit_y
    edge = 0.0006
    inside_x = smoothstep(lay.mouth_half_width + 0.0012, lay.mouth_half_width - 0.0006, ax)
    up = smoothstep(hu + edge, hu - edge, dy) * smoothstep(-edge, 0.0, dy)
    lo = smoothstep(hl + edge, hl - edge, -dy) * smoothstep(-edge, 0.0, -dy)
    m["lips"] = np.clip(up + lo, 0.0, 1.0) * inside_x * front
    line = lay.brow_line(ax)
    half = 0.0034 - 0.0012 * smoothstep(0.015, 0.055, ax)
    along = smoothstep(0.009, 0.014, ax) * smoothstep(0.058, 0.050, ax)
    m["brows"] = 0.92 * smoothstep(half + 0.0012, half - 0.0010, np.abs(y - line)) * along * front
    sd = EyeField(lay).signed_distance(x, y)
    upper = EyeField(lay).upper_side(x, y)
    lash_w = np.where(upper, 0.0012, 0.0005)
    m["lashes"] = smoothstep(lash_w + 0.0004, lash_w - 0.0002, sd) * (sd > -0.0005) * front
    m["periorbital"] = np.exp(-((np.clip(sd, 0, None) - 0.004) / 0.004) ** 2) * front
    nostril = _g(ax, y, 0.0060, lay.nose_base_y + 0.0026, 0.0027, 0.0017)
    underside = smoothstep(lay.nose_tip_height * 0.55, lay.nose_tip_height * 0.35, z - 0.083)
    m["nostrils"] = nostril * underside * front
    m["cheeks"] = (_g(ax, y, 0.043, lay.eye_y - 0.028, 0.016, 0.014)
                   + 0.5 * _g(x, y, 0.0, lay.nose_tip_y, 0.009, 0.010)) * front
    az = np.arctan2(x, z + 0.015)
    c = np.cos(az)
    hairline = 0.047 + 0.041 * np.clip(c, 0, None) ** 1.5 - 0.095 * np.clip(-c, 0, None)
    # Leave the ears out of the hair.
    ear = _g(y, z, lay.ear_y, lay.ear_z, 0.036, 0.024) * smoothstep(0.055, 0.07, ax)
    m["hair"] = smoothstep(hairline - 0.003, hairline + 0.004, y) * skin * (1.0 - ear)
    return m


def _random_field(p: np.ndarray, rng: np.random.Generator, n: int = 12, scale: float = 0.03) -> np.ndarray:
    """Smooth scalar field in about [-1, 1]: random sinusoids of the 3-D position."""
    out = np.zeros(p.shape[:-1])
    for _ in range(n):
        k = rng.normal(size=3) / scale
        out += np.sin(p @ k + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(n / 2.0)


def _eye_colours(tex: _Texels, lay: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Eyeball colours and the iris mask."""
    rgb = np.zeros(tex.p.shape)
    iris_mask = np.zeros(tex.p.shape[:-1])
    for part, side in ((EYE_L, +1), (EYE_R, -1)):
        m = tex.part == part
        d = tex.p[m] - lay.eye_centre(side)
        polar = np.degrees(np.arccos(np.clip(d[:, 2] / (np.linalg.norm(d, axis=1) + 1e-12), -1, 1)))
        around = np.arctan2(d[:, 1], d[:, 0])
        iris = smoothstep(30.5, 28.5, polar)
        pupil = smoothstep(10.5, 9.0, polar)
        limbus = np.exp(-((polar - 28.5) / 1.8) ** 2)
        streaks = 0.85 + 0.15 * np.sin(37.0 * around) * np.sin(11.0 * around + 1.0)
        sclera = SCLERA_RGB - np.array([0.0, 0.06, 0.06]) * smoothstep(60.0, 110.0, polar)[:, None]
        col = sclera * (1 - iris)[:, None] + (IRIS_RGB * streaks[:, None]) * iris[:, None]
        col = col * (1.0 - 0.55 * limbus)[:, None]
        col = col * (1 - pupil)[:, None] + 0.03 * pupil[:, None]
        rgb[m] = col
        iris_mask[m] = iris * (1 - pupil)
    return rgb, iris_mask


def albedo_maps(mesh: HeadMesh, lay: Layout, rng: np.random.Generator, size: int = 256,
                n_basis: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean albedo [H, W, 3] and basis [H, W, 3, K] (float32; mean in [0, 1])."""
    tex = _Texels(mesh, size)
    m = _masks(tex, lay)
    skin = m["skin"][..., None]
    skin_rgb = np.broadcast_to(SKIN_RGB, tex.p.shape).copy()
    skin_rgb += m["cheeks"][..., None] * np.array([0.05, -0.015, -0.012])
    skin_rgb = skin_rgb * (1 - m["periorbital"][..., None] * 0.06)
    for key, rgb in (("lips", LIP_RGB), ("brows", BROW_RGB), ("hair", HAIR_RGB)):
        skin_rgb = skin_rgb * (1 - m[key][..., None]) + rgb * m[key][..., None]
    skin_rgb = skin_rgb * (1 - 0.75 * m["lashes"][..., None])
    skin_rgb = skin_rgb * (1 - 0.45 * m["nostrils"][..., None])
    rgb = skin * skin_rgb
    rim = ((tex.part == RIM_L) | (tex.part == RIM_R))[..., None]
    rgb = np.where(rim, RIM_RGB, rgb)
    eye_rgb, iris = _eye_colours(tex, lay)
    eyes = ((tex.part == EYE_L) | (tex.part == EYE_R))[..., None]
    rgb = np.where(eyes, eye_rgb, rgb)
    cav = (tex.part == CAVITY)[..., None]
    deep = smoothstep(1.0, 4.0, tex.depth)[..., None]
    mouth = MOUTH_RGB * (1 - deep) + THROAT_RGB * deep
    teeth = (np.exp(-((tex.depth - 1.8) / 0.45) ** 2)
             * smoothstep(0.80 * lay.mouth_half_width, 0.55 * lay.mouth_half_width, np.abs(tex.p[..., 0])))
    mouth = mouth * (1 - teeth[..., None]) + TEETH_RGB * teeth[..., None]
    rgb = np.where(cav, mouth, rgb)
    mean = np.clip(rgb, 0.0, 1.0)

    fields = [
        skin * skin_rgb * 0.10 * (1 - m["hair"][..., None]),
        skin * np.array([0.030, 0.0, -0.030]) * (1 - m["hair"][..., None]),
        m["cheeks"][..., None] * np.array([0.045, -0.015, -0.010]),
        m["lips"][..., None] * np.array([0.06, -0.04, -0.03]),
        m["brows"][..., None] * np.array([-0.07, -0.06, -0.05]),
        m["hair"][..., None] * np.array([0.08, 0.06, 0.04]),
        iris[..., None] * np.array([-0.08, 0.06, 0.15]),
        (skin * (1 - m["hair"][..., None])) * _random_field(tex.p, rng)[..., None] * np.array([0.020, 0.015, 0.012]),
        (skin * (1 - m["hair"][..., None])) * _random_field(tex.p, rng, scale=0.015)[..., None]
        * np.array([0.015, -0.008, 0.0]),
        m["periorbital"][..., None] * np.array([-0.04, -0.045, -0.035]),
    ]
    basis = np.stack([np.broadcast_to(f, mean.shape) for f in fields[:n_basis]], axis=-1)
    return mean.astype(np.float32), basis.astype(np.float32)
