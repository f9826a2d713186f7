"""The synthetic face world: procedural identities rendered in four views with exact ground truth.

One *identity* = a random shape code and albedo code of the procedural FLAME-format head,
seen in ``num_views`` views. Each view samples independently:

- head pose: yaw, pitch, roll uniform in +-(60, 30, 10) degrees (``R = R_y R_x R_z``, the
  decomposition whose yaw FlameLayer reports), split into a small neck rotation and the
  global rotation that completes it; both eyes gaze together by a small random rotation;
- an expression class c of AffectNet-8 (uniform or ``class_weights``); the view's AUs are
  the class's prototype profile (``generation.emotions.default_bank``) times an intensity
  uniform in [0.5, 1], plus Gaussian noise, clipped to [0, 1] (neutral: small noise only).
  The AU vector stored is exactly the one that drove the face. The AU map
  (``flame.au_map.AUExpressionMap``) turns it into expression components and a jaw rotation;
  the components beyond the 17 AU ones get small Gaussian values and the jaw a little noise;
- lighting: an ambient term plus one distant light from the front hemisphere, projected to
  the renderer's 27 SH coefficients (:func:`sh_from_lights`), slightly tinted;
- camera: orthographic (scale, tx, ty) chosen so the 68-landmark box fills 65-80% of the
  image with a small offset, like aligned face crops;
- background: a uniform colour, a linear gradient or smooth colour blobs, plus pixel noise.

Ground truth per view: FLAME shape/expression/pose, vertices, the camera, the SH light,
the albedo code, 68 landmarks projected to pixels (x right, y down, pixel centres at +0.5,
as :func:`dcnn_flame.render.camera.to_pixels`), the 17 AU intensities and the class.

Determinism: everything an identity samples comes from NumPy generators seeded by
(seed, identity index[, view]) alone, and each identity is rendered as its own batch, so
any subset of identities, generated in any order or process, reproduces exactly. The image
size only changes the background noise draws (their own generator), not the face.

Writing Parquet shards (``jobs/prepare.py source=synthetic``) lives in
:mod:`dcnn_flame.data.synthetic_shards`.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from dcnn_flame.config import SyntheticConfig
from dcnn_flame.constants import (
    EXPRESSION_CLASSES,
    NUM_AUS,
    NUM_EXPRESSION_CLASSES,
    SH_COEFFS,
)
from dcnn_flame.data import schema
from dcnn_flame.flame.data import FlameModelData

__all__ = [
    "IdentityParams",
    "SyntheticIdentity",
    "SyntheticWorld",
    "affectnet_au_prototypes",
    "background_image",
    "generate_identities",
    "identity_name",
    "prepare",
    "procedural_head",
    "sh_from_lights",
    "world_for",
    "write_synthetic_shards",
]

#: Value of ``source`` in the shards.
SOURCE = "synthetic"

# Stream ids of the per-identity generators (never reorder: they fix the data).
_IDENTITY_STREAM = 0
_VIEW_STREAM = 1
_BACKGROUND_STREAM = 2
_FREE_AU_STREAM = 3


def identity_name(seed: int, index: int) -> str:
    """Identity string of identity ``index`` of the world with ``seed`` (stable, sortable)."""
    return f"synth{seed}_{index:07d}"


def affectnet_au_prototypes() -> np.ndarray:
    """[8, 17] float32 AU prototype of each AffectNet-8 class (EXPRESSION_CLASSES order),
    from the studio expression bank (``generation.emotions.default_bank``)."""
    from dcnn_flame.generation.emotions import AFFECTNET_BANK_NAMES, default_bank

    return default_bank().matrix(list(AFFECTNET_BANK_NAMES))


# ----------------------------------------------------------------------------- lighting


def sh_from_lights(ambient: np.ndarray, strength: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Renderer SH coefficients of an ambient term plus one distant light.

    With radiance ``ambient / pi`` from every direction and a distant light of strength
    ``I`` from unit direction ``d`` (eye frame: x right, y up, z towards the camera), the
    Lambertian irradiance in the renderer's convention (:mod:`dcnn_flame.render.shading`:
    band 0 scales ``y_00`` directly, bands 1-2 carry the factors A_1, A_2) is

        E(n) = ambient + I * (1/4 + (1/2) n.d + (5/16) P_2(n.d)),

    the order-2 SH approximation of ``ambient + I * max(0, n.d)``: E(d) = ambient + 1.0625 I,
    E(-d) = ambient + 0.0625 I.

    Args:
        ambient: [..., 3] RGB ambient irradiance.
        strength: [..., 3] RGB strength of the light.
        direction: [..., 3] direction towards the light (normalised here).

    Returns:
        [..., 9, 3] coefficients (band-major, RGB last; ``reshape(..., 27)`` for the
        renderer and the ``gt_light`` column).
    """
    from dcnn_flame.render.shading import SH_CONSTANTS

    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    polys = np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1)
    a1, a2 = 2.0 * math.pi / 3.0, math.pi / 4.0
    # y_lm(d) = SH_CONSTANTS[k] / A_l * poly_k(d); the light's coefficient is I * y_lm(d).
    ylm = polys * np.asarray(SH_CONSTANTS) / np.asarray([1.0, a1, a1, a1, a2, a2, a2, a2, a2])
    coeffs = np.asarray(strength, dtype=np.float64)[..., None, :] * ylm[..., :, None]
    # Band 0 carries A_0 = pi itself (the renderer's basis omits it): pi * L_00, where
    # L_00 = ambient / pi * sqrt(4 pi) + I * y_00(d).
    coeffs[..., 0, :] = np.asarray(ambient, dtype=np.float64) * math.sqrt(4.0 * math.pi) + math.pi * coeffs[..., 0, :]
    return coeffs


