"""Differentiable mesh renderer in pure PyTorch: camera -> rasterizer -> shader.

See camera.py for the coordinate conventions (NDC, pixels, depth) and shading.py for
the UV and spherical-harmonics conventions. The functions ``rasterize`` and
``interpolate`` live in the submodules of the same names (import them from there;
re-exporting them here would hide the submodules).
"""
from dcnn_flame.render.backends import available_backends, make_rasterizer
from dcnn_flame.render.camera import (
    OrthographicCamera, PerspectiveCamera, as_camera, from_pixels, project_landmarks, to_pixels)
from dcnn_flame.render.rasterize import Fragments, RasterSettings, TorchRasterizer
from dcnn_flame.render.renderer import (
    MeshRenderer, Renderer, RendererConfig, RenderOutput, SHTextureShader, ShaderSettings)
from dcnn_flame.render.shading import (
    detail_normal_map, face_normals, sample_texture, sh_basis, sh_shading, uv_fragments,
    vertex_normals)
from dcnn_flame.render.soft import soft_silhouette

__all__ = [
    "Fragments", "MeshRenderer", "OrthographicCamera", "PerspectiveCamera", "RasterSettings",
    "RenderOutput", "Renderer", "RendererConfig", "SHTextureShader", "ShaderSettings",
    "TorchRasterizer", "as_camera", "available_backends", "detail_normal_map", "face_normals",
    "from_pixels", "make_rasterizer", "project_landmarks",
    "sample_texture", "sh_basis", "sh_shading", "soft_silhouette", "to_pixels", "uv_fragments",
    "vertex_normals",
]
