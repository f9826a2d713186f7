"""Cameras: world points -> normalised device coordinates (NDC) plus a view depth.

Conventions shared by the whole renderer
- Eye (view) frame, as in OpenGL: x right, y up, the camera looks along -z. Both
  cameras below see a FLAME head (which faces +z) from the front by default.
- NDC: x right, y up, [-1, 1] across the full image width and height (a non-square
  image stretches NDC; there is no aspect correction inside the rasterizer).
- Pixels: continuous coordinates (u = column, v = row) with
  ``u = (x_ndc + 1) / 2 * W`` and ``v = (1 - y_ndc) / 2 * H``; pixel (row i, column j)
  has its centre at (j + 0.5, i + 0.5). So +y in 3D maps *up* in the image.
- Depth: the third coordinate returned by ``project`` is the view depth
  ``-z_eye`` (distance in front of the camera along its viewing axis):
  **smaller depth = closer**. Orthographic depth is ``-z`` of the world point
  (it may be negative; only the order matters); perspective depth is > 0 in front
  of the camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def to_pixels(ndc: Tensor, height: int, width: int) -> Tensor:
    """NDC x, y -> continuous pixel coordinates (u = column, v = row).

    Args:
        ndc: [..., >=2] points whose first two values are x_ndc, y_ndc.
        height, width: image size.
    Returns:
        [..., 2] (u, v); the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
    """
    u = (ndc[..., 0] + 1.0) * (0.5 * width)
    v = (1.0 - ndc[..., 1]) * (0.5 * height)
    return torch.stack([u, v], dim=-1)


def from_pixels(pix: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`to_pixels`: [..., 2] (u, v) -> [..., 2] (x_ndc, y_ndc)."""
    x = pix[..., 0] * (2.0 / width) - 1.0
    y = 1.0 - pix[..., 1] * (2.0 / height)
    return torch.stack([x, y], dim=-1)


def _check_points(points: Tensor, batch: int, name: str) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name}: points must be [B, N, 3], got {tuple(points.shape)}")
    if points.shape[0] != batch and batch != 1:
        raise ValueError(
            f"{name}: camera batch {batch} does not match points batch {points.shape[0]}")


def _ortho_gl(near: float, far: float, like: Tensor) -> Tensor:
    m = torch.zeros(4, 4, dtype=like.dtype, device=like.device)
    m[2, 2] = -2.0 / (far - near)
    m[2, 3] = -(far + near) / (far - near)
    m[3, 3] = 1.0
    return m


@dataclass
class OrthographicCamera:
    """DECA-style weak-perspective (scaled orthographic) camera.

    ``x_ndc = s * (x + tx)``, ``y_ndc = s * (y + ty)``, depth ``= -z`` (world units).

    Attributes:
        cam: [B, 3] (scale s, tx, ty); tx, ty are in world units, s maps world units
            to NDC (the visible width of the image is ``2 / s`` world units).
    """

    cam: Tensor

    is_perspective = False
    #: Orthographic projection needs no near-plane culling.
    znear = None

    def __post_init__(self) -> None:
        if self.cam.dim() != 2 or self.cam.shape[-1] != 3:
            raise ValueError(
                f"OrthographicCamera: cam must be [B, 3] = (scale, tx, ty), got {tuple(self.cam.shape)}")

    @property
    def batch_size(self) -> int:
        return self.cam.shape[0]

    def project(self, points: Tensor) -> Tensor:
        """[B, N, 3] world points -> [B, N, 3] (x_ndc, y_ndc, depth)."""
        _check_points(points, self.batch_size, "OrthographicCamera.project")
        s = self.cam[:, None, 0:1]
        xy = s * (points[..., :2] + self.cam[:, None, 1:3])
        return torch.cat([xy, -points[..., 2:3]], dim=-1)

    def rotate_to_view(self, vectors: Tensor) -> Tensor:
        """World directions [B, N, 3] -> eye-frame directions (identity here)."""
        return vectors

    def opengl_matrices(
        self, near: float = 0.01, far: float = 100.0, distance: float = 10.0
    ) -> tuple[Tensor, Tensor]:
        """OpenGL projection and view (world -> eye) matrices reproducing ``project``.

        The eye sits at world (-tx, -ty, ``distance``) looking along -z, so eye-space
        ``z_eye = z - distance``; in a DCC tool use an orthographic camera of
        width ``2 / s`` world units there.

        Returns:
            (projection [B, 4, 4], view [B, 4, 4]); ``P @ V @ [x, y, z, 1]`` gives clip
            coordinates with w = 1 whose x, y equal ``project``'s x_ndc, y_ndc, and
            ``depth = -z_eye - distance``.
        """
        B = self.batch_size
        proj = _ortho_gl(near, far, self.cam).expand(B, 4, 4).clone()
        proj[:, 0, 0] = self.cam[:, 0]
        proj[:, 1, 1] = self.cam[:, 0]
        view = torch.eye(4, dtype=self.cam.dtype, device=self.cam.device).expand(B, 4, 4).clone()
        view[:, 0, 3] = self.cam[:, 1]
        view[:, 1, 3] = self.cam[:, 2]
        view[:, 2, 3] = -distance
        return proj, view


