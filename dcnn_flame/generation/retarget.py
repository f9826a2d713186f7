"""Retargeting: put expressions onto a character's own identity.

Two sources of expressions:
- the expression bank (:mod:`dcnn_flame.generation.emotions`): each entry is an AU profile
  (17 intensities), scaled by an intensity, mapped to FLAME expression coefficients and a jaw
  rotation by the head model's AU map (:func:`load_au_map`);
- a performance: expression coefficients and jaw rotations reconstructed from an actor's
  images (identity swap: the actor's expression, the character's shape and detail). FLAME's
  expression basis is shared by every identity, so the coefficients transfer directly.

Every retargeted mesh is ``FLAME(shape = the character's, expression, pose = jaw only)``: the
global, neck and eye rotations are zero, so all meshes share the neutral head pose and differ
only by expression (what a morph target needs). The neutral mesh has zero expression and pose.
Detail: the character's detail code through the detail decoder gives a UV displacement map per
expression (Eq. 9 of the paper); :func:`bake_displacement` moves each vertex along its normal
by the map's value at its UV, so exported meshes carry it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from dcnn_flame.constants import NUM_AUS, POSE_DIM
from dcnn_flame.flame.data import FlameModelData
from dcnn_flame.flame.layer import FlameLayer

_JAW = slice(6, 9)


class LinearAUMap(nn.Module):
    """AU vector -> (expression, jaw) through two matrices: ``expr = au @ A``, ``jaw = au @ J``.

    Args:
        au_to_expr: [17, E] expression coefficients per unit AU.
        au_to_jaw: [17, 3] jaw axis-angle (radians) per unit AU.
    """

    def __init__(self, au_to_expr: np.ndarray, au_to_jaw: np.ndarray):
        super().__init__()
        a = torch.as_tensor(np.asarray(au_to_expr, dtype=np.float32))
        j = torch.as_tensor(np.asarray(au_to_jaw, dtype=np.float32))
        if a.dim() != 2 or a.shape[0] != NUM_AUS or j.shape != (NUM_AUS, 3):
            raise ValueError(f"AU map must be au_to_expr [17, E] and au_to_jaw [17, 3], got {tuple(a.shape)} "
                             f"and {tuple(j.shape)}")
        self.register_buffer("au_to_expr", a, persistent=False)
        self.register_buffer("au_to_jaw", j, persistent=False)

    def forward(self, au: Tensor) -> tuple[Tensor, Tensor]:
        """au [K, 17] -> (expression [K, E], jaw [K, 3])."""
        au = au.to(self.au_to_expr.dtype)
        return au @ self.au_to_expr, au @ self.au_to_jaw


def read_au_map_file(uri: str, storage_options: Any = None) -> LinearAUMap:
    """An AU map file (.npz with au_to_expr [17, E] and au_to_jaw [17, 3]; a local path or a URI
    such as s3://...) -> :class:`LinearAUMap`.

    Raises:
        FileNotFoundError / ValueError: naming the file and what it must hold.
    """
    from dcnn_flame.io import storage
    from dcnn_flame.model.criterion import load_au_map as read_arrays

    uri = storage.resolve(uri)
    try:
        return LinearAUMap(*read_arrays(uri, storage_options))
    except FileNotFoundError:
        raise FileNotFoundError(f"au_map_path {uri!r} does not exist (an .npz with au_to_expr [17, E] and "
                                f"au_to_jaw [17, 3])") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"au_map_path {uri!r}: not a usable AU map ({e}); it must be an .npz with "
                         f"au_to_expr [17, E] and au_to_jaw [17, 3]") from None


def load_au_map(data: FlameModelData, au_map_path: Optional[str] = None, storage_options: Any = None) -> nn.Module:
    """The AU -> (expression, jaw) map of a head model.

    Order of preference: an explicit file (``au_map_path``, .npz with au_to_expr/au_to_jaw, for
    real FLAME models; a local path or a URI, read with ``storage_options``), the head model's
    own :class:`dcnn_flame.flame.au_map.AUExpressionMap`, the linear map in ``data.extras``
    (au_to_expr, au_to_jaw).

    Returns:
        a module ``au [K, 17] -> (expression [K, E'], jaw [K, 3])`` (E' = the map's width).
    Raises:
        ValueError: naming what to provide when the model has no map.
    """
    if au_map_path:
        return read_au_map_file(au_map_path, storage_options)
    try:
        from dcnn_flame.flame.au_map import AUExpressionMap
    except ImportError:
        AUExpressionMap = None
    if AUExpressionMap is not None:
        try:
            return AUExpressionMap.from_model_data(data)
        except (KeyError, ValueError):
            pass
    if "au_to_expr" in data.extras and "au_to_jaw" in data.extras:
        return LinearAUMap(data.extras["au_to_expr"], data.extras["au_to_jaw"])
    raise ValueError(f"the head model '{data.source or data.edition}' has no AU -> expression map; retargeting "
                     f"the expression bank needs one: set au_map_path to an .npz with au_to_expr [17, E] and "
                     f"au_to_jaw [17, 3] (real FLAME), or use the procedural head")


def vertex_uvs(num_vertices: int, faces: np.ndarray, uv_coords: np.ndarray, uv_faces: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """One UV per vertex (``[V, 2]``, the first corner's UV on seams) and a ``[V]`` bool mask of
    the vertices used by a face."""
    f = np.asarray(faces, dtype=np.int64).reshape(-1)
    uf = np.asarray(uv_faces, dtype=np.int64).reshape(-1)
    uv = np.zeros((num_vertices, 2), dtype=np.float32)
    used = np.zeros(num_vertices, dtype=bool)
    # Reversed assignment: for repeated indices the last write wins, i.e. the first corner.
    uv[f[::-1]] = np.asarray(uv_coords, dtype=np.float32)[uf[::-1]]
    used[f] = True
    return uv, used


def bake_displacement(vertices: Tensor, faces: Tensor, vertex_uv: Tensor, used: Tensor,
                      displacement: Tensor) -> Tensor:
    """Move vertices along their normals by a UV displacement map.

    Args:
        vertices: [K, V, 3].
        faces: [F, 3].
        vertex_uv: [V, 2] UV per vertex (v up).
        used: [V] bool, vertices that belong to a face (others do not move).
        displacement: [K, 1, Hd, Wd] metres along the normal (row 0 = v = 1, as the renderer).
    Returns:
        [K, V, 3].
    """
    from dcnn_flame.render.shading import sample_texture, vertex_normals

    K = vertices.shape[0]
    normals = vertex_normals(vertices, faces)
    uv = vertex_uv.to(vertices)[None, None].expand(K, 1, -1, -1)  # [K, 1, V, 2]
    d = sample_texture(displacement.to(vertices.dtype), uv)[:, 0, 0]  # [K, V]
    d = d * used.to(vertices.dtype)[None]
    return vertices + normals * d[..., None]


@dataclass
class RetargetOutput:
    """Meshes and parameters of retargeted expressions (K of them).

    Attributes:
        expression: [K, n_expr] FLAME expression coefficients.
        pose: [K, 15] pose (jaw only; the rest zero).
        vertices: [K, V, 3] meshes (detail baked in when a displacement was given).
        neutral: [V, 3] the character's neutral mesh (zero expression and pose).
        displacement: [K, 1, Hd, Wd] detail maps used, or None.
    """

    expression: Tensor
    pose: Tensor
    vertices: Tensor
    neutral: Tensor
    displacement: Optional[Tensor] = None


class Retargeter(nn.Module):
    """Applies expressions to identities on one head model.

    Args:
        data: the head model arrays.
        n_shape, n_expr: components used (those of the reconstruction model).
        au_map: module ``au [K, 17] -> (expression [K, E'], jaw [K, 3])`` (:func:`load_au_map`),
            or None when only performance retargeting is needed.
    """

    def __init__(self, data: FlameModelData, n_shape: int, n_expr: int, au_map: Optional[nn.Module] = None):
        super().__init__()
        self.flame = FlameLayer(data, n_shape=n_shape, n_expr=n_expr, dynamic_contour=False)
        self.n_shape, self.n_expr = n_shape, n_expr
        self.au_map = au_map
        uv, used = (vertex_uvs(data.num_vertices, data.faces, data.uv_coords, data.uv_faces)
                    if data.uv_coords is not None else (np.zeros((data.num_vertices, 2), np.float32),
                                                        np.zeros(data.num_vertices, bool)))
        self.register_buffer("vertex_uv", torch.from_numpy(uv), persistent=False)
        self.register_buffer("used", torch.from_numpy(used), persistent=False)
        self.register_buffer("faces", torch.as_tensor(np.asarray(data.faces, dtype=np.int64)), persistent=False)

    def au_to_params(self, au: Tensor) -> tuple[Tensor, Tensor]:
        """au [K, 17] in [0, 1] -> (expression [K, n_expr], jaw [K, 3])."""
        if self.au_map is None:
            raise ValueError("this Retargeter has no AU map (see load_au_map)")
        expr, jaw = self.au_map(au)
        expr = expr.to(torch.float32)
        if expr.shape[1] > self.n_expr:
            dropped = expr[:, self.n_expr:].abs().max() if expr.shape[0] else 0.0
            if float(dropped) > 0:
                raise ValueError(f"the AU map drives expression components beyond n_expr={self.n_expr}; "
                                 f"use a model with more expression components")
            expr = expr[:, : self.n_expr]
        elif expr.shape[1] < self.n_expr:
            expr = torch.nn.functional.pad(expr, (0, self.n_expr - expr.shape[1]))
        return expr, jaw.to(torch.float32)

    def meshes(self, shape: Tensor, expression: Tensor, jaw: Tensor,
               displacement: Optional[Tensor] = None) -> RetargetOutput:
        """Meshes of K expressions (and the neutral) on one identity.

        Args:
            shape: [n_shape] or [1, n_shape] the character's identity.
            expression: [K, n_expr]; jaw: [K, 3] axis-angle.
            displacement: optional [K + 1, 1, Hd, Wd] detail maps, row 0 for the neutral
                (baked along the normals).
        """
        K = expression.shape[0]
        if displacement is not None and displacement.shape[0] != K + 1:
            raise ValueError(f"displacement must be [K + 1, 1, H, W] = [{K + 1}, 1, H, W] (row 0 = neutral), "
                             f"got {tuple(displacement.shape)}")
        out = self.meshes_many(shape.reshape(1, -1), expression, jaw,
                               None if displacement is None else displacement[None])
        return RetargetOutput(expression=out.expression, pose=out.pose, vertices=out.vertices[0],
                              neutral=out.neutral[0], displacement=displacement)

    def meshes_many(self, shapes: Tensor, expression: Tensor, jaw: Tensor,
                    displacement: Optional[Tensor] = None) -> RetargetOutput:
        """The same K expressions (and the neutral) on B identities in one head-model pass (the
        batch job's actors: one pass per batch instead of one per character).

        Args:
            shapes: [B, n_shape].
            expression: [K, n_expr]; jaw: [K, 3] axis-angle.
            displacement: optional [B, K + 1, 1, Hd, Wd] detail maps, row 0 of each the neutral.
        Returns:
            RetargetOutput with vertices [B, K, V, 3] and neutral [B, V, 3] (expression [K, E],
            pose [K, 15] shared; displacement as given).
        """
        shapes = shapes.to(torch.float32)
        if shapes.dim() != 2:
            raise ValueError(f"shapes must be [B, n_shape], got {tuple(shapes.shape)}")
        B, K = shapes.shape[0], expression.shape[0]
        pose = expression.new_zeros(K, POSE_DIM)
        pose[:, _JAW] = jaw
        expr_all = torch.cat([expression.new_zeros(1, self.n_expr), expression])  # [K + 1, E]
        pose_all = torch.cat([pose.new_zeros(1, POSE_DIM), pose])
        out = self.flame(shape=shapes.repeat_interleave(K + 1, dim=0),
                         expression=expr_all.repeat(B, 1), pose=pose_all.repeat(B, 1))
        verts = out.vertices  # [B * (K + 1), V, 3]
        if displacement is not None:
            if tuple(displacement.shape[:2]) != (B, K + 1):
                raise ValueError(f"displacement must be [B, K + 1, 1, H, W] = [{B}, {K + 1}, 1, H, W] "
                                 f"(row 0 = neutral), got {tuple(displacement.shape)}")
            verts = bake_displacement(verts, self.faces, self.vertex_uv, self.used,
                                      displacement.reshape(B * (K + 1), *displacement.shape[2:]))
        verts = verts.reshape(B, K + 1, *verts.shape[1:])
        return RetargetOutput(expression=expression, pose=pose, vertices=verts[:, 1:], neutral=verts[:, 0],
                              displacement=displacement)

    def retarget_bank(self, shape: Tensor, au: Tensor,
                      detail: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> RetargetOutput:
        """Bank expressions (AU vectors, intensity already applied) on one identity.

        Args:
            shape: [n_shape] the character's identity.
            au: [K, 17] AU intensities.
            detail: optional ``(expression [K+1, E], jaw [K+1, 3]) -> displacement [K+1, 1, H, W]``
                (the character's detail decoder); row 0 is the neutral.
        """
        expression, jaw = self.au_to_params(au)
        return self._with_detail(shape, expression, jaw, detail)

    def retarget_from_performance(self, shape: Tensor, expression: Tensor, jaw: Tensor,
                                  detail: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> RetargetOutput:
        """Identity swap: an actor's per-frame expression [K, n_expr] and jaw [K, 3] on the
        character's ``shape`` (the actor's own shape, head pose and eyes are dropped)."""
        if expression.shape[1] != self.n_expr:
            raise ValueError(f"performance expression has {expression.shape[1]} components, the model {self.n_expr}")
        return self._with_detail(shape, expression.to(torch.float32), jaw.to(torch.float32), detail)

    def _with_detail(self, shape, expression, jaw, detail) -> RetargetOutput:
        disp = None
        if detail is not None:
            disp = detail(torch.cat([expression.new_zeros(1, self.n_expr), expression]),
                          torch.cat([jaw.new_zeros(1, 3), jaw]))
        return self.meshes(shape, expression, jaw, disp)
