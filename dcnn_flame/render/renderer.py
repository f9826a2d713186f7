"""Renderer = rasterizer + shader (composable, like PyTorch3D's MeshRenderer).

``MeshRenderer(rasterizer, shader)`` projects world vertices with a camera,
rasterizes them and hands the fragments to a shader. :class:`Renderer` is the
default for FLAME-like meshes: UV albedo texture, optional UV displacement (detail
normals), SH lighting, background, optional soft silhouette / antialiasing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.constants import IMAGE_SIZE
from dcnn_flame.render.camera import Camera, _size_hw, as_camera
from dcnn_flame.render.interpolate import interpolate
from dcnn_flame.render.rasterize import DEFAULT_MAX_CANDIDATES, Fragments
from dcnn_flame.render.shading import (
    detail_normal_map, sample_texture, sh_shading, uv_fragments, vertex_normals)
from dcnn_flame.render.soft import _BAND as _SOFT_BAND
from dcnn_flame.render.soft import soft_silhouette


@dataclass
class RenderOutput:
    """What :class:`Renderer` returns (all NCHW, float in [0, 1] where it is an image).

    Attributes:
        image: [B, 3, H, W] shaded image composited over the background.
        mask: [B, 1, H, W] hard coverage (1 where a face covers the pixel centre).
        depth: [B, 1, H, W] view depth (smaller = closer), 0 in background.
        normals: [B, 3, H, W] unit normals in the camera's eye frame (detail normals
            when a displacement map is given), 0 in background.
        face_idx: [B, H, W] int64 face per pixel, -1 = background.
        albedo: [B, 3, H, W] sampled albedo, 0 in background.
        shading: [B, 3, H, W] SH irradiance, 0 in background.
        uv: [B, H, W, 2] interpolated UVs, 0 in background.
        soft_mask: [B, 1, H, W] soft silhouette when requested, else None.
        fragments: the raw :class:`Fragments`.
    """

    image: Tensor
    mask: Tensor
    depth: Tensor
    normals: Tensor
    face_idx: Tensor
    albedo: Tensor
    shading: Tensor
    uv: Tensor
    soft_mask: Tensor | None
    fragments: Fragments


class RasterizerBackend(Protocol):
    """What ``MeshRenderer`` needs from a rasterizer (see ``backends.make_rasterizer``)."""

    def __call__(
        self, verts_ndc: Tensor, faces: Tensor, image_size: int | tuple[int, int], *,
        perspective_correct: bool = False, znear: float | None = None,
    ) -> Fragments: ...


class Shader(Protocol):
    """Turns fragments (plus mesh data) into an output."""

    def __call__(self, fragments: Fragments, **inputs: Any) -> Any: ...


class MeshRenderer:
    """Project with a camera, rasterize, shade.

    ``shader`` is called as ``shader(fragments, vertices=..., verts_ndc=..., faces=...,
    camera=..., image_size=..., **shader_inputs)``.
    """

    def __init__(self, rasterizer: RasterizerBackend, shader: Shader) -> None:
        self.rasterizer = rasterizer
        self.shader = shader

    def __call__(
        self, vertices: Tensor, faces: Tensor, camera: Camera | Tensor,
        image_size: int | tuple[int, int] = IMAGE_SIZE, **shader_inputs: Any,
    ) -> Any:
        """vertices [B, V, 3] world, faces [F, 3] or [B, F, 3] -> the shader's output."""
        camera = as_camera(camera)
        verts_ndc = camera.project(vertices)
        fragments = self.rasterizer(
            verts_ndc, faces, image_size, perspective_correct=camera.is_perspective,
            znear=camera.znear)
        return self.shader(
            fragments, vertices=vertices, verts_ndc=verts_ndc, faces=faces, camera=camera,
            image_size=image_size, **shader_inputs)


@dataclass
class ShaderSettings:
    """Settings of :class:`SHTextureShader`."""

    clamp: bool = True
    """Clamp the shaded colour to [0, 1] (gradients vanish where clamped)."""
    antialias: bool = False
    """Blend the silhouette with the background by the soft mask (needs soft edges;
    implies computing ``soft_mask``)."""
    soft_mask: bool = False
    """Also return a soft silhouette (gradients w.r.t. geometry at its edges)."""
    soft_sigma: float = 0.5
    """Soft edge width in pixels (see ``soft.soft_silhouette``)."""
    cull_backfaces: bool = False
    """Also applied to the soft silhouette (keep equal to the rasterizer's)."""
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    """Memory bound of the soft silhouette pass."""