@dataclass
class PerspectiveCamera:
    """Pinhole camera in the OpenGL eye convention.

    ``X_eye = R @ X + t``; ``depth = -z_eye``;
    ``x_ndc = fx * x_eye / depth + cx``, ``y_ndc = fy * y_eye / depth + cy``.
    With ``R = I`` and ``t = (0, 0, -d)`` the camera sits at world (0, 0, d) looking
    at the origin along -z.

    Attributes:
        focal: [B] or [B, 2] focal length in NDC units (``2 * f_pixels / size``; for a
            vertical field of view ``fov``, ``fy = 1 / tan(fov / 2)``). Use
            :meth:`focal_from_pixels` to convert.
        R: [B, 3, 3] world -> eye rotation.
        t: [B, 3] world -> eye translation.
        principal_point: optional [B, 2] NDC offset (cx, cy) of the optical axis; 0 = centre.
        znear: faces with a vertex at depth <= znear are not rasterized (no clipping).
    """

    focal: Tensor
    R: Tensor
    t: Tensor
    principal_point: Tensor | None = None
    znear: float = 1e-3

    is_perspective = True

    def __post_init__(self) -> None:
        B = self.R.shape[0]
        if self.R.shape != (B, 3, 3) or self.t.shape != (B, 3):
            raise ValueError(
                f"PerspectiveCamera: R must be [B, 3, 3] and t [B, 3], got "
                f"{tuple(self.R.shape)} and {tuple(self.t.shape)}")
        if self.focal.dim() == 1:
            self.focal = self.focal[:, None].expand(-1, 2)
        if self.focal.shape != (B, 2):
            raise ValueError(f"PerspectiveCamera: focal must be [B] or [B, 2], got {tuple(self.focal.shape)}")
        if self.principal_point is not None and self.principal_point.shape != (B, 2):
            raise ValueError(
                f"PerspectiveCamera: principal_point must be [B, 2], got {tuple(self.principal_point.shape)}")

    @staticmethod
    def focal_from_pixels(focal_px: Tensor, height: int, width: int) -> Tensor:
        """Focal length in pixels ([B] or [B, 2] as (fx, fy)) -> NDC [B, 2]."""
        if focal_px.dim() == 1:
            focal_px = torch.stack([focal_px, focal_px], dim=-1)
        return focal_px * focal_px.new_tensor([2.0 / width, 2.0 / height])

    @property
    def batch_size(self) -> int:
        return self.R.shape[0]

    def to_eye(self, points: Tensor) -> Tensor:
        """[B, N, 3] world points -> eye-frame points."""
        return points @ self.R.transpose(1, 2) + self.t[:, None, :]

    def rotate_to_view(self, vectors: Tensor) -> Tensor:
        """World directions [B, N, 3] -> eye-frame directions."""
        return vectors @ self.R.transpose(1, 2)

    def project(self, points: Tensor) -> Tensor:
        """[B, N, 3] world points -> [B, N, 3] (x_ndc, y_ndc, depth > 0 in front)."""
        _check_points(points, self.batch_size, "PerspectiveCamera.project")
        pe = self.to_eye(points)
        depth = -pe[..., 2:3]
        xy = self.focal[:, None, :] * pe[..., :2] / depth
        if self.principal_point is not None:
            xy = xy + self.principal_point[:, None, :]
        return torch.cat([xy, depth], dim=-1)

    def opengl_matrices(self, near: float = 0.01, far: float = 100.0) -> tuple[Tensor, Tensor]:
        """OpenGL projection and view (world -> eye) matrices reproducing ``project``.

        Returns:
            (projection [B, 4, 4], view [B, 4, 4]); ``clip = P @ V @ [x, y, z, 1]``,
            ``clip[:2] / clip[3]`` equals ``project``'s (x_ndc, y_ndc) and
            ``clip[3]`` equals its depth.
        """
        B = self.batch_size
        proj = torch.zeros(B, 4, 4, dtype=self.R.dtype, device=self.R.device)
        proj[:, 0, 0] = self.focal[:, 0]
        proj[:, 1, 1] = self.focal[:, 1]
        if self.principal_point is not None:
            # clip_x = fx x_e - cx z_e, w = -z_e  =>  x_ndc = fx x_e / depth + cx
            proj[:, 0, 2] = -self.principal_point[:, 0]
            proj[:, 1, 2] = -self.principal_point[:, 1]
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2.0 * far * near / (far - near)
        proj[:, 3, 2] = -1.0
        view = torch.zeros(B, 4, 4, dtype=self.R.dtype, device=self.R.device)
        view[:, :3, :3] = self.R
        view[:, :3, 3] = self.t
        view[:, 3, 3] = 1.0
        return proj, view


Camera = OrthographicCamera | PerspectiveCamera


def as_camera(camera: Camera | Tensor) -> Camera:
    """Accept a camera object or a DECA ``cam`` tensor [B, 3] (-> orthographic)."""
    if isinstance(camera, (OrthographicCamera, PerspectiveCamera)):
        return camera
    if isinstance(camera, Tensor):
        return OrthographicCamera(camera)
    raise TypeError(
        f"camera must be an OrthographicCamera, a PerspectiveCamera or a [B, 3] tensor, "
        f"got {type(camera).__name__}")


def project_landmarks(
    landmarks3d: Tensor, camera: Camera | Tensor, image_size: int | tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Project 3D landmarks to the image.

    Args:
        landmarks3d: [B, L, 3] world points (L = 68 for iBUG landmarks).
        camera: camera object or DECA ``cam`` [B, 3].
        image_size: H or (H, W).
    Returns:
        (pixels [B, L, 2] as (u = column, v = row), ndc [B, L, 2] as (x, y), y up).
    """
    H, W = _size_hw(image_size)
    ndc = as_camera(camera).project(landmarks3d)[..., :2]
    return to_pixels(ndc, H, W), ndc


def _size_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    H, W = image_size
    return int(H), int(W)
