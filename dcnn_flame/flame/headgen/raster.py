"""A small vectorised NumPy triangle rasteriser (texture painting and previews).

Pixel (row i, column j) has its centre at continuous coordinates (j + 0.5, i + 0.5);
points are given as (column, row). The nearest triangle (smallest depth) wins.
"""
from __future__ import annotations

import numpy as np


def rasterize(points: np.ndarray, depth: np.ndarray | None, faces: np.ndarray, height: int,
              width: int, chunk: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each pixel centre, with barycentric coordinates.

    Args:
        points: [N, 2] (column, row) continuous pixel coordinates.
        depth: [N] per-point depth (smaller = in front) or None (any cover wins).
        faces: [F, 3] int point indices.
        height, width: output size.
        chunk: max (triangle, pixel) candidate pairs handled at once (memory bound).

    Returns:
        face_id [H, W] int64 (-1 where empty) and bary [H, W, 3] float64.
    """
    faces = np.asarray(faces, dtype=np.int64)
    tri = points[faces]  # [F, 3, 2]
    x0 = np.clip(np.ceil(tri[..., 0].min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(tri[..., 0].max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(tri[..., 1].min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(tri[..., 1].max(1) - 0.5), -1, height - 1).astype(np.int64)
    nx = np.maximum(x1 - x0 + 1, 0)
    ny = np.maximum(y1 - y0 + 1, 0)
    counts = nx * ny
    face_id = np.full(height * width, -1, dtype=np.int64)
    best = np.full(height * width, np.inf)
    bary_out = np.zeros((height * width, 3))
    order = np.arange(len(faces))
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        # Take as many faces as fit in one chunk (at least one).
        base = ends[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(ends, base + chunk, side="right"))
        stop = max(stop, start + 1)
        sel = order[start:stop]
        start = stop
        c = counts[sel]
        total = int(c.sum())
        if total == 0:
            continue
        fid = np.repeat(sel, c)
        local = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
        px = x0[fid] + local % nx[fid]
        py = y0[fid] + local // nx[fid]
        cx = px + 0.5
        cy = py + 0.5
        a, b, d = tri[fid, 0], tri[fid, 1], tri[fid, 2]
        area = (b[:, 0] - a[:, 0]) * (d[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (d[:, 0] - a[:, 0])
        ok = np.abs(area) > 1e-12
        area = np.where(ok, area, 1.0)
        w0 = ((b[:, 0] - cx) * (d[:, 1] - cy) - (b[:, 1] - cy) * (d[:, 0] - cx)) / area
        w1 = ((d[:, 0] - cx) * (a[:, 1] - cy) - (d[:, 1] - cy) * (a[:, 0] - cx)) / area
        w2 = 1.0 - w0 - w1
        eps = -1e-9
        inside = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
        if not inside.any():
            continue
        fid, px, py = fid[inside], px[inside], py[inside]
        bary = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
        pix = py * width + px
        if depth is None:
            z = np.zeros(len(fid))
        else:
            z = (depth[faces[fid]] * bary).sum(1)
        # Keep the nearest candidate per pixel, then merge with earlier chunks.
        srt = np.lexsort((z, pix))
        pix, z, fid, bary = pix[srt], z[srt], fid[srt], bary[srt]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, z, fid, bary = pix[first], z[first], fid[first], bary[first]
        better = z < best[pix]
        pix, z, fid, bary = pix[better], z[better], fid[better], bary[better]
        best[pix] = z
        face_id[pix] = fid
        bary_out[pix] = bary
    return face_id.reshape(height, width), bary_out.reshape(height, width, 3)


def fill_empty(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy each empty pixel from its nearest valid pixel (texture seam padding).

    Args:
        image: [H, W, ...] values.
        valid: [H, W] bool.
    """
    from scipy.ndimage import distance_transform_edt

    if valid.all() or not valid.any():
        return image
    _, (iy, ix) = distance_transform_edt(~valid, return_indices=True)
    return image[iy, ix]