def _extend_colours(img: Tensor, mask: Tensor, steps: int) -> Tensor:
    """Fill pixels outside ``mask`` from their covered neighbours (``steps`` 3x3
    dilations) so antialiased edges blend the object's colour, not black."""
    m = mask.to(img.dtype)
    col = img * m
    for _ in range(steps):
        num = F.avg_pool2d(col, 3, stride=1, padding=1)
        den = F.avg_pool2d(m, 3, stride=1, padding=1)
        fill = num / den.clamp_min(1e-12)
        col = torch.where(m > 0, col, torch.where(den > 0, fill, col))
        m = torch.maximum(m, (den > 0).to(m.dtype))
    return col


class SHTextureShader:
    """UV albedo x SH Lambertian shading, optional displacement detail normals."""

    def __init__(self, settings: ShaderSettings | None = None) -> None:
        self.settings = settings or ShaderSettings()
        self._uv_cache: dict[tuple, Fragments] = {}

    def uv_layout(self, uv_coords: Tensor, uv_faces: Tensor, size: tuple[int, int]) -> Fragments:
        """Cached rasterization of the UV layout at ``size`` (one per layout/size/device)."""
        key = (uv_coords.data_ptr(), uv_faces.data_ptr(), tuple(uv_coords.shape),
               tuple(uv_faces.shape), size, uv_coords.device, uv_coords.dtype)
        frag = self._uv_cache.get(key)
        if frag is None:
            with torch.no_grad():
                frag = uv_fragments(uv_coords, uv_faces, size)
            self._uv_cache = {key: frag}
        return frag

    def __call__(
        self,
        fragments: Fragments,
        *,
        vertices: Tensor,
        verts_ndc: Tensor,
        faces: Tensor,
        camera: Camera,
        image_size: int | tuple[int, int],
        uv_coords: Tensor,
        uv_faces: Tensor,
        albedo_map: Tensor,
        sh: Tensor,
        displacement_map: Tensor | None = None,
        background: Tensor | None = None,
    ) -> RenderOutput:
        """Shade fragments; see :meth:`Renderer.render` for the inputs' shapes."""
        st = self.settings
        B, H, W = fragments.face_idx.shape
        mask = fragments.mask.unsqueeze(1).to(vertices.dtype)  # [B, 1, H, W]
        uv = interpolate(uv_coords[uv_faces].unsqueeze(0), fragments)  # [B, H, W, 2]
        albedo = sample_texture(albedo_map, uv) * mask

        vn = vertex_normals(vertices, faces)
        n_pix = interpolate(vn, fragments)  # [B, H, W, 3] world frame
        if displacement_map is not None:
            size = tuple(displacement_map.shape[-2:])
            n_det, n_smooth, valid = detail_normal_map(
                vertices, faces, self.uv_layout(uv_coords, uv_faces, size), displacement_map, vn)
            # Sample the detail *offset* so texels outside the UV islands (0) fall back
            # to the smooth normal instead of bleeding zeros across seams.
            delta = (n_det - n_smooth) * valid.to(n_det.dtype)
            n_pix = F.normalize(n_pix, dim=-1, eps=1e-12) + sample_texture(delta, uv).permute(0, 2, 3, 1)
        n_pix = camera.rotate_to_view(n_pix.reshape(B, H * W, 3)).view(B, H, W, 3)
        normals = F.normalize(n_pix, dim=-1, eps=1e-12).permute(0, 3, 1, 2) * mask
        shading = sh_shading(normals, sh) * mask
        colour = albedo * shading
        if st.clamp:
            colour = colour.clamp(0.0, 1.0)
        if background is None:
            background = torch.zeros_like(colour)
        elif background.shape != colour.shape:
            raise ValueError(f"background must be [B, 3, H, W] = {tuple(colour.shape)}, got {tuple(background.shape)}")

        soft = None
        if st.soft_mask or st.antialias:
            soft = soft_silhouette(
                verts_ndc, faces, (H, W), st.soft_sigma, cull_backfaces=st.cull_backfaces,
                znear=camera.znear, max_candidates=st.max_candidates).unsqueeze(1)
        if st.antialias:
            steps = min(8, max(1, math.ceil(_SOFT_BAND * st.soft_sigma)))
            ext = _extend_colours(colour, mask, steps)
            image = soft * ext + (1.0 - soft) * background
        else:
            image = mask * colour + (1.0 - mask) * background
        return RenderOutput(
            image=image, mask=mask, depth=fragments.depth.unsqueeze(1), normals=normals,
            face_idx=fragments.face_idx, albedo=albedo, shading=shading, uv=uv,
            soft_mask=soft, fragments=fragments)


def _full_precision(t: Tensor | None) -> Tensor | None:
    """float16/bfloat16 -> float32; anything else unchanged."""
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


