"""Face alignment geometry: source image -> square crop (224x224) and landmarks with it.

An alignment is a 2x3 matrix ``M`` that maps source pixel coordinates to aligned ones,
``p_aligned = M[:, :2] @ p + M[:, 2]``. Coordinates follow the shard schema: x right, y
down, continuous, pixel centres at +0.5 (pixel (0, 0) covers [0, 1) x [0, 1)).

Two ways to get ``M``:
- :func:`box_alignment`: a square around a face box, grown by ``margin`` of the box size
  on each side (scale + translation only; what VGGFace2's loose boxes and detectors give).
- :func:`landmarks5_alignment`: the least-squares similarity (Umeyama 1991) that takes the 5
  landmarks (eyes, nose tip, mouth corners) onto a fixed template, which also removes roll.
"""
from __future__ import annotations

import math

import numpy as np

#: 5-point template (right eye, left eye, nose tip, right mouth corner, left mouth corner;
#: subject's right = image left) in a unit square that is the *face box* (margin 0).
#: With margin m the points move towards the centre by 1 / (1 + 2 m), like the box crop.
TEMPLATE5_UNIT = np.array([[0.34, 0.44], [0.66, 0.44], [0.50, 0.62], [0.37, 0.80], [0.63, 0.80]],
                          dtype=np.float64)


def xywh_to_xyxy(box: np.ndarray) -> np.ndarray:
    """[..., 4] (x, y, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    b = np.asarray(box, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def center_box(height: int, width: int, fraction: float = 0.8) -> np.ndarray:
    """[4] x0, y0, x1, y1 of a centred square with side ``fraction * min(height, width)``
    (the face box assumed when no detector is available)."""
    side = fraction * min(height, width)
    cx, cy = width / 2.0, height / 2.0
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float64)


def box_alignment(box_xyxy: np.ndarray, margin: float = 0.1, size: int = 224) -> np.ndarray:
    """[2, 3] matrix mapping the square around ``box_xyxy`` onto [0, size]^2.

    The square is centred on the box, with side ``max(w, h) * (1 + 2 * margin)``.

    Args:
        box_xyxy: [4] x0, y0, x1, y1 in source pixels.
        margin: extra fraction of the box size on each side.
        size: output side in pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64)[:4])
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"face box must have positive width and height, got {[x0, y0, x1, y1]}")
    side = max(w, h) * (1.0 + 2.0 * margin)
    s = size / side
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]], dtype=np.float64)


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    taking ``src`` points onto ``dst`` (Umeyama 1991).

    Args:
        src: [N, 2] points, N >= 2.
        dst: [N, 2] points.

    Returns:
        [2, 3] matrix M with dst ~= M[:, :2] @ src + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / n
    if var_s <= 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide): cannot align from them")
    cov = xd.T @ xs / n
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def template5(margin: float = 0.1, size: int = 224) -> np.ndarray:
    """[5, 2] target positions of the 5 landmarks in the aligned image."""
    return (0.5 + (TEMPLATE5_UNIT - 0.5) / (1.0 + 2.0 * margin)) * size


def landmarks5_alignment(lmk5: np.ndarray, margin: float = 0.1, size: int = 224) -> np.ndarray:
    """[2, 3] similarity taking 5 source landmarks onto :func:`template5`.

    Args:
        lmk5: [5, 2] right eye, left eye, nose tip, right/left mouth corner (source pixels).
    """
    lmk5 = np.asarray(lmk5, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(lmk5)):
        raise ValueError("5-point landmarks contain NaN/inf")
    return umeyama_similarity(lmk5, template5(margin, size))


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [2, 3] alignment to [..., 2] points (NaN stays NaN)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a [2, 3] affine matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([a_inv, (-a_inv @ m[:, 2])[:, None]], axis=1)


def crop_box(matrix: np.ndarray, size: int = 224) -> np.ndarray:
    """[4] x0, y0, x1, y1: the source-image bounding box of the aligned square's preimage
    (the square itself for box alignments)."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    src = transform_points(invert(matrix), corners)
    return np.concatenate([src.min(0), src.max(0)])


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int = 224) -> np.ndarray:
    """Resample ``image`` into the aligned frame (bilinear; area-averaged when shrinking,
    so large photos do not alias); outside the source is black.

    Args:
        image: [H, W, 3] uint8.
        matrix: [2, 3] source -> aligned.
        size: output side.

    Returns:
        [size, size, 3] uint8.
    """
    import cv2

    m = np.asarray(matrix, dtype=np.float64)
    h, w = image.shape[:2]
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    src = image
    if scale < 0.95:
        # Pre-shrink only the needed region with INTER_AREA, then the warp is ~1:1.
        x0, y0, x1, y1 = crop_box(m, size)
        pad = 2.0 / scale
        ix0, iy0 = max(int(math.floor(x0 - pad)), 0), max(int(math.floor(y0 - pad)), 0)
        ix1, iy1 = min(int(math.ceil(x1 + pad)), w), min(int(math.ceil(y1 + pad)), h)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.zeros((size, size, 3), dtype=np.uint8)
        region = image[iy0:iy1, ix0:ix1]
        nw = max(1, int(round((ix1 - ix0) * scale)))
        nh = max(1, int(round((iy1 - iy0) * scale)))
        src = cv2.resize(np.ascontiguousarray(region), (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / (ix1 - ix0), nh / (iy1 - iy0)
        # p = q / s + offset  =>  aligned = A (q / s + offset) + t
        a = m[:, :2] @ np.diag([1.0 / sx, 1.0 / sy])
        t = m[:, :2] @ np.array([ix0, iy0], dtype=np.float64) + m[:, 2]
        m = np.concatenate([a, t[:, None]], axis=1)
    # OpenCV puts pixel centres at integers: shift the continuous (+0.5) convention.
    mi = m.copy()
    mi[:, 2] = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    out = cv2.warpAffine(np.ascontiguousarray(src), mi, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out
