"""Cameras: projection formulas, pixel convention, OpenGL matrices round trip."""
from __future__ import annotations

import math

import pytest
import torch

from dcnn_flame.render.camera import (
    OrthographicCamera, PerspectiveCamera, as_camera, from_pixels, project_landmarks, to_pixels)
from dcnn_flame.render.rasterize import rasterize


def random_rotation(g, B):
    q = torch.nn.functional.normalize(torch.randn(B, 4, generator=g, dtype=torch.float64), dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).view(B, 3, 3)


def apply_gl(proj, view, points):
    ph = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    clip = ph @ (proj @ view).transpose(1, 2)
    return clip


def test_orthographic_projection_formula():
    cam = torch.tensor([[2.0, 0.1, -0.2], [0.5, 0.0, 0.3]], dtype=torch.float64)
    pts = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = OrthographicCamera(cam).project(pts)
    for b in range(2):
        s, tx, ty = cam[b].tolist()
        for n in range(5):
            x, y, z = pts[b, n].tolist()
            assert out[b, n].tolist() == pytest.approx([s * (x + tx), s * (y + ty), -z])


def test_orthographic_opengl_matrices_round_trip():
    g = torch.Generator().manual_seed(1)
    cam = torch.tensor([[2.0, 0.1, -0.2], [0.5, 0.0, 0.3]], dtype=torch.float64)
    pts = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    camera = OrthographicCamera(cam)
    near, far, dist = 0.1, 20.0, 5.0
    P, V = camera.opengl_matrices(near, far, dist)
    clip = apply_gl(P, V, pts)
    torch.testing.assert_close(clip[..., 3], torch.ones_like(clip[..., 3]))
    ndc = camera.project(pts)
    torch.testing.assert_close(clip[..., :2], ndc[..., :2])
    # OpenGL depth is affine in eye z = z - dist; our depth is -z.
    z_eye = pts[..., 2] - dist
    torch.testing.assert_close(clip[..., 2], -2 / (far - near) * z_eye - (far + near) / (far - near))
    eye = pts @ V[:, :3, :3].transpose(1, 2) + V[:, None, :3, 3]
    torch.testing.assert_close(-eye[..., 2] - dist, ndc[..., 2])


def test_perspective_projection_and_opengl_round_trip():
    g = torch.Generator().manual_seed(2)
    B = 3
    R = random_rotation(g, B)
    t = torch.tensor([[0.0, 0.0, -4.0], [0.3, -0.1, -5.0], [0.0, 0.2, -3.0]], dtype=torch.float64)
    focal = torch.tensor([[2.0, 2.5], [1.5, 1.5], [3.0, 2.0]], dtype=torch.float64)
    pp = torch.tensor([[0.0, 0.0], [0.1, -0.05], [-0.2, 0.1]], dtype=torch.float64)
    camera = PerspectiveCamera(focal=focal, R=R, t=t, principal_point=pp)
    pts = torch.randn(B, 6, 3, generator=g, dtype=torch.float64) * 0.5
    ndc = camera.project(pts)
    eye = pts @ R.transpose(1, 2) + t[:, None]
    depth = -eye[..., 2]
    torch.testing.assert_close(ndc[..., 2], depth)
    torch.testing.assert_close(ndc[..., 0], focal[:, None, 0] * eye[..., 0] / depth + pp[:, None, 0])
    near, far = 0.5, 50.0
    P, V = camera.opengl_matrices(near, far)
    clip = apply_gl(P, V, pts)
    torch.testing.assert_close(clip[..., 3], ndc[..., 2])
    torch.testing.assert_close(clip[..., :2] / clip[..., 3:], ndc[..., :2])
    zn = clip[..., 2] / clip[..., 3]
    assert ((zn > -1) & (zn < 1)).all()
    # Points at the near / far planes map to OpenGL z = -1 / +1.
    on_planes = torch.tensor([[[0.0, 0.0, -near], [0.0, 0.0, -far]]], dtype=torch.float64)
    ident = PerspectiveCamera(focal=focal[:1], R=torch.eye(3, dtype=torch.float64)[None],
                              t=torch.zeros(1, 3, dtype=torch.float64))
    P1, V1 = ident.opengl_matrices(near, far)
    c = apply_gl(P1, V1, on_planes)
    torch.testing.assert_close(c[0, :, 2] / c[0, :, 3], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_focal_from_pixels_and_fov():
    f = PerspectiveCamera.focal_from_pixels(torch.tensor([112.0]), 224, 448)
    torch.testing.assert_close(f, torch.tensor([[0.5, 1.0]]))
    # A 90 degree vertical FOV puts y_eye = depth at the top edge (y_ndc = 1).
    cam = PerspectiveCamera(focal=torch.tensor([1.0 / math.tan(math.pi / 4)]), R=torch.eye(3)[None],
                            t=torch.zeros(1, 3))
    out = cam.project(torch.tensor([[[0.0, 2.0, -2.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 2.0]]]))


def test_pixel_convention_y_up_is_image_up():
    H, W = 6, 8
    pix = to_pixels(torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]), H, W)
    torch.testing.assert_close(pix, torch.tensor([[0.0, 0.0], [8.0, 6.0], [4.0, 3.0]]))
    back = from_pixels(pix, H, W)
    torch.testing.assert_close(back, torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]))
    # A triangle high in +y lands in the top rows of the rasterized image.
    verts = torch.tensor([[[-0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.95, 0.0]]])
    camera = OrthographicCamera(torch.tensor([[1.0, 0.0, 0.0]]))
    frag = rasterize(camera.project(verts), torch.tensor([[0, 1, 2]]), (H, W))
    rows = frag.mask[0].any(1).nonzero().squeeze(1)
    assert rows.max() < H // 2


def test_project_landmarks_pixels_and_ndc():
    lmk = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.1]]])
    pix, ndc = project_landmarks(lmk, torch.tensor([[1.0, 0.0, 0.0]]), 224)
    torch.testing.assert_close(ndc, torch.tensor([[[0.0, 0.0], [0.5, 0.5]]]))
    torch.testing.assert_close(pix, torch.tensor([[[112.0, 112.0], [168.0, 56.0]]]))


def test_camera_input_errors():
    with pytest.raises(ValueError, match=r"cam must be \[B, 3\]"):
        OrthographicCamera(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="does not match points batch"):
        OrthographicCamera(torch.zeros(2, 3)).project(torch.zeros(3, 4, 3))
    with pytest.raises(TypeError, match="camera must be"):
        as_camera("ortho")
