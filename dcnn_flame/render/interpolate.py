"""Interpolate vertex or face-corner attributes over rasterized pixels."""
from __future__ import annotations

import torch
from torch import Tensor

from dcnn_flame.render.rasterize import Fragments


def interpolate(attrs: Tensor, fragments: Fragments) -> Tensor:
    """Barycentric interpolation of attributes at every pixel.

    Args:
        attrs: per-vertex [B, V, C] (or [1, V, C], shared), indexed through the mesh's
            faces; or face-varying [B, F, 3, C] (or [1, F, 3, C]) holding one value per
            face corner (e.g. UVs gathered with ``uv_faces``).
        fragments: from :func:`~dcnn_flame.render.rasterize.rasterize`, batch B (or
            1 with a batched ``attrs``: one layout shared by all meshes, as for UV space).
    Returns:
        [B, H, W, C]; 0 in background. Differentiable w.r.t. ``attrs`` and, through
        ``fragments.bary``, w.r.t. the vertex positions.
    """
    B, H, W = fragments.face_idx.shape
    if attrs.dim() not in (3, 4):
        raise ValueError(
            f"interpolate: attrs must be per-vertex [B, V, C] or face-varying [B, F, 3, C], "
            f"got {tuple(attrs.shape)}")
    Ba = attrs.shape[0]
    out_b = max(B, Ba)
    if B not in (1, out_b) or Ba not in (1, out_b):
        raise ValueError(f"interpolate: attrs batch {Ba} does not match fragments batch {B}")
    C = attrs.shape[-1]
    if attrs.dim() == 3:
        idx = fragments.vert_idx.reshape(B, H * W * 3)
        if B == 1 and Ba > 1:
            corner = attrs[:, idx[0]]  # [Ba, HW*3, C]
        else:
            src = attrs.expand(out_b, -1, -1)
            corner = torch.gather(src, 1, idx.unsqueeze(-1).expand(-1, -1, C))
    else:
        if attrs.shape[2] != 3:
            raise ValueError(f"interpolate: face-varying attrs must be [B, F, 3, C], got {tuple(attrs.shape)}")
        F = attrs.shape[1]
        f = fragments.face_idx.clamp(min=0).reshape(B, H * W)
        flat = attrs.reshape(Ba, F, 3 * C)
        if B == 1 and Ba > 1:
            corner = flat[:, f[0]]
        else:
            src = flat.expand(out_b, -1, -1)
            corner = torch.gather(src, 1, f.unsqueeze(-1).expand(-1, -1, 3 * C))
    corner = corner.reshape(out_b, H * W, 3, C)
    bary = fragments.bary.reshape(B, H * W, 3, 1)
    # Three fused multiply-adds beat a reduction over the size-3 middle dimension.
    out = bary[:, :, 0] * corner[:, :, 0]
    out = torch.addcmul(out, bary[:, :, 1], corner[:, :, 1])
    out = torch.addcmul(out, bary[:, :, 2], corner[:, :, 2])
    return out.view(out_b, H, W, C)