# --------------------------------------------------------------------------- background


def background_image(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """A random background: uniform colour, linear gradient or smooth blobs, plus noise.

    Args:
        rng: the view's background generator (all draws come from it, in a fixed order).
        size: image height = width.
        noise: largest per-pixel noise standard deviation.

    Returns:
        [size, size, 3] float32 in [0, 1].
    """
    kind = int(rng.integers(3))
    colours = rng.uniform(0.0, 1.0, size=(2, 3))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    cells = int(rng.integers(2, 6))
    grid = rng.uniform(0.0, 1.0, size=(cells, cells, 3))
    sigma = rng.uniform(0.0, noise)
    coords = (np.arange(size) + 0.5) / size - 0.5
    if kind == 0:
        img = np.broadcast_to(colours[0], (size, size, 3))
    elif kind == 1:
        t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        img = colours[0] * (1.0 - t[..., None]) + colours[1] * t[..., None]
    else:
        small = torch.from_numpy(grid.transpose(2, 0, 1)[None].astype(np.float32))
        img = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=True)[0]
        img = img.numpy().transpose(1, 2, 0).astype(np.float64)
    img = img + sigma * rng.standard_normal((size, size, 3))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------ samples


@dataclass
class IdentityParams:
    """Everything sampled for one identity (NumPy; V = views, before rendering).

    Attributes:
        index: identity index in the world.
        identity: :func:`identity_name`.
        shape: [S] identity shape code.
        albedo: [K] albedo code.
        expression_class: [V] int64 AffectNet-8 class; -1 for a free-AU view (no class, see
            ``SyntheticConfig.free_au_fraction``).
        au: [V, 17] float32 AU intensities in [0, 1] (exactly what drives the face).
        expr_extra: [V, E - 17] expression components beyond the AU ones.
        jaw_noise: [V, 3] axis-angle added to the AU map's jaw rotation.
        head_angles: [V, 3] yaw, pitch, roll of the head in degrees.
        global_pose: [V, 3] axis-angle of the global joint.
        neck_pose: [V, 3] axis-angle of the neck (global then neck = the head rotation).
        eye_pose: [V, 3] axis-angle of both eyes.
        face_fill: [V] landmark-box size / image size.
        center_offset: [V, 2] landmark-box centre offset in NDC (x right, y up).
        light: [V, 9, 3] SH coefficients.
        background: [V, H, W, 3] float32 background image.
    """

    index: int
    identity: str
    shape: np.ndarray
    albedo: np.ndarray
    expression_class: np.ndarray
    au: np.ndarray
    expr_extra: np.ndarray
    jaw_noise: np.ndarray
    head_angles: np.ndarray
    global_pose: np.ndarray
    neck_pose: np.ndarray
    eye_pose: np.ndarray
    face_fill: np.ndarray
    center_offset: np.ndarray
    light: np.ndarray
    background: np.ndarray


