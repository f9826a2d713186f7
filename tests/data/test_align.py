"""Alignment geometry: matrices, point transforms and the image warp agree to sub-pixel."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dcnn_flame.data import align as A


def _similarity(scale, angle_deg, tx, ty):
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def test_box_alignment_square_and_centre():
    m = A.box_alignment(np.array([50, 80, 150, 240]), margin=0.25, size=224)
    side = 160 * 1.5
    np.testing.assert_allclose(A.transform_points(m, np.array([100.0, 160.0])), [112, 112])
    np.testing.assert_allclose(m[:, :2], np.eye(2) * 224 / side)
    np.testing.assert_allclose(A.crop_box(m, 224), [100 - side / 2, 160 - side / 2, 100 + side / 2, 160 + side / 2])
    with pytest.raises(ValueError, match="positive width"):
        A.box_alignment(np.array([10, 10, 10, 30]))


def test_transform_points_matches_loop():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 3))
    pts = rng.normal(size=(7, 68, 2)) * 100
    out = A.transform_points(m, pts)
    for i in range(7):
        for k in range(68):
            x, y = pts[i, k]
            np.testing.assert_allclose(out[i, k], [m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]])
    np.testing.assert_allclose(A.transform_points(A.invert(m), out), pts, atol=1e-8)


@pytest.mark.parametrize("scale,angle", [(0.7, 20.0), (2.5, -35.0), (1.0, 0.0)])
def test_umeyama_recovers_similarity(scale, angle):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 300, (5, 2))
    m = _similarity(scale, angle, 12.0, -40.0)
    est = A.umeyama_similarity(src, A.transform_points(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)
    # never a reflection, even when the best fit would be one
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(A.umeyama_similarity(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        A.umeyama_similarity(np.ones((5, 2)), src)


def test_landmarks5_alignment_puts_points_on_template():
    tpl = A.template5(margin=0.1, size=224)
    m = _similarity(3.1, 17.0, 400.0, 250.0)
    src = A.transform_points(A.invert(m), tpl)  # a face whose 5 points are an exact similarity of the template
    est = A.landmarks5_alignment(src, margin=0.1, size=224)
    np.testing.assert_allclose(A.transform_points(est, src), tpl, atol=1e-9)
    with pytest.raises(ValueError, match="NaN"):
        A.landmarks5_alignment(np.full((5, 2), np.nan))


def _naive_bilinear_warp(img, m, size):
    """Reference: for each output pixel centre, bilinear sample of the source (zeros outside)."""
    inv = A.invert(m)
    h, w = img.shape[:2]
    out = np.zeros((size, size, img.shape[2]), dtype=np.float64)
    for v in range(size):
        for u in range(size):
            x, y = A.transform_points(inv, np.array([u + 0.5, v + 0.5])) - 0.5  # index coords
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            acc = np.zeros(img.shape[2])
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        acc += wy * wx * img[yy, xx]
            out[v, u] = acc
    return out


def test_warp_matches_naive_bilinear():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)
    m = _similarity(1.3, 25.0, 4.0, -6.0)
    fast = A.warp_image(img, m, size=24).astype(np.float64)
    ref = _naive_bilinear_warp(img.astype(np.float64), m, 24)
    inside = np.ones((24, 24), dtype=bool)
    inside[[0, -1], :] = inside[:, [0, -1]] = False  # edge pixels mix the black border
    assert np.abs(fast - ref)[inside].max() <= 2.0  # OpenCV's fixed-point bilinear weights


def _blob(h, w, cx, cy, sigma):
    y, x = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(img):
    g = img[..., 0].astype(np.float64)
    y, x = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
    return np.array([(g * x).sum() / g.sum(), (g * y).sum() / g.sum()])


@pytest.mark.parametrize("scale,angle,sigma", [(2.0, 10.0, 3.0), (0.25, -20.0, 16.0), (0.6, 5.0, 6.0)])
def test_warp_and_points_agree(scale, angle, sigma):
    """A blob at p in the source lands where transform_points puts p (pixel-centre convention),
    both when upsampling and on the shrink path (INTER_AREA pre-shrink)."""
    h, w = 900, 700
    p = np.array([331.7, 452.2])
    img = _blob(h, w, *p, sigma)
    m = _similarity(scale, angle, 0.0, 0.0)
    m[:, 2] = 112 - m[:, :2] @ p + np.array([3.3, -5.1])
    out = A.warp_image(img, m, 224)
    np.testing.assert_allclose(_centroid(out), A.transform_points(m, p), atol=0.25)


def test_warp_outside_is_black_and_center_box():
    img = np.full((50, 50, 3), 200, np.uint8)
    m = A.box_alignment(np.array([1000, 1000, 1100, 1100]), 0.1, 32)
    assert (A.warp_image(img, m, 32) == 0).all()
    np.testing.assert_allclose(A.center_box(100, 200, 0.8), [60, 10, 140, 90])
    np.testing.assert_allclose(A.xywh_to_xyxy(np.array([1, 2, 3, 4])), [1, 2, 4, 6])
