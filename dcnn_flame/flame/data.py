"""In-memory FLAME model arrays: the one container every loader and builder produces.

Loaders (``assets.py``) and the procedural head (``procedural.py``) return a
:class:`FlameModelData`; :class:`~dcnn_flame.flame.layer.FlameLayer` consumes it.
Arrays are NumPy (float64 or float32, int64 indices); the layer converts to torch buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: FLAME files store 300 shape then 100 expression components in ``shapedirs``.
FLAME_NUM_SHAPE_COMPONENTS = 300


@dataclass
class LandmarkEmbedding:
    """Barycentric embedding of the 68 iBUG landmarks on the mesh surface.

    Attributes:
        static_faces: [51] int64, face index of landmarks 17..67.
        static_bary: [51, 3] barycentric coordinates for those faces.
        full_faces: [68] int64, face index of all 68 landmarks (contour fixed, frontal).
        full_bary: [68, 3].
        dynamic_faces: optional [79, 17] int64, contour landmarks 0..16 per yaw bin
            (bins cover yaw -39..39 degrees, one per degree, as RingNet/DECA).
        dynamic_bary: optional [79, 17, 3].
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray
    dynamic_faces: np.ndarray | None = None
    dynamic_bary: np.ndarray | None = None


@dataclass
class FlameModelData:
    """All arrays of one FLAME-format head model.

    Attributes:
        v_template: [V, 3] mean head in metres.
        faces: [F, 3] int64 triangle vertex indices.
        shapedirs: [V, 3, S] identity shape basis (S <= 300 in real FLAME files).
        exprdirs: [V, 3, E] expression basis (E <= 100).
        posedirs: [V, 3, 36] pose-corrective basis; the 36 pose features are
            (R_j - I) flattened row-major for the 4 non-root joints j = neck, jaw, eyes.
        j_regressor: [5, V] dense joint regressor.
        lbs_weights: [V, 5] skinning weights (rows sum to 1).
        kintree_table: [2, 5] int64; row 0 holds each joint's parent (root's is -1 or
            a huge sentinel as in FLAME pickles, normalised to -1 here).
        uv_coords: optional [Vt, 2] UV coordinates in [0, 1] (v up, OpenGL style).
        uv_faces: optional [F, 3] int64 indices into ``uv_coords``.
        landmarks: optional 68-landmark embedding.
        eyelid_dirs: optional [2, V, 3] left/right eyelid-closing blendshapes (FLAME 2023).
        edition: human-readable edition, e.g. "FLAME2020", "FLAME2023", "procedural".
        source: where the arrays came from (path or "procedural(seed=0)").
        extras: anything else a builder wants to keep (e.g. procedural albedo).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    lbs_weights: np.ndarray
    kintree_table: np.ndarray
    uv_coords: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    landmarks: LandmarkEmbedding | None = None
    eyelid_dirs: np.ndarray | None = None
    edition: str = "unknown"
    source: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def parents(self) -> np.ndarray:
        """[5] int64 parent index per joint, -1 for the root."""
        p = self.kintree_table[0].astype(np.int64).copy()
        p[(p < 0) | (p >= p.shape[0])] = -1
        return p
