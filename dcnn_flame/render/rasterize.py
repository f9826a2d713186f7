"""Pure-PyTorch triangle rasterizer (CPU and CUDA; no extension to build).

Two passes, as in nvdiffrast:

1. Visibility, without gradients. Each triangle enumerates its scanlines (pixel rows
   of its bounding box) and each scanline the conservative span of pixel centres that
   may lie inside, so candidates are close to the covered pixels (a cumulative sum
   plus ``repeat_interleave`` per level, no padding). Faces are processed in chunks
   of about ``max_candidates`` bounding-box pixels, so memory stays bounded at any
   batch x resolution. Covered candidates write a packed int64 key
   ``(float32 bits of depth) << 31 | face id`` into a per-pixel buffer with
   ``scatter_reduce(amin)``: the nearest face wins, exact depth ties go to the lower
   face id. No pixels x triangles matrix is ever built. ``compile=True`` fuses the
   per-candidate arithmetic with ``torch.compile`` (optional).
2. Barycentrics and depth, with gradients: recomputed per pixel from the vertex
   positions of the winning face, so gradients flow to vertex positions through the
   barycentrics (face ids are discrete and have none).

Coverage rule: pixel centres at (j + 0.5, i + 0.5) in the pixel coordinates of
:mod:`dcnn_flame.render.camera`. Edge functions are evaluated with the two edge
vertices in a canonical order (lower vertex index first), so two triangles sharing an
edge compute bit-identical values there; a centre exactly on an edge belongs to the
triangle for which that edge is a top or left edge. A closed mesh is therefore
watertight: no shared-edge pixel is drawn twice or dropped.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: Background value of the packed-key buffer (larger than any valid key).
_KEY_EMPTY = torch.iinfo(torch.int64).max
_FACE_BITS = 31
_FACE_MASK = (1 << _FACE_BITS) - 1

#: Default upper bound on (triangle, pixel) candidates processed at once.
DEFAULT_MAX_CANDIDATES = 1 << 22


@dataclass
class Fragments:
    """Per-pixel rasterization result (one nearest face per pixel).

    Attributes:
        face_idx: [B, H, W] int64 index into the mesh's faces (0..F-1, per mesh, not
            packed over the batch); -1 = background.
        bary: [B, H, W, 3] barycentric weights of the face's 3 vertices (perspective
            corrected when rasterized with ``perspective_correct``); 0 in background.
            Differentiable w.r.t. vertex positions.
        depth: [B, H, W] view depth of the surface (smaller = closer); 0 in background.
            Differentiable w.r.t. vertex positions.
        mask: [B, H, W] bool, True where a face covers the pixel centre.
        vert_idx: [B, H, W, 3] int64 vertex ids of the pixel's face (0 in background),
            used by :func:`interpolate` for per-vertex attributes.
    """

    face_idx: Tensor
    bary: Tensor
    depth: Tensor
    mask: Tensor
    vert_idx: Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        return self.face_idx.shape[1], self.face_idx.shape[2]


def _check_inputs(verts: Tensor, faces: Tensor) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"rasterize: verts_ndc must be [B, V, 3], got {tuple(verts.shape)}")
    if not verts.is_floating_point():
        raise TypeError(f"rasterize: verts_ndc must be floating point, got {verts.dtype}")
    if faces.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"rasterize: faces must be int64 (or int32), got {faces.dtype}")
    if faces.dim() == 2:
        if faces.shape[-1] != 3:
            raise ValueError(f"rasterize: faces must be [F, 3] or [B, F, 3], got {tuple(faces.shape)}")
    elif faces.dim() == 3:
        if faces.shape[-1] != 3 or faces.shape[0] != verts.shape[0]:
            raise ValueError(
                f"rasterize: per-mesh faces must be [B, F, 3] with B = {verts.shape[0]}, "
                f"got {tuple(faces.shape)}")
    else:
        raise ValueError(f"rasterize: faces must be [F, 3] or [B, F, 3], got {tuple(faces.shape)}")


def gather_face_verts(verts: Tensor, faces: Tensor) -> Tensor:
    """[B, V, C] vertex values, faces [F, 3] or [B, F, 3] -> [B, F, 3, C]."""
    if faces.dim() == 2:
        return verts[:, faces]
    B, F, _ = faces.shape
    idx = faces.reshape(B, F * 3, 1).expand(-1, -1, verts.shape[-1])
    return torch.gather(verts, 1, idx).view(B, F, 3, verts.shape[-1])


def _face_vertex_ids(faces: Tensor, batch: int) -> Tensor:
    return faces.expand(batch, -1, -1) if faces.dim() == 2 else faces


def _pixel_coords(tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """[..., 3, >=2] NDC triangle corners -> pixel u (column) and v (row), [..., 3] each."""
    u = (tri[..., 0] + 1.0) * (0.5 * width)
    v = (1.0 - tri[..., 1]) * (0.5 * height)
    return u, v


def _pixel_range(lo: Tensor, hi: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre index range [first, first + count) inside [lo, hi], clipped to the image."""
    # Clamp before the integer cast so far off-screen or huge values cannot overflow.
    lo = lo.clamp(-2.0, size + 2.0)
    hi = hi.clamp(-2.0, size + 2.0)
    first = torch.ceil(lo - 0.5).long().clamp(min=0)
    last = torch.floor(hi - 0.5).long().clamp(max=size - 1)
    return first, (last - first + 1).clamp(min=0)


