"""Shading: normals, UV textures, displacement detail normals, SH lighting.

UV convention (OpenGL style, as FLAME's UV layout): uv (0, 0) is the bottom-left
corner of the texture image and (1, 1) the top-right; v grows *up*, so texture row
0 (the top row of a [C, Ht, Wt] map) is at v = 1.

Spherical-harmonics lighting (DECA-style Lambertian model): per colour channel c,
``shading_c(n) = sum_k sh[k, c] * Y_k(n)`` for a unit normal n = (x, y, z) with the
9 basis functions below. ``Y_k = A_l * y_lm`` where ``y_lm`` are the orthonormal real
spherical harmonics and ``A_l`` the Lambertian (clamped-cosine) convolution factors
of Ramamoorthi & Hanrahan (2001), A_1 = 2 pi / 3, A_2 = pi / 4, except that band 0 uses
1 instead of A_0 = pi (DECA's convention: the DC coefficient scales ``y_00``
directly). Index k, (l, m), function:

====  =======  ==================================================
k     (l, m)   Y_k(n)
====  =======  ==================================================
0     (0, 0)   1 * sqrt(1 / (4 pi))
1     (1, 1)   (2 pi / 3) * sqrt(3 / (4 pi)) * x
2     (1, -1)  (2 pi / 3) * sqrt(3 / (4 pi)) * y
3     (1, 0)   (2 pi / 3) * sqrt(3 / (4 pi)) * z
4     (2, -2)  (pi / 4) * (1 / 2) sqrt(15 / pi) * x y
5     (2, 1)   (pi / 4) * (1 / 2) sqrt(15 / pi) * x z
6     (2, -1)  (pi / 4) * (1 / 2) sqrt(15 / pi) * y z
7     (2, 2)   (pi / 4) * (1 / 4) sqrt(15 / pi) * (x^2 - y^2)
8     (2, 0)   (pi / 4) * (1 / 4) sqrt(5 / pi) * (3 z^2 - 1)
====  =======  ==================================================

Normals are in the camera's eye frame (x right, y up, z towards the camera), so the
lighting is attached to the camera, as in DECA.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dcnn_flame.render.interpolate import interpolate
from dcnn_flame.render.rasterize import Fragments, gather_face_verts, rasterize

_A1 = 2.0 * math.pi / 3.0
_A2 = math.pi / 4.0
#: Constant factor of each of the 9 SH basis functions (see the module docstring).
SH_CONSTANTS: tuple[float, ...] = (
    math.sqrt(1.0 / (4.0 * math.pi)),
    _A1 * math.sqrt(3.0 / (4.0 * math.pi)),
    _A1 * math.sqrt(3.0 / (4.0 * math.pi)),
    _A1 * math.sqrt(3.0 / (4.0 * math.pi)),
    _A2 * 0.5 * math.sqrt(15.0 / math.pi),
    _A2 * 0.5 * math.sqrt(15.0 / math.pi),
    _A2 * 0.5 * math.sqrt(15.0 / math.pi),
    _A2 * 0.25 * math.sqrt(15.0 / math.pi),
    _A2 * 0.25 * math.sqrt(5.0 / math.pi),
)
#: (l, m) of each basis index k.
SH_LM: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 1), (1, -1), (1, 0), (2, -2), (2, 1), (2, -1), (2, 2), (2, 0))


def sh_basis(normals: Tensor) -> Tensor:
    """Evaluate the 9 scaled SH basis functions.

    Args:
        normals: [..., 3] unit normals (x, y, z).
    Returns:
        [..., 9] values ``Y_k(n)`` in the order of :data:`SH_LM`.
    """
    x, y, z = normals.unbind(-1)
    one = torch.ones_like(x)
    polys = torch.stack(
        [one, x, y, z, x * y, x * z, y * z, x * x - y * y, 3.0 * z * z - 1.0], dim=-1)
    return polys * polys.new_tensor(SH_CONSTANTS)


def _sh_coeffs(sh: Tensor) -> Tensor:
    if sh.dim() == 2 and sh.shape[1] == 27:
        return sh.view(sh.shape[0], 9, 3)
    if sh.dim() == 3 and sh.shape[1:] == (9, 3):
        return sh
    raise ValueError(f"sh must be [B, 9, 3] or [B, 27] (9 bands x RGB), got {tuple(sh.shape)}")


def sh_shading(normals: Tensor, sh: Tensor) -> Tensor:
    """Lambertian irradiance under SH lighting.

    Args:
        normals: [B, 3, H, W] unit normals (eye frame).
        sh: [B, 9, 3] or [B, 27] (reshaped as [B, 9, 3]: band-major, RGB last).
    Returns:
        [B, 3, H, W] shading; multiply by albedo for the shaded colour.
    """
    coeffs = _sh_coeffs(sh)
    basis = sh_basis(normals.permute(0, 2, 3, 1))  # [B, H, W, 9]
    return torch.einsum("bhwk,bkc->bchw", basis, coeffs.to(basis.dtype))


def face_normals(verts: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """Face normals ``(v1 - v0) x (v2 - v0)``.

    Args:
        verts: [B, V, 3]; faces: [F, 3] or [B, F, 3].
        normalize: unit length if True, else the length is twice the face area.
    Returns:
        [B, F, 3].
    """
    tri = gather_face_verts(verts, faces)
    n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    return F.normalize(n, dim=-1, eps=1e-12) if normalize else n


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (sum of incident unnormalised face normals).

    Args:
        verts: [B, V, 3]; faces: [F, 3] or [B, F, 3].
    Returns:
        [B, V, 3] (zero for vertices used by no face).
    """
    B, V, _ = verts.shape
    fn = face_normals(verts, faces, normalize=False)  # [B, F, 3]
    Fn = fn.shape[1]
    fidx = faces.expand(B, -1, -1) if faces.dim() == 2 else faces
    offs = (torch.arange(B, device=verts.device) * V).view(B, 1, 1)
    idx = (fidx + offs).reshape(-1)  # [B*F*3]
    contrib = fn.unsqueeze(2).expand(B, Fn, 3, 3).reshape(-1, 3)
    acc = torch.zeros(B * V, 3, dtype=verts.dtype, device=verts.device).index_add(0, idx, contrib)
    return F.normalize(acc.view(B, V, 3), dim=-1, eps=1e-12)


