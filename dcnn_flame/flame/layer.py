"""FlameLayer: the differentiable FLAME head model as a stateless torch module.

From Li et al. 2017 ("Learning a model of facial shape and expression from 4D scans"):

    M(beta, theta, psi) = W(T_P(beta, theta, psi), J, theta, weights)
    T_P = T + B_S(beta) + B_E(psi) + B_P(theta)

plus optional FLAME-2023 eyelid blendshapes, a global translation, and the 68 iBUG
landmarks embedded barycentrically on the posed surface.

Conventions
    * Pose is 15 axis-angle values (radians): global, neck, jaw, left eye, right eye
      (:data:`dcnn_flame.constants.FLAME_JOINTS`).
    * Joints are regressed from ``T + B_S + B_E (+ eyelids)``, i.e. with expression.
      The paper writes ``J(beta)``, but FLAME's released model keeps shape and
      expression in one basis and regresses joints from the fully blended template;
      parameters fitted in the field (DECA, EMOCA) assume that, so we follow it.
    * Coordinates: FLAME's frame, y up, the face looking along +z (towards a camera on
      the +z axis), x towards the subject's left.
    * Head yaw (dynamic contour landmarks): with ``R = R_global @ R_neck`` and the
      face direction ``f = R @ e_z``, ``yaw = atan2(f_x, f_z)`` in degrees. This is the
      yaw of the decomposition ``R = R_y(yaw) R_x(pitch) R_z(roll)``. Positive yaw is a
      right-handed turn about +y: the face turns towards +x, i.e. the head turns to its
      own left (to the right of the image for a camera on +z). Yaw is clamped to
      [-39, 39] and rounded; contour bin ``k = yaw + 39`` (0..78) holds the contour for
      yaw ``k - 39`` degrees, so bin 39 is frontal. Builders of ``dynamic_faces`` must
      use this layout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dcnn_flame.constants import (
    NUM_CONTOUR_LANDMARKS,
    NUM_FLAME_JOINTS,
    NUM_LANDMARKS,
    NUM_STATIC_LANDMARKS,
    POSE_DIM,
)
from dcnn_flame.flame.data import FlameModelData, LandmarkEmbedding
from dcnn_flame.flame.lbs import (
    batch_rodrigues,
    check_parents,
    compute_dtype,
    linear_blend_skinning,
)

__all__ = [
    "FlameLayer",
    "FlameOutput",
    "MAX_CONTOUR_YAW_DEG",
    "head_yaw_degrees",
    "yaw_to_contour_bin",
]

#: Dynamic contour bins cover yaw -39..39 degrees, one bin per degree.
MAX_CONTOUR_YAW_DEG = 39
_NUM_CONTOUR_BINS = 2 * MAX_CONTOUR_YAW_DEG + 1


@dataclass
class FlameOutput:
    """Result of :meth:`FlameLayer.forward` (float32, or float64 for float64 inputs).

    Attributes:
        vertices: [B, V, 3] posed, translated mesh in metres.
        joints: [B, 5, 3] posed, translated joints (global, neck, jaw, left eye, right eye).
        landmarks: [B, 68, 3] iBUG landmarks on the posed mesh, or None when the model
            has no landmark embedding.
        pose_rotmats: [B, 5, 3, 3] local joint rotations of the pose vector.
        head_yaw: [B] yaw of ``R_global @ R_neck`` in degrees (see module docstring).
        contour_bins: [B] int64 dynamic-contour bin used per sample (39 = frontal), or
            None when the fixed frontal contour was used.
    """

    vertices: Tensor
    joints: Tensor
    landmarks: Tensor | None
    pose_rotmats: Tensor
    head_yaw: Tensor
    contour_bins: Tensor | None = None


def head_yaw_degrees(rotmats: Tensor) -> Tensor:
    """Yaw of the head (global then neck rotation) in degrees.

    Args:
        rotmats: [B, 5, 3, 3] local joint rotations.

    Returns:
        [B] ``atan2(f_x, f_z)`` of the face direction ``f = R_global R_neck e_z``.
    """
    head = rotmats[:, 0] @ rotmats[:, 1]
    return torch.rad2deg(torch.atan2(head[:, 0, 2], head[:, 2, 2]))


def yaw_to_contour_bin(yaw_deg: Tensor) -> Tensor:
    """[B] yaw in degrees -> [B] int64 contour bin ``round(clamp(yaw, -39, 39)) + 39``."""
    clamped = yaw_deg.detach().clamp(-MAX_CONTOUR_YAW_DEG, MAX_CONTOUR_YAW_DEG)
    return torch.round(clamped).to(torch.int64) + MAX_CONTOUR_YAW_DEG


def _tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    a = np.ascontiguousarray(array)
    if not a.flags.writeable:
        # e.g. arrays of a head model shipped through Ray's object store (read-only shared
        # memory): torch must not share memory it cannot write, so the buffer gets its own copy.
        a = a.copy()
    return torch.as_tensor(a, dtype=dtype)


def _f32(array: np.ndarray) -> Tensor:
    return _tensor(array, torch.float32)


def _i64(array: np.ndarray) -> Tensor:
    return _tensor(array, torch.int64)


class FlameLayer(nn.Module):
    """Differentiable FLAME: parameters in, mesh/joints/landmarks out.

    Stateless: every parameter is a ``forward`` argument, nothing about the batch is
    stored. The model arrays are registered as non-persistent buffers (float32, indices
    int64): they move with ``.to(device)`` but are not written into checkpoints, which
    keeps the (licensed) FLAME arrays out of saved models; build the layer from the
    same :class:`FlameModelData` when loading. ``layer.double()`` switches to float64.

    Buffers:
        v_template [V, 3]; shapedirs [V, 3, n_shape]; exprdirs [V, 3, n_expr];
        posedirs [36, V*3] (rows = :func:`~dcnn_flame.flame.lbs.pose_features`);
        j_regressor [5, V]; lbs_weights [V, 5]; parents [5]; face_indices [F, 3];
        eyelid_dirs [2, V, 3] (only with ``use_eyelids``); landmark buffers
        lmk_static_vids [51, 3], lmk_static_bary [51, 3], lmk_contour_vids [17, 3],
        lmk_contour_bary [17, 3], and with a dynamic embedding lmk_dynamic_vids
        [79, 17, 3], lmk_dynamic_bary [79, 17, 3] (vertex ids of each landmark's face).

    Args:
        data: the model arrays (real FLAME or procedural).
        n_shape: identity components used (first ``n_shape`` of ``data.shapedirs``).
        n_expr: expression components used.
        use_eyelids: add FLAME-2023 eyelid blendshapes, driven by ``eyelids`` [B, 2].
        dynamic_contour: choose the 17 contour landmarks by head yaw when the embedding
            has a dynamic part; otherwise use the fixed frontal contour.
    """

    def __init__(
        self,
        data: FlameModelData,
        n_shape: int = 100,
        n_expr: int = 50,
        use_eyelids: bool = False,
        dynamic_contour: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= n_shape <= data.num_shape:
            raise ValueError(
                f"n_shape={n_shape} but the model '{data.source or data.edition}' has "
                f"{data.num_shape} shape components; use 0 <= n_shape <= {data.num_shape}"
            )
        if not 0 <= n_expr <= data.num_expression:
            raise ValueError(
                f"n_expr={n_expr} but the model '{data.source or data.edition}' has "
                f"{data.num_expression} expression components; "
                f"use 0 <= n_expr <= {data.num_expression}"
            )
        if use_eyelids and data.eyelid_dirs is None:
            raise ValueError(
                f"use_eyelids=True but the model '{data.source or data.edition}' has no "
                "eyelid blendshapes (FLAME 2023 only); pass use_eyelids=False"
            )
        num_verts = data.num_vertices
        _check_shape("v_template", data.v_template, (num_verts, 3))
        _check_shape("lbs_weights", data.lbs_weights, (num_verts, NUM_FLAME_JOINTS))
        _check_shape("j_regressor", data.j_regressor, (NUM_FLAME_JOINTS, num_verts))
        _check_shape("posedirs", data.posedirs, (num_verts, 3, 9 * (NUM_FLAME_JOINTS - 1)))

        self.n_shape = n_shape
        self.n_expr = n_expr
        self.use_eyelids = use_eyelids
        self.dynamic_contour = dynamic_contour
        parents = data.parents
        self._parents: tuple[int, ...] = tuple(check_parents(parents, NUM_FLAME_JOINTS))

        def buf(name: str, value: Tensor) -> None:
            self.register_buffer(name, value, persistent=False)

        buf("v_template", _f32(data.v_template))
        buf("shapedirs", _f32(data.shapedirs[:, :, :n_shape]))
        buf("exprdirs", _f32(data.exprdirs[:, :, :n_expr]))
        # [V, 3, 36] -> [36, V*3] so the correctives are one [B, 36] @ [36, V*3] matmul.
        buf("posedirs", _f32(data.posedirs.reshape(num_verts * 3, -1).T))
        buf("j_regressor", _f32(data.j_regressor))
        buf("lbs_weights", _f32(data.lbs_weights))
        buf("parents", _i64(parents))
        buf("face_indices", _i64(data.faces))
        if use_eyelids:
            _check_shape("eyelid_dirs", data.eyelid_dirs, (2, num_verts, 3))
            buf("eyelid_dirs", _f32(data.eyelid_dirs))
        self.has_landmarks = data.landmarks is not None
        self.has_dynamic_contour = False
        if data.landmarks is not None:
            self._register_landmarks(data.landmarks, np.asarray(data.faces), buf)

    def _register_landmarks(
        self, lmk: LandmarkEmbedding, faces: np.ndarray, buf: Callable[[str, Tensor], None]
    ) -> None:
        _check_shape("landmarks.static_faces", lmk.static_faces, (NUM_STATIC_LANDMARKS,))
        _check_shape("landmarks.static_bary", lmk.static_bary, (NUM_STATIC_LANDMARKS, 3))
        _check_shape("landmarks.full_faces", lmk.full_faces, (NUM_LANDMARKS,))
        _check_shape("landmarks.full_bary", lmk.full_bary, (NUM_LANDMARKS, 3))
        num_faces = faces.shape[0]
        for name in ("static_faces", "full_faces", "dynamic_faces"):
            ids = getattr(lmk, name)
            if ids is not None and ids.size and not (0 <= ids.min() and ids.max() < num_faces):
                raise ValueError(
                    f"landmarks.{name} holds face ids in [{ids.min()}, {ids.max()}] but the "
                    f"mesh has {num_faces} faces; the embedding belongs to another mesh"
                )
        contour = slice(0, NUM_CONTOUR_LANDMARKS)
        # Store vertex ids of each landmark's triangle: saves a gather per forward.
        buf("lmk_static_vids", _i64(faces[lmk.static_faces]))
        buf("lmk_static_bary", _f32(lmk.static_bary))
        buf("lmk_contour_vids", _i64(faces[lmk.full_faces[contour]]))
        buf("lmk_contour_bary", _f32(lmk.full_bary[contour]))
        if lmk.dynamic_faces is not None and lmk.dynamic_bary is not None:
            _check_shape(
                "landmarks.dynamic_faces", lmk.dynamic_faces,
                (_NUM_CONTOUR_BINS, NUM_CONTOUR_LANDMARKS),
            )
            _check_shape(
                "landmarks.dynamic_bary", lmk.dynamic_bary,
                (_NUM_CONTOUR_BINS, NUM_CONTOUR_LANDMARKS, 3),
            )
            buf("lmk_dynamic_vids", _i64(faces[lmk.dynamic_faces]))
            buf("lmk_dynamic_bary", _f32(lmk.dynamic_bary))
            self.has_dynamic_contour = True

    # ------------------------------------------------------------------ properties
    @property
    def faces(self) -> Tensor:
        """[F, 3] int64 triangle vertex indices (on the layer's device)."""
        return self.face_indices

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.face_indices.shape[0])

    def mean_vertices(self) -> Tensor:
        """[V, 3] the template mesh ``T`` (a copy; zero parameters give exactly this)."""
        return self.v_template.clone()

    # --------------------------------------------------------------------- forward
    def forward(
        self,
        shape: Tensor | None = None,
        expression: Tensor | None = None,
        pose: Tensor | None = None,
        eyelids: Tensor | None = None,
        translation: Tensor | None = None,
    ) -> FlameOutput:
        """Evaluate FLAME. Missing parameters are zeros.

        Batch size, device and dtype come from the inputs given (all None: batch 1 on the
        buffers' device). Computation is float32 (float64 if an input or the buffers are
        float64) with autocast disabled, so it is safe to call inside a bf16 autocast
        region; low-precision inputs are upcast.

        Args:
            shape: [B, n_shape] identity coefficients.
            expression: [B, n_expr] expression coefficients.
            pose: [B, 15] axis-angle (radians) for global, neck, jaw, left eye, right eye.
            eyelids: [B, 2] left/right eyelid closure (needs ``use_eyelids=True``).
            translation: [B, 3] added to vertices, joints and landmarks (metres).

        Returns:
            :class:`FlameOutput`.
        """
        inputs = {
            "shape": (shape, self.n_shape),
            "expression": (expression, self.n_expr),
            "pose": (pose, POSE_DIM),
            "eyelids": (eyelids, 2),
            "translation": (translation, 3),
        }
        if eyelids is not None and not self.use_eyelids:
            raise ValueError("eyelids given but the layer was built with use_eyelids=False")
        given = {k: t for k, (t, _) in inputs.items() if t is not None}
        for name, t in given.items():
            width = inputs[name][1]
            if t.ndim != 2 or t.shape[1] != width:
                raise ValueError(f"{name} must be [B, {width}], got {tuple(t.shape)}")
        device = self.v_template.device
        batch = 1
        if given:
            first_name, first = next(iter(given.items()))
            batch, device = first.shape[0], first.device
        for name, t in given.items():
            if t.shape[0] != batch:
                raise ValueError(
                    f"{name} has batch size {t.shape[0]} but {first_name} has {batch}; "
                    "all inputs must share the batch dimension"
                )
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but {first_name} is on {device}")
        if device != self.v_template.device:
            raise ValueError(
                f"inputs are on {device} but the FLAME buffers are on "
                f"{self.v_template.device}; move the layer with .to(device)"
            )
        dtype = compute_dtype(self.v_template.dtype, *(t.dtype for t in given.values()))

        def value(t: Tensor | None, width: int) -> Tensor:
            if t is None:
                return torch.zeros(batch, width, dtype=dtype, device=device)
            return t.to(dtype)

        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward(
                value(shape, self.n_shape),
                value(expression, self.n_expr),
                value(pose, POSE_DIM),
                value(eyelids, 2) if self.use_eyelids else None,
                value(translation, 3),
            )

    def _forward(
        self,
        shape: Tensor,
        expression: Tensor,
        pose: Tensor,
        eyelids: Tensor | None,
        translation: Tensor,
    ) -> FlameOutput:
        batch = shape.shape[0]
        dtype = shape.dtype
        num_verts = self.num_vertices
        template = self.v_template.to(dtype).reshape(1, num_verts * 3)
        # T + B_S + B_E as two addmm's on the flattened [V*3, K] bases.
        shape_basis = self.shapedirs.to(dtype).reshape(num_verts * 3, self.n_shape)
        expr_basis = self.exprdirs.to(dtype).reshape(num_verts * 3, self.n_expr)
        v_shaped = torch.addmm(template, shape, shape_basis.T)
        v_shaped = torch.addmm(v_shaped, expression, expr_basis.T)
        v_shaped = v_shaped.reshape(batch, num_verts, 3)
        if eyelids is not None:
            v_shaped = v_shaped + torch.einsum("be,evc->bvc", eyelids, self.eyelid_dirs.to(dtype))

        rotmats = batch_rodrigues(pose.reshape(-1, 3)).reshape(batch, NUM_FLAME_JOINTS, 3, 3)
        vertices, joints = linear_blend_skinning(
            v_shaped, rotmats, self.j_regressor, self._parents, self.posedirs, self.lbs_weights
        )
        offset = translation.unsqueeze(1)
        vertices = vertices + offset
        joints = joints + offset

        yaw = head_yaw_degrees(rotmats)
        landmarks = None
        bins = None
        if self.has_landmarks:
            static = _barycentric(vertices, self.lmk_static_vids, self.lmk_static_bary.to(dtype))
            if self.dynamic_contour and self.has_dynamic_contour:
                bins = yaw_to_contour_bin(yaw)
                contour = _barycentric(
                    vertices, self.lmk_dynamic_vids[bins], self.lmk_dynamic_bary.to(dtype)[bins]
                )
            else:
                contour = _barycentric(
                    vertices, self.lmk_contour_vids, self.lmk_contour_bary.to(dtype)
                )
            landmarks = torch.cat((contour, static), dim=1)
        return FlameOutput(
            vertices=vertices,
            joints=joints,
            landmarks=landmarks,
            pose_rotmats=rotmats,
            head_yaw=yaw,
            contour_bins=bins,
        )

    def extra_repr(self) -> str:
        return (
            f"num_vertices={self.num_vertices}, n_shape={self.n_shape}, n_expr={self.n_expr}, "
            f"use_eyelids={self.use_eyelids}, landmarks={self.has_landmarks}, "
            f"dynamic_contour={self.dynamic_contour and self.has_dynamic_contour}"
        )


def _barycentric(vertices: Tensor, vids: Tensor, bary: Tensor) -> Tensor:
    """Points on triangles.

    Args:
        vertices: [B, V, 3].
        vids: [L, 3] or [B, L, 3] vertex ids of each point's triangle.
        bary: [L, 3] or [B, L, 3] barycentric weights.

    Returns:
        [B, L, 3].
    """
    batch = vertices.shape[0]
    if vids.ndim == 2:
        corners = vertices[:, vids]  # [B, L, 3(corner), 3(xyz)]
    else:
        rows = torch.arange(batch, device=vertices.device).view(batch, 1, 1)
        corners = vertices[rows, vids]
    if bary.ndim == 2:
        bary = bary.unsqueeze(0)
    return (corners * bary.unsqueeze(-1)).sum(dim=2)


def _check_shape(name: str, array: np.ndarray | None, expected: tuple[int, ...]) -> None:
    got = None if array is None else tuple(np.shape(array))
    if got != expected:
        raise ValueError(
            f"FLAME array {name} has shape {got}, expected {expected}; the model data is "
            "inconsistent (wrong file or a builder bug)"
        )

