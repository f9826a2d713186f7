"""Rasterizer backends behind one interface: ``make_rasterizer(backend)``.

- ``"torch"`` (default): :class:`~dcnn_flame.render.rasterize.TorchRasterizer`,
  pure PyTorch on CPU and CUDA.
- ``"pytorch3d"``: PyTorch3D's ``rasterize_meshes`` for visibility, when it is
  installed. Only the face ids are taken from it; barycentrics and depth are
  recomputed by our differentiable pass, so both backends give the same gradients.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dcnn_flame.render.rasterize import (
    DEFAULT_MAX_CANDIDATES, Fragments, RasterSettings, TorchRasterizer, _check_inputs,
    barycentrics_from_face_ids, gather_face_verts)

_PYTORCH3D_MISSING = "pytorch3d is not installed; use backend='torch' (the default)"


class Pytorch3dRasterizer:
    """Visibility by ``pytorch3d.renderer.mesh.rasterize_meshes`` (needs pytorch3d)."""

    def __init__(self, settings: RasterSettings | None = None, bin_size: int | None = None) -> None:
        try:
            from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
            from pytorch3d.structures import Meshes
        except ImportError as err:
            raise ImportError(_PYTORCH3D_MISSING) from err
        self._rasterize_meshes = rasterize_meshes
        self._meshes = Meshes
        self.settings = settings or RasterSettings()
        self.bin_size = bin_size

    def __call__(
        self, verts_ndc: Tensor, faces: Tensor, image_size: int | tuple[int, int], *,
        perspective_correct: bool = False, znear: float | None = None,
    ) -> Fragments:
        """Same contract as :class:`TorchRasterizer`."""
        _check_inputs(verts_ndc, faces)
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        B = verts_ndc.shape[0]
        # PyTorch3D NDC: +x left, +y up; the shorter image side spans [-1, 1].
        short = min(H, W)
        v = verts_ndc.detach().float()
        z = v[..., 2]
        if not perspective_correct:
            # PyTorch3D skips points with z < 0 (behind its camera), while orthographic
            # depth may be negative: shift each mesh to z >= 1 (the order is unchanged).
            zmin = torch.where(torch.isfinite(z), z, torch.full_like(z, torch.inf)).amin(dim=1, keepdim=True)
            z = z - torch.where(torch.isfinite(zmin), zmin, torch.zeros_like(zmin)) + 1.0
        p3 = torch.stack([-v[..., 0] * (W / short), v[..., 1] * (H / short), z], dim=-1)
        fb = faces.expand(B, -1, -1) if faces.dim() == 2 else faces
        meshes = self._meshes(verts=list(p3), faces=list(fb))
        with torch.no_grad():
            pix_to_face, _, _, _ = self._rasterize_meshes(
                meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1,
                bin_size=self.bin_size, perspective_correct=perspective_correct,
                cull_backfaces=self.settings.cull_backfaces)
        p2f = pix_to_face[..., 0]
        offsets = meshes.mesh_to_faces_packed_first_idx().view(B, 1, 1)
        face_idx = torch.where(p2f >= 0, p2f - offsets, torch.full_like(p2f, -1))
        if znear is not None:
            # PyTorch3D does not know our near plane: pixels whose winning face crosses
            # it become background (a face behind it is not revealed; rare in practice).
            ok = (gather_face_verts(verts_ndc.detach()[..., 2:], faces)[..., 0] > znear).all(-1)
            visible = torch.gather(ok, 1, face_idx.clamp(min=0).view(B, -1)).view_as(face_idx)
            face_idx = torch.where(visible, face_idx, torch.full_like(face_idx, -1))
        return barycentrics_from_face_ids(
            verts_ndc, faces, face_idx, perspective_correct=perspective_correct)


_BACKENDS: dict[str, Callable[[RasterSettings], object]] = {
    "torch": TorchRasterizer,
    "pytorch3d": Pytorch3dRasterizer,
}


def available_backends() -> tuple[str, ...]:
    """Names accepted by :func:`make_rasterizer`."""
    return tuple(_BACKENDS)


def make_rasterizer(
    backend: str = "torch", *, cull_backfaces: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES, compile: bool = False,
):
    """Build a rasterizer: ``rasterizer(verts_ndc, faces, image_size, *,
    perspective_correct=False, znear=None) -> Fragments``.

    Args:
        backend: "torch" (default, pure PyTorch) or "pytorch3d" (if installed).
        cull_backfaces: drop faces seen from behind.
        max_candidates: memory bound of the torch backend.
        compile: torch backend: fuse per-candidate work with ``torch.compile``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {available_backends()}")
    return _BACKENDS[backend](RasterSettings(
        cull_backfaces=cull_backfaces, max_candidates=max_candidates, compile=compile))