@dataclass
class RendererConfig:
    """Configuration of the default :class:`Renderer`."""

    image_size: int = IMAGE_SIZE
    """Output height = width in pixels."""
    backend: str = "torch"
    """Rasterizer backend: "torch" (pure PyTorch, default) or "pytorch3d"."""
    cull_backfaces: bool = False
    """Skip faces seen from behind (faster; FLAME is open at the neck and mouth, so
    the default keeps them, as DECA does)."""
    antialias: bool = False
    """Soft, antialiased silhouette blended over the background."""
    soft_mask: bool = False
    """Return a soft silhouette in ``RenderOutput.soft_mask``."""
    soft_sigma: float = 0.5
    """Soft silhouette edge width in pixels."""
    clamp: bool = True
    """Clamp shaded colours to [0, 1]."""
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    """Memory bound: (triangle, pixel) candidates per rasterizer chunk."""
    compile: bool = False
    """Fuse the rasterizer's per-candidate work with ``torch.compile`` (GPU throughput;
    the first call per shape regime compiles)."""


class Renderer(nn.Module):
    """Default renderer of one mesh topology (e.g. FLAME) with a UV layout.

    Args:
        faces: [F, 3] int64 triangle vertex indices.
        uv_coords: [Vt, 2] UVs in [0, 1], v up.
        uv_faces: [F, 3] int64 indices into ``uv_coords``.
        config: :class:`RendererConfig`.
    """

    def __init__(self, faces: Tensor, uv_coords: Tensor, uv_faces: Tensor,
                 config: RendererConfig | None = None) -> None:
        super().__init__()
        from dcnn_flame.render.backends import make_rasterizer

        self.config = cfg = config or RendererConfig()
        if faces.dim() != 2 or faces.shape[1] != 3 or uv_faces.shape != faces.shape:
            raise ValueError(
                f"Renderer: faces and uv_faces must both be [F, 3], got {tuple(faces.shape)} "
                f"and {tuple(uv_faces.shape)}")
        if uv_coords.dim() != 2 or uv_coords.shape[1] != 2:
            raise ValueError(f"Renderer: uv_coords must be [Vt, 2], got {tuple(uv_coords.shape)}")
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("uv_coords", uv_coords.float(), persistent=False)
        self.register_buffer("uv_faces", uv_faces.long(), persistent=False)
        rasterizer = make_rasterizer(cfg.backend, cull_backfaces=cfg.cull_backfaces,
                                     max_candidates=cfg.max_candidates, compile=cfg.compile)
        shader = SHTextureShader(ShaderSettings(
            clamp=cfg.clamp, antialias=cfg.antialias, soft_mask=cfg.soft_mask,
            soft_sigma=cfg.soft_sigma, cull_backfaces=cfg.cull_backfaces,
            max_candidates=cfg.max_candidates))
        self.mesh_renderer = MeshRenderer(rasterizer, shader)

    def forward(
        self,
        vertices: Tensor,
        camera: Camera | Tensor,
        albedo_map: Tensor,
        sh: Tensor,
        displacement_map: Tensor | None = None,
        background: Tensor | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> RenderOutput:
        """Render.

        Args:
            vertices: [B, V, 3] world-space vertices.
            camera: ``OrthographicCamera``/``PerspectiveCamera`` or DECA cam [B, 3].
            albedo_map: [B, 3, Ht, Wt] (or [1, 3, Ht, Wt]) in [0, 1].
            sh: [B, 9, 3] or [B, 27] SH lighting coefficients.
            displacement_map: optional [B, 1, Hd, Wd] displacement along the normal.
            background: optional [B, 3, H, W] image behind the mesh (default black).
            image_size: override of ``config.image_size`` (H or (H, W)).
        Returns:
            :class:`RenderOutput`.
        """
        size = _size_hw(image_size if image_size is not None else self.config.image_size)
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"Renderer: vertices must be [B, V, 3], got {tuple(vertices.shape)}")
        # The inputs decide the device (a no-op when the module was moved there already).
        dev = vertices.device
        # Rasterization and barycentrics need float32: bf16 NDC positions are off by about
        # a pixel at 224 px. So half inputs (e.g. from a bf16 autocast region) are promoted
        # and autocast is off inside; the outputs are float32.
        vertices, albedo_map, sh, displacement_map, background = (
            _full_precision(t) for t in (vertices, albedo_map, sh, displacement_map, background))
        if isinstance(camera, Tensor):
            camera = _full_precision(camera)
        with torch.autocast(device_type=dev.type, enabled=False):
            return self.mesh_renderer(
                vertices, self.faces.to(dev), camera, size, uv_coords=self.uv_coords.to(dev, vertices.dtype),
                uv_faces=self.uv_faces.to(dev), albedo_map=albedo_map, sh=sh,
                displacement_map=displacement_map, background=background)

    render = forward