def sample_texture(uv_map: Tensor, uv: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample a UV-space map at given UV coordinates.

    Args:
        uv_map: [B, C, Ht, Wt] (or [1, C, Ht, Wt], shared).
        uv: [B, H, W, 2] (u, v) in [0, 1], v up (see the module docstring).
        mode: ``grid_sample`` mode ("bilinear" or "nearest").
    Returns:
        [B, C, H, W]; values outside [0, 1] clamp to the border.
    """
    if uv_map.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(
            f"sample_texture: uv_map must be [B, C, Ht, Wt] and uv [B, H, W, 2], got "
            f"{tuple(uv_map.shape)} and {tuple(uv.shape)}")
    B = uv.shape[0]
    if uv_map.shape[0] == 1 and B > 1:
        uv_map = uv_map.expand(B, -1, -1, -1)
    grid = torch.stack([uv[..., 0] * 2.0 - 1.0, 1.0 - uv[..., 1] * 2.0], dim=-1)
    return F.grid_sample(uv_map, grid.to(uv_map.dtype), mode=mode, padding_mode="border",
                         align_corners=False)


def uv_fragments(
    uv_coords: Tensor, uv_faces: Tensor, size: int | tuple[int, int]
) -> Fragments:
    """Rasterize the UV layout itself: which face covers each texel (batch 1).

    Args:
        uv_coords: [Vt, 2] in [0, 1]; uv_faces: [F, 3] indices into ``uv_coords``
            (face f of the UV layout is face f of the mesh).
        size: texture size Ht or (Ht, Wt).
    Returns:
        :class:`Fragments` with batch 1 over the [Ht, Wt] texel grid (texel centres).
    """
    uv = uv_coords.unsqueeze(0)
    ndc = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[..., :1])], dim=-1)
    return rasterize(ndc, uv_faces, size)


def uv_position_map(verts: Tensor, faces: Tensor, uv_frag: Fragments) -> Tensor:
    """3D surface position at every texel.

    Args:
        verts: [B, V, 3]; faces: [F, 3]; uv_frag: from :func:`uv_fragments`.
    Returns:
        [B, 3, Ht, Wt]; 0 at texels outside the UV islands.
    """
    pos = interpolate(gather_face_verts(verts, faces), uv_frag)  # [B, Ht, Wt, 3]
    return pos.permute(0, 3, 1, 2)


def _texel_derivative(p: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Finite difference of p [B, 3, Ht, Wt] along ``dim`` (per texel step) using
    only valid texels: central where both neighbours are valid, else one-sided, else 0."""
    def shift(t: Tensor, step: int) -> Tensor:
        # out[i] = t[i + step] (zero padded).
        out = torch.zeros_like(t)
        n = t.shape[dim]
        if step > 0:
            out.narrow(dim, 0, n - step).copy_(t.narrow(dim, step, n - step))
        else:
            out.narrow(dim, -step, n + step).copy_(t.narrow(dim, 0, n + step))
        return out

    vf = valid.to(p.dtype)
    nxt_ok = (shift(vf, 1) * vf) > 0
    prv_ok = (shift(vf, -1) * vf) > 0
    nxt = shift(p, 1)
    prv = shift(p, -1)
    central = 0.5 * (nxt - prv)
    fwd = nxt - p
    bwd = p - prv
    out = torch.where(nxt_ok & prv_ok, central, torch.where(nxt_ok, fwd, torch.where(prv_ok, bwd, torch.zeros_like(p))))
    return out


def detail_normal_map(
    verts: Tensor,
    faces: Tensor,
    uv_frag: Fragments,
    displacement: Tensor,
    normals: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normals of the surface displaced along its normals by a UV displacement map.

    The mesh is resampled in UV space (texel positions and smooth normals), each
    texel moves by ``displacement * normal``, and the detail normal is the cross
    product of the finite-difference tangents of the displaced positions along u and v,
    oriented like the smooth normal (the same as the undisplaced tangents' cross
    product, so mirrored UV islands work).

    Args:
        verts: [B, V, 3]; faces: [F, 3] (face f matches UV face f of ``uv_frag``).
        uv_frag: :func:`uv_fragments` at the displacement map's size.
        displacement: [B, 1, Ht, Wt] offsets along the normal (same units as verts).
        normals: optional [B, V, 3] vertex normals (computed if None).
    Returns:
        (detail normals [B, 3, Ht, Wt], smooth normals [B, 3, Ht, Wt], valid texels
        [1, 1, Ht, Wt] bool). Outside the islands both maps hold the smooth normal or 0.
    """
    if displacement.dim() != 4 or displacement.shape[1] != 1:
        raise ValueError(f"displacement must be [B, 1, Ht, Wt], got {tuple(displacement.shape)}")
    if tuple(displacement.shape[-2:]) != uv_frag.image_size:
        raise ValueError(
            f"displacement size {tuple(displacement.shape[-2:])} differs from the UV "
            f"rasterization size {uv_frag.image_size}")
    if normals is None:
        normals = vertex_normals(verts, faces)
    pos = uv_position_map(verts, faces, uv_frag)
    nrm = F.normalize(interpolate(gather_face_verts(normals, faces), uv_frag).permute(0, 3, 1, 2), dim=1, eps=1e-12)
    valid = uv_frag.mask.unsqueeze(1)  # [1, 1, Ht, Wt]
    disp_pos = pos + displacement * nrm
    # Texture columns grow with u; rows grow against v (v is up).
    du = _texel_derivative(disp_pos, valid, 3)
    dv = -_texel_derivative(disp_pos, valid, 2)
    du0 = _texel_derivative(pos, valid, 3)
    dv0 = -_texel_derivative(pos, valid, 2)
    n_det = torch.linalg.cross(du, dv, dim=1)
    handed = torch.sign((torch.linalg.cross(du0, dv0, dim=1) * nrm).sum(1, keepdim=True))
    n_det = n_det * torch.where(handed == 0, torch.ones_like(handed), handed)
    length = n_det.norm(dim=1, keepdim=True)
    ok = valid & (length > 1e-20)
    n_det = torch.where(ok, n_det / length.clamp_min(1e-20), nrm)
    return n_det, nrm, valid