@dataclass
class SyntheticIdentity:
    """One rendered identity (NumPy, float32 unless noted; V views of H x W pixels).

    Attributes:
        index, identity: as :class:`IdentityParams`.
        images: [V, H, W, 3] uint8 RGB.
        mask: [V, H, W] bool, True where the head covers the pixel centre.
        depth: [V, H, W] view depth of the visible surface (``-z``; smaller = closer), 0 off
            the head.
        landmarks: [V, 68, 2] pixel coordinates (x right, y down, centres at +0.5).
        landmarks3d: [V, 68, 3] landmarks on the posed mesh (metres, FLAME frame).
        au: [V, 17]; expression_class: [V] int64.
        shape: [S]; albedo: [K]; expression: [V, E]; pose: [V, 15] (global, neck, jaw,
            eyes); camera: [V, 3] orthographic (scale, tx, ty); light: [V, 27] SH.
        vertices: [V, N, 3] posed mesh (metres, FLAME frame, before the camera).
        head_yaw: [V] yaw in degrees as FlameLayer reports it.
    """

    index: int
    identity: str
    images: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    landmarks: np.ndarray
    landmarks3d: np.ndarray
    au: np.ndarray
    expression_class: np.ndarray
    shape: np.ndarray
    albedo: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    camera: np.ndarray
    light: np.ndarray
    vertices: np.ndarray
    head_yaw: np.ndarray

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    def to_row(self, split: str, store_vertices: bool = True) -> dict[str, Any]:
        """The sample as one row of :data:`dcnn_flame.data.schema.SAMPLE_SCHEMA`."""
        v = self.num_views
        size = float(self.images.shape[1])
        lmk = self.landmarks.astype(np.float32)
        return {
            "schema_version": schema.SCHEMA_VERSION,
            "sample_id": f"{SOURCE}/{self.identity}/00000",
            "identity": self.identity,
            "source": SOURCE,
            "split": split,
            "num_views": v,
            "image_uri": [""] * v,
            "image": [schema.encode_png(self.images[i]) for i in range(v)],
            "landmarks": [lmk[i].reshape(-1).tolist() for i in range(v)],
            "landmarks5": [schema.landmarks5_from_68(lmk[i]).astype(np.float32).reshape(-1).tolist()
                           for i in range(v)],
            "landmark_source": ["ground_truth"] * v,
            "crop_box": [[0.0, 0.0, size, size]] * v,
            "au": [self.au[i].astype(np.float32).tolist() for i in range(v)],
            "expression_class": [int(c) for c in self.expression_class],
            "gt_shape": [self.shape.astype(np.float32).tolist()] * v,
            "gt_expression": [self.expression[i].astype(np.float32).tolist() for i in range(v)],
            "gt_pose": [self.pose[i].astype(np.float32).tolist() for i in range(v)],
            "gt_camera": [self.camera[i].astype(np.float32).tolist() for i in range(v)],
            "gt_light": [self.light[i].astype(np.float32).tolist() for i in range(v)],
            "gt_albedo": [self.albedo.astype(np.float32).tolist()] * v,
            "gt_vertices": ([schema.vertices_to_bytes(self.vertices[i]) for i in range(v)]
                            if store_vertices else None),
        }


def _range(values: list[float], name: str) -> tuple[float, float]:
    if len(values) != 2 or not values[0] <= values[1]:
        raise ValueError(f"synthetic.{name} must be [low, high] with low <= high, got {list(values)}")
    return float(values[0]), float(values[1])


def _class_probabilities(weights: Optional[list[float]]) -> np.ndarray:
    if weights is None:
        return np.full(NUM_EXPRESSION_CLASSES, 1.0 / NUM_EXPRESSION_CLASSES)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (NUM_EXPRESSION_CLASSES,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"synthetic.class_weights must be {NUM_EXPRESSION_CLASSES} non-negative numbers "
                         f"(one per class of {EXPRESSION_CLASSES}) with a positive sum, got {weights}")
    return w / w.sum()