def _chunk_bounds(counts: Tensor, max_candidates: int) -> list[tuple[int, int]]:
    """Split [0, N) into ranges whose summed ``counts`` stay near ``max_candidates``
    (a range exceeds it by at most one element's count). One host sync."""
    n_items = counts.numel()
    if n_items == 0:
        return []
    cum = torch.cumsum(counts, 0)
    total = int(cum[-1])
    if total == 0:
        return []
    if total <= max_candidates:
        return [(0, n_items)]
    marks = torch.arange(max_candidates, total, max_candidates, device=counts.device)
    cuts = torch.searchsorted(cum, marks, right=True)
    bounds = sorted({0, n_items, *cuts.tolist()})
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _expand(owners: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Enumerate (owner, k) for k in range(count) of each owner.

    Args:
        owners: [N] ids; counts: [N] int64 >= 0.
    Returns:
        (owner [n], k [n]) with n = counts.sum() (one host sync for n).
    """
    cum = torch.cumsum(counts, 0)
    n = int(cum[-1]) if cum.numel() else 0
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=counts.device)
        return empty.to(owners.dtype), empty
    pos = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=n)
    k = torch.arange(n, device=counts.device) - (cum - counts)[pos]
    return owners[pos], k


def _iter_candidates(
    counts: Tensor, max_candidates: int
) -> Iterator[tuple[Tensor, Tensor, None]]:
    """Enumerate (face, k) pairs for k in range(counts[face]), in bounded chunks.

    Args:
        counts: [N] int64 number of candidates of each (flattened) face.
        max_candidates: chunk budget; a chunk holds at most this many candidates plus
            the size of one face's box.
    Yields:
        (face [n] int64 flat face index, k [n] int64 index inside the face's box, None).
    """
    ids = torch.arange(counts.numel(), device=counts.device)
    for f0, f1 in _chunk_bounds(counts, max_candidates):
        face, k = _expand(ids[f0:f1], counts[f0:f1])
        if face.numel():
            yield face, k, None


def _span_params(u: Tensor, v: Tensor) -> Tensor:
    """Per-face scanline parameters: corners sorted by v (top, mid, bottom); the
    long edge top->bottom bounds one side of every scanline, top->mid or mid->bottom
    the other.

    Args:
        u, v: [..., 3] corners in pixels.
    Returns:
        [9, N] rows: top u, top v, mid u, mid v, slope (du/dv) of top->bottom,
        top->mid, mid->bottom (0 for horizontal edges), u min, u max.
    """
    order = torch.argsort(v, dim=-1)
    us, vs = torch.gather(u, -1, order), torch.gather(v, -1, order)

    def slope(a: int, b: int) -> Tensor:
        dv = vs[..., b] - vs[..., a]
        safe = torch.where(dv > 0, dv, torch.ones_like(dv))
        return torch.where(dv > 0, (us[..., b] - us[..., a]) / safe, torch.zeros_like(dv))

    rows = [us[..., 0], vs[..., 0], us[..., 1], vs[..., 1], slope(0, 2), slope(0, 1), slope(1, 2),
            u.amin(-1), u.amax(-1)]
    return torch.stack([r.reshape(-1) for r in rows], dim=0)


def _row_spans(sp: Tensor, y: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Conservative range of pixel columns whose centres on scanline ``y`` may lie in
    the triangle (the exact edge test decides; this only prunes the bounding box).

    Args:
        sp: [9, n] :func:`_span_params` of each scanline's face; y: [n] row centres
            inside the face's v range.
    Returns:
        (first column [n] int64, count [n] int64 >= 0).
    """
    eps = 1e-3  # pixels; far above float32 rounding at image coordinates
    x_long = sp[0] + (y - sp[1]) * sp[4]
    upper = y < sp[3]
    x_short = torch.where(upper, sp[0] + (y - sp[1]) * sp[5], sp[2] + (y - sp[3]) * sp[6])
    lo = torch.minimum(x_long, x_short).clamp_min(sp[7]) - eps
    hi = torch.maximum(x_long, x_short).clamp_max(sp[8]) + eps
    return _pixel_range(lo, hi, width)


def _depth_keys(depth: Tensor, face_local: Tensor) -> Tensor:
    """Order-preserving int64 keys ``(float32 bits of depth) << 31 | face id`` for
    depth >= 0 (the bit patterns of non-negative floats sort like their values)."""
    bits = depth.to(torch.float32).clamp_min(0.0).view(torch.int32).to(torch.int64)
    return (bits << _FACE_BITS) | face_local


def _scanline_stage(
    rface: Tensor, r: Tensor, row0: Tensor, spans: Tensor, H: int, W: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(face, k-th row) pairs -> (b * H + row, first column, column count)."""
    brow = row0[rface] + r
    y = (brow % H).to(spans.dtype) + 0.5
    col0, ncol = _row_spans(spans[:, rface], y, W)
    return brow, col0, ncol


def _pixel_stage(
    rface: Tensor, pair: Tensor, dx: Tensor, brow: Tensor, col0: Tensor, fparams: Tensor,
    F: int, H: int, W: int, perspective: bool,
) -> tuple[Tensor, Tensor]:
    """(scanline, k-th column) candidates -> (flat pixel index, packed depth key; the
    empty key where the pixel centre is outside the face)."""
    face = rface[pair]
    col = col0[pair] + dx
    brow = brow[pair]
    pu = col.to(fparams.dtype) + 0.5
    pv = (brow % H).to(fparams.dtype) + 0.5
    fp = fparams[:, face]
    inside = None
    w = []
    for e in range(3):
        # Separate multiply and add kernels keep the rounding identical for the two
        # faces sharing an edge (what makes the coverage watertight).
        E = fp[3 * e] * pu + fp[3 * e + 1] * pv + fp[3 * e + 2]
        ok = (E > 0) | ((E == 0) & (fp[9 + e] > 0))
        inside = ok if inside is None else inside & ok
        w.append(E)
    zi = (w[0] * fp[13] + w[1] * fp[14] + w[2] * fp[15]) * fp[12]
    depth = 1.0 / zi if perspective else zi
    key = _depth_keys(depth, face % F)
    key = torch.where(inside, key, torch.full_like(key, _KEY_EMPTY))
    return brow * W + col, key


_COMPILED: dict[str, Callable] = {}


def _stage(name: str, fn: Callable, compile: bool) -> Callable:
    """``fn`` itself, or (``compile=True``) a cached ``torch.compile`` of it, which
    fuses the per-candidate arithmetic into few kernels (GPU throughput)."""
    if not compile:
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


@torch.no_grad()
def rasterize_face_ids(
    verts_ndc: Tensor,
    faces: Tensor,
    image_size: tuple[int, int],
    *,
    cull_backfaces: bool = False,
    perspective_correct: bool = False,
    znear: float | None = None,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    compile: bool = False,
) -> Tensor:
    """Visibility pass only: nearest face per pixel centre.

    Args: as :func:`rasterize`.
    Returns:
        face_idx [B, H, W] int64, -1 = background.
    """
    H, W = image_size
    B = verts_ndc.shape[0]
    verts = verts_ndc.detach()
    if verts.dtype not in (torch.float32, torch.float64):
        verts = verts.float()
    tri = gather_face_verts(verts, faces)  # [B, F, 3, 3]
    F = tri.shape[1]
    if F >= (1 << _FACE_BITS):
        raise ValueError(f"rasterize: at most {1 << _FACE_BITS} faces per mesh, got {F}")
    vid = _face_vertex_ids(faces, B)
    u, v = _pixel_coords(tri, H, W)  # [B, F, 3]
    z = tri[..., 2]

    # Signed double area in pixel coordinates (v grows downwards): < 0 means the
    # triangle is counter-clockwise in NDC, i.e. front-facing (OpenGL convention).
    area2 = (u[..., 1] - u[..., 0]) * (v[..., 2] - v[..., 0]) - (v[..., 1] - v[..., 0]) * (u[..., 2] - u[..., 0])
    orient = torch.sign(area2)
    valid = torch.isfinite(tri).all(dim=(-1, -2)) & (area2 != 0)
    if cull_backfaces:
        valid &= area2 < 0
    if znear is not None:
        valid &= (z > znear).all(dim=-1)

    # Edge i is opposite vertex i; E_i(p) = cross(q - p0, p - p0) for the edge's
    # endpoints (p0, q) in canonical order, times a sign making the interior positive.
    coeffs, tops = [], []
    for i in range(3):
        a, b = (i + 1) % 3, (i + 2) % 3
        swap = vid[..., a] > vid[..., b]
        pu = torch.where(swap, u[..., b], u[..., a])
        pv = torch.where(swap, v[..., b], v[..., a])
        qu = torch.where(swap, u[..., a], u[..., b])
        qv = torch.where(swap, v[..., a], v[..., b])
        s = torch.where(swap, -orient, orient)
        A = (pv - qv) * s
        Bc = (qu - pu) * s
        C = (qv * pu - qu * pv) * s
        coeffs += [A, Bc, C]
        # (A, Bc) points into the triangle: top-left edge <=> interior to its right,
        # or below a horizontal edge (v grows downwards).
        tops.append(((A > 0) | ((A == 0) & (Bc > 0))).to(u.dtype))
    inv_area = 1.0 / area2.abs().clamp_min(torch.finfo(u.dtype).tiny)
    if perspective_correct:
        zs = 1.0 / z  # depth = 1 / (screen-linear interpolation of 1 / z) > 0
    else:
        # Depth relative to each image's nearest vertex is >= 0 (up to rounding, which
        # the key clamps), so the keys need no sign handling.
        zmin = torch.where(valid[..., None], z, torch.full_like(z, math.inf)).amin(dim=(1, 2))
        zs = z - torch.where(torch.isfinite(zmin), zmin, torch.zeros_like(zmin)).view(B, 1, 1)
    # Per-face parameters as rows ([P, B*F]) so per-candidate gathers read contiguous rows.
    fparams = torch.stack(coeffs + tops + [inv_area, zs[..., 0], zs[..., 1], zs[..., 2]], dim=0)
    fparams = torch.where(valid, fparams, torch.zeros_like(fparams)).reshape(16, B * F)
    spans = _span_params(u, v)  # [9, B*F]

    j0, nx = _pixel_range(u.amin(-1), u.amax(-1), W)
    i0, ny = _pixel_range(v.amin(-1), v.amax(-1), H)
    ny = torch.where(valid & (nx > 0), ny, torch.zeros_like(ny)).reshape(-1)
    box = (nx.reshape(-1) * ny)
    row0 = (torch.arange(B, device=verts.device).view(B, 1) * H + i0).reshape(-1)  # b * H + i0
    face_ids = torch.arange(B * F, device=verts.device)

    scanlines = _stage("scanlines", _scanline_stage, compile)
    pixels = _stage("pixels", _pixel_stage, compile)
    buf = torch.full((B * H * W,), _KEY_EMPTY, dtype=torch.int64, device=verts.device)
    for f0, f1 in _chunk_bounds(box, max_candidates):
        # Scanlines of each face, then the pixel span of each scanline.
        rface, r = _expand(face_ids[f0:f1], ny[f0:f1])
        if rface.numel() == 0:
            continue
        brow, col0, ncol = scanlines(rface, r, row0, spans, H, W)
        pair, dx = _expand(torch.arange(rface.numel(), device=verts.device), ncol)
        if pair.numel() == 0:
            continue
        pix, key = pixels(rface, pair, dx, brow, col0, fparams, F, H, W, perspective_correct)
        buf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)

    face_idx = torch.where(buf == _KEY_EMPTY, torch.full_like(buf, -1), buf & _FACE_MASK)
    return face_idx.view(B, H, W)


def barycentrics_from_face_ids(
    verts_ndc: Tensor,
    faces: Tensor,
    face_idx: Tensor,
    *,
    perspective_correct: bool = False,
) -> Fragments:
    """Differentiable pass: barycentrics and depth of the given face at each pixel centre.

    Args:
        verts_ndc: [B, V, 3] (x_ndc, y_ndc, depth).
        faces: [F, 3] or [B, F, 3] int64.
        face_idx: [B, H, W] int64 from :func:`rasterize_face_ids` (-1 = background).
        perspective_correct: interpolate in 3D (weights divided by depth) instead of
            screen-linearly; needs depth > 0.
    Returns:
        :class:`Fragments`.
    """
    B, H, W = face_idx.shape
    mask = face_idx >= 0
    f = face_idx.clamp(min=0).view(B, H * W)
    faces_b = _face_vertex_ids(faces, B)
    vert_idx = torch.gather(faces_b, 1, f.unsqueeze(-1).expand(-1, -1, 3))  # [B, HW, 3]
    vert_idx = torch.where(mask.view(B, H * W, 1), vert_idx, torch.zeros_like(vert_idx))
    tri = torch.gather(verts_ndc, 1, vert_idx.reshape(B, H * W * 3, 1).expand(-1, -1, 3))
    tri = tri.view(B, H * W, 3, 3)
    dev, dt = verts_ndc.device, verts_ndc.dtype
    # Barycentrics are affine invariant, so they are computed directly in NDC.
    xs = (torch.arange(W, device=dev, dtype=dt) + 0.5) * (2.0 / W) - 1.0
    ys = 1.0 - (torch.arange(H, device=dev, dtype=dt) + 0.5) * (2.0 / H)
    px = xs.view(1, W).expand(H, W).reshape(1, H * W)
    py = ys.view(H, 1).expand(H, W).reshape(1, H * W)
    x0, x1, x2 = tri[..., 0, 0], tri[..., 1, 0], tri[..., 2, 0]
    y0, y1, y2 = tri[..., 0, 1], tri[..., 1, 1], tri[..., 2, 1]
    m = mask.view(B, H * W)
    d = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    # Background pixels use face 0 which may be degenerate: keep their math finite so
    # masked-out gradients stay 0 instead of NaN.
    d = torch.where(m & (d != 0), d, torch.ones_like(d))
    w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / d
    w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / d
    w2 = 1.0 - w0 - w1
    bary = torch.stack([w0, w1, w2], dim=-1)
    z = tri[..., 2]
    if perspective_correct:
        zs = torch.where(m[..., None], z, torch.ones_like(z))
        wz = bary / zs
        inv_depth = wz.sum(-1)
        bary = wz / inv_depth[..., None]
        depth = 1.0 / inv_depth
    else:
        depth = (bary * z).sum(-1)
    bary = torch.where(m[..., None], bary, torch.zeros_like(bary))
    depth = torch.where(m, depth, torch.zeros_like(depth))
    return Fragments(
        face_idx=face_idx,
        bary=bary.view(B, H, W, 3),
        depth=depth.view(B, H, W),
        mask=mask,
        vert_idx=vert_idx.view(B, H, W, 3),
    )


def rasterize(
    verts_ndc: Tensor,
    faces: Tensor,
    image_size: int | tuple[int, int],
    *,
    cull_backfaces: bool = False,
    perspective_correct: bool = False,
    znear: float | None = None,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    compile: bool = False,
) -> Fragments:
    """Rasterize triangle meshes with a z-buffer (nearest face per pixel centre).

    Args:
        verts_ndc: [B, V, 3] (x_ndc, y_ndc, depth) as produced by a camera's
            ``project``: x right, y up in [-1, 1], smaller depth = closer.
        faces: [F, 3] int64 shared by the batch, or [B, F, 3] per mesh.
        image_size: H or (H, W).
        cull_backfaces: drop faces that are clockwise in NDC (seen from behind when
            faces are counter-clockwise seen from outside, the OpenGL convention).
        perspective_correct: barycentrics corrected by depth (use for perspective
            cameras; depth must be > 0).
        znear: if given, faces with any vertex at depth <= znear are dropped (no clipping).
        max_candidates: memory bound: (triangle, pixel) candidates per chunk.
        compile: run the per-candidate stages through ``torch.compile`` (same
            results; faster on GPU after a one-off compilation per shape regime).
    Returns:
        :class:`Fragments`; ``bary`` and ``depth`` carry gradients to ``verts_ndc``.
    """
    _check_inputs(verts_ndc, faces)
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    face_idx = rasterize_face_ids(
        verts_ndc, faces, (H, W), cull_backfaces=cull_backfaces,
        perspective_correct=perspective_correct, znear=znear, max_candidates=max_candidates,
        compile=compile)
    return barycentrics_from_face_ids(verts_ndc, faces, face_idx, perspective_correct=perspective_correct)


@dataclass
class RasterSettings:
    """Settings of the built-in PyTorch rasterizer."""

    cull_backfaces: bool = False
    """Drop faces seen from behind (clockwise in NDC)."""
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    """Memory bound: (triangle, pixel) candidates processed per chunk."""
    compile: bool = False
    """Fuse the per-candidate stages with ``torch.compile`` (GPU throughput)."""


class TorchRasterizer:
    """Rasterizer backend in pure PyTorch (the default); see :func:`rasterize`."""

    def __init__(self, settings: RasterSettings | None = None) -> None:
        self.settings = settings or RasterSettings()

    def __call__(
        self,
        verts_ndc: Tensor,
        faces: Tensor,
        image_size: int | tuple[int, int],
        *,
        perspective_correct: bool = False,
        znear: float | None = None,
    ) -> Fragments:
        """[B, V, 3] NDC vertices, [F, 3] or [B, F, 3] faces -> :class:`Fragments`."""
        return rasterize(
            verts_ndc, faces, image_size, cull_backfaces=self.settings.cull_backfaces,
            perspective_correct=perspective_correct, znear=znear,
            max_candidates=self.settings.max_candidates, compile=self.settings.compile)