class SyntheticWorld:
    """Samples and renders identities of the synthetic world (CPU, vectorised per identity).

    Args:
        cfg: sampling settings (:class:`dcnn_flame.config.SyntheticConfig`).
        data: the head model; None = ``build_procedural_flame(seed=cfg.procedural_seed)``.
            It must carry the procedural extras (albedo_mean, albedo_basis and the AU map).
        num_views: views per identity.
    """

    def __init__(self, cfg: SyntheticConfig | None = None, data: FlameModelData | None = None,
                 num_views: int = 4) -> None:
        from dcnn_flame.flame.au_map import AUExpressionMap
        from dcnn_flame.flame.layer import FlameLayer
        from dcnn_flame.render import Renderer, RendererConfig

        self.cfg = cfg = cfg or SyntheticConfig()
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if cfg.image_size < 16:
            raise ValueError(f"synthetic.image_size must be >= 16 pixels, got {cfg.image_size}")
        if cfg.n_expr < NUM_AUS:
            raise ValueError(f"synthetic.n_expr={cfg.n_expr} but the 17 AU components need n_expr >= {NUM_AUS}")
        self.num_views = int(num_views)
        self.au_range = _range(cfg.au_intensity, "au_intensity")
        if not 0.0 <= cfg.free_au_fraction <= 1.0 or not 0.0 < cfg.free_au_rate <= 1.0:
            raise ValueError(f"synthetic.free_au_fraction must be in [0, 1] and free_au_rate in (0, 1], got "
                             f"{cfg.free_au_fraction} and {cfg.free_au_rate}")
        self.fill_range = _range(cfg.face_fill, "face_fill")
        self.ambient_range = _range(cfg.ambient, "ambient")
        self.light_range = _range(cfg.directional, "directional")
        self.class_probs = _class_probabilities(cfg.class_weights)
        self.prototypes = affectnet_au_prototypes().astype(np.float64)

        if data is None:
            data = procedural_head(cfg.procedural_seed)
        missing = [k for k in ("albedo_mean", "albedo_basis") if k not in data.extras]
        if missing or data.uv_coords is None or data.uv_faces is None or data.landmarks is None:
            raise ValueError(
                f"the head model '{data.source or data.edition}' lacks what the synthetic world needs "
                f"(UVs, landmarks and extras albedo_mean/albedo_basis; missing extras: {missing}); "
                "use the procedural head (build_procedural_flame)")
        self.data = data
        self.flame = FlameLayer(data, n_shape=cfg.n_shape, n_expr=cfg.n_expr, dynamic_contour=True)
        self.au_map = AUExpressionMap.from_model_data(data)
        with torch.no_grad():
            probe, _ = self.au_map(torch.eye(NUM_AUS))
        if probe.shape[1] > cfg.n_expr and probe[:, cfg.n_expr:].abs().max() > 0:
            raise ValueError(f"the AU map drives expression components beyond n_expr={cfg.n_expr}; "
                             "raise synthetic.n_expr")
        mean = np.asarray(data.extras["albedo_mean"], dtype=np.float32)  # [Ht, Wt, 3]
        basis = np.asarray(data.extras["albedo_basis"], dtype=np.float32)  # [Ht, Wt, 3, K]
        self.albedo_mean = torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1)))
        # Channel-major like the mean, so mean + basis @ code adds texel by texel.
        self.albedo_basis = torch.from_numpy(
            np.ascontiguousarray(basis.transpose(2, 0, 1, 3).reshape(-1, basis.shape[-1])))
        self.num_albedo = int(basis.shape[-1])
        self.renderer = Renderer(
            torch.as_tensor(data.faces, dtype=torch.int64),
            torch.as_tensor(data.uv_coords, dtype=torch.float32),
            torch.as_tensor(data.uv_faces, dtype=torch.int64),
            RendererConfig(image_size=cfg.image_size, antialias=cfg.antialias))

    # ------------------------------------------------------------------- sampling
    def sample(self, seed: int, index: int) -> IdentityParams:
        """Draw identity ``index`` of the world ``seed`` (depends on nothing else)."""
        from scipy.spatial.transform import Rotation

        cfg, nv = self.cfg, self.num_views
        if seed < 0 or index < 0:
            raise ValueError(f"seed and identity index must be >= 0, got seed={seed}, index={index}")
        rng = np.random.default_rng([seed, index, _IDENTITY_STREAM])
        shape = rng.standard_normal(cfg.n_shape) * cfg.shape_scale
        albedo = rng.standard_normal(self.num_albedo) * cfg.albedo_scale

        classes = np.zeros(nv, np.int64)
        au = np.zeros((nv, NUM_AUS))
        extra = np.zeros((nv, cfg.n_expr - NUM_AUS))
        jaw = np.zeros((nv, 3))
        angles = np.zeros((nv, 3))
        glob = np.zeros((nv, 3))
        neck = np.zeros((nv, 3))
        eyes = np.zeros((nv, 3))
        fill = np.zeros(nv)
        offset = np.zeros((nv, 2))
        ambient = np.zeros((nv, 3))
        strength = np.zeros((nv, 3))
        direction = np.zeros((nv, 3))
        backgrounds = np.zeros((nv, cfg.image_size, cfg.image_size, 3), np.float32)
        for v in range(nv):
            r = np.random.default_rng([seed, index, _VIEW_STREAM, v])
            c = int(r.choice(NUM_EXPRESSION_CLASSES, p=self.class_probs))
            scale = r.uniform(*self.au_range)
            noise = r.standard_normal(NUM_AUS)
            if EXPRESSION_CLASSES[c] == "neutral":
                au[v] = np.clip(noise * cfg.neutral_au_noise, 0.0, 1.0)
            else:
                au[v] = np.clip(self.prototypes[c] * scale + noise * cfg.au_noise, 0.0, 1.0)
            if cfg.free_au_fraction > 0.0:
                # own stream: worlds without free-AU views draw exactly what they always drew
                f = np.random.default_rng([seed, index, _FREE_AU_STREAM, v])
                if f.random() < cfg.free_au_fraction:
                    active = f.random(NUM_AUS) < cfg.free_au_rate
                    au[v] = np.where(active, f.uniform(*self.au_range, NUM_AUS), 0.0)
                    c = -1
            classes[v] = c
            extra[v] = r.standard_normal(cfg.n_expr - NUM_AUS) * cfg.expr_noise
            jaw[v] = np.deg2rad(r.standard_normal(3) * cfg.jaw_noise_deg)
            angles[v] = r.uniform(-1.0, 1.0, 3) * [cfg.max_yaw_deg, cfg.max_pitch_deg, cfg.max_roll_deg]
            head = Rotation.from_euler("YXZ", angles[v], degrees=True)
            neck_rot = Rotation.from_rotvec(np.deg2rad(r.uniform(-1.0, 1.0, 3) * cfg.max_neck_deg))
            glob[v] = (head * neck_rot.inv()).as_rotvec()
            neck[v] = neck_rot.as_rotvec()
            gaze = r.uniform(-1.0, 1.0, 2) * cfg.max_gaze_deg
            eyes[v] = Rotation.from_euler("YX", gaze, degrees=True).as_rotvec()
            fill[v] = r.uniform(*self.fill_range)
            offset[v] = r.uniform(-1.0, 1.0, 2) * (2.0 * cfg.center_jitter)
            tint = 1.0 + r.uniform(-1.0, 1.0, (2, 3)) * cfg.light_tint
            ambient[v] = r.uniform(*self.ambient_range) * tint[0]
            strength[v] = r.uniform(*self.light_range) * tint[1]
            az = np.deg2rad(r.uniform(-70.0, 70.0))
            el = np.deg2rad(r.uniform(-30.0, 60.0))
            direction[v] = [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
            bg_rng = np.random.default_rng([seed, index, _BACKGROUND_STREAM, v])
            backgrounds[v] = background_image(bg_rng, cfg.image_size, cfg.background_noise)
        return IdentityParams(
            index=int(index), identity=identity_name(seed, index), shape=shape, albedo=albedo,
            expression_class=classes, au=au.astype(np.float32), expr_extra=extra, jaw_noise=jaw,
            head_angles=angles, global_pose=glob, neck_pose=neck, eye_pose=eyes, face_fill=fill,
            center_offset=offset, light=sh_from_lights(ambient, strength, direction), background=backgrounds)

    # ------------------------------------------------------------------ rendering
    def albedo_map(self, code: torch.Tensor) -> torch.Tensor:
        """[K] albedo code -> [1, 3, Ht, Wt] UV albedo in [0, 1]."""
        flat = self.albedo_mean.reshape(-1) + self.albedo_basis @ code.to(self.albedo_basis.dtype)
        return flat.reshape(1, *self.albedo_mean.shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def render(self, params: IdentityParams, camera: Optional[torch.Tensor] = None) -> SyntheticIdentity:
        """Pose, light and render one identity's views.

        Args:
            params: from :meth:`sample` (or a modified copy).
            camera: optional [V, 3] orthographic cameras (scale, tx, ty) to use instead of
                framing each view's own landmark box (e.g. the cameras of another rendering
                of the same views, so that two renders differ only in the face).
        """
        from dcnn_flame.render.camera import project_landmarks

        nv = params.au.shape[0]
        f32 = torch.float32
        au = torch.from_numpy(params.au).to(f32)
        expr_map, jaw_map = self.au_map(au)
        expression = expr_map[:, : self.cfg.n_expr].to(f32).clone()
        expression[:, NUM_AUS:] += torch.from_numpy(params.expr_extra).to(f32)
        jaw = jaw_map.to(f32) + torch.from_numpy(params.jaw_noise).to(f32)
        pose = torch.cat([torch.from_numpy(params.global_pose).to(f32), torch.from_numpy(params.neck_pose).to(f32),
                          jaw, torch.from_numpy(params.eye_pose).to(f32).repeat(1, 2)], dim=1)
        shape = torch.from_numpy(params.shape).to(f32).unsqueeze(0).expand(nv, -1)
        out = self.flame(shape=shape, expression=expression, pose=pose)

        # Orthographic camera from the landmark box: x_ndc = s (x + tx), so the box's larger
        # side spans 2 * fill NDC units and its centre lands at the sampled offset.
        if camera is None:
            xy = out.landmarks[..., :2]
            lo, hi = xy.amin(dim=1), xy.amax(dim=1)
            scale = 2.0 * torch.from_numpy(params.face_fill).to(f32) / (hi - lo).amax(dim=1)
            trans = torch.from_numpy(params.center_offset).to(f32) / scale[:, None] - 0.5 * (lo + hi)
            camera = torch.cat([scale[:, None], trans], dim=1)
        else:
            camera = torch.as_tensor(camera, dtype=f32)
            if camera.shape != (nv, 3):
                raise ValueError(f"camera must be [{nv}, 3] (scale, tx, ty per view), got {tuple(camera.shape)}")

        sh = torch.from_numpy(params.light.reshape(nv, SH_COEFFS)).to(f32)
        background = torch.from_numpy(params.background).permute(0, 3, 1, 2).contiguous()
        rendered = self.renderer(out.vertices, camera, self.albedo_map(torch.from_numpy(params.albedo)), sh,
                                 background=background)
        pixels, _ = project_landmarks(out.landmarks, camera, self.cfg.image_size)
        images = (rendered.image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
        return SyntheticIdentity(
            index=params.index, identity=params.identity, images=images.numpy(),
            mask=rendered.mask[:, 0].bool().numpy(), depth=rendered.depth[:, 0].numpy(),
            landmarks=pixels.numpy().astype(np.float32), landmarks3d=out.landmarks.numpy(),
            au=params.au, expression_class=params.expression_class,
            shape=params.shape.astype(np.float32), albedo=params.albedo.astype(np.float32),
            expression=expression.numpy(), pose=pose.numpy(), camera=camera.numpy(),
            light=sh.numpy(), vertices=out.vertices.numpy(), head_yaw=out.head_yaw.numpy())

    def generate(self, seed: int, start: int, count: int) -> list[SyntheticIdentity]:
        """Identities ``start .. start + count - 1`` of the world ``seed``."""
        return [self.render(self.sample(seed, i)) for i in range(start, start + count)]


_WORLDS: dict[tuple[str, int], SyntheticWorld] = {}
_MAX_WORLDS = 4


@functools.lru_cache(maxsize=2)
def procedural_head(seed: int = 0) -> FlameModelData:
    """The procedural head of ``seed``, built once per process (treat it as read-only)."""
    from dcnn_flame.flame.procedural import build_procedural_flame

    return build_procedural_flame(seed=seed)


def world_for(cfg: SyntheticConfig, num_views: int = 4) -> SyntheticWorld:
    """A SyntheticWorld for ``cfg`` cached per process (building the head takes a while)."""
    key = (json.dumps(asdict(cfg), sort_keys=True), num_views)
    world = _WORLDS.get(key)
    if world is None:
        if len(_WORLDS) >= _MAX_WORLDS:
            _WORLDS.pop(next(iter(_WORLDS)))
        world = _WORLDS[key] = SyntheticWorld(cfg, procedural_head(cfg.procedural_seed), num_views=num_views)
    return world


def generate_identities(seed: int, start: int, count: int, cfg: SyntheticConfig | None = None,
                        num_views: int = 4) -> list[SyntheticIdentity]:
    """Identities ``start .. start + count - 1`` of the world (seed, cfg); see :class:`SyntheticWorld`."""
    return world_for(cfg or SyntheticConfig(), num_views).generate(seed, start, count)


# Shard writing lives in synthetic_shards (it pulls in Ray, tqdm, the ingest helpers).
def write_synthetic_shards(*args: Any, **kwargs: Any):
    """See :func:`dcnn_flame.data.synthetic_shards.write_synthetic_shards`."""
    from dcnn_flame.data.synthetic_shards import write_synthetic_shards as _write

    return _write(*args, **kwargs)


def prepare(cfg: Any):
    """``jobs/prepare.py source=synthetic``; see :func:`dcnn_flame.data.synthetic_shards.prepare`."""
    from dcnn_flame.data.synthetic_shards import prepare as _prepare

    return _prepare(cfg)

