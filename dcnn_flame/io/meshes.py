"""Mesh serialisers: Wavefront OBJ (with UVs and an optional material) and binary PLY.

They return bytes, so callers choose where they go (``storage.atomic_write_bytes``).
GLB with morph targets lives in ``gltf.py`` (batch job).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def obj_bytes(
    vertices,
    faces,
    uv_coords=None,
    uv_faces=None,
    normals=None,
    material_file: Optional[str] = None,
    material_name: str = "material0",
    comment: str = "",
) -> bytes:
    """OBJ text for one mesh.

    Args:
        vertices: [V, 3] positions.
        faces: [F, 3] 0-based vertex indices.
        uv_coords: optional [Vt, 2] texture coordinates (v up).
        uv_faces: optional [F, 3] 0-based indices into ``uv_coords`` (needed with uv_coords).
        normals: optional [V, 3] per-vertex normals (indexed like vertices).
        material_file: optional .mtl file name to reference (``mtllib``).
        material_name: material used by the faces when ``material_file`` is set.
        comment: a header comment line (e.g. model version).
    """
    v = _np(vertices).astype(np.float64)
    f = _np(faces).astype(np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V,3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F,3], got {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices out of range [0, {len(v)})")
    has_uv = uv_coords is not None
    if has_uv and uv_faces is None:
        raise ValueError("uv_coords given without uv_faces")
    buf = io.StringIO()
    if comment:
        for line in comment.splitlines():
            buf.write(f"# {line}\n")
    if material_file:
        buf.write(f"mtllib {material_file}\n")
    np.savetxt(buf, v, fmt="v %.6f %.6f %.6f")
    if has_uv:
        np.savetxt(buf, _np(uv_coords).astype(np.float64), fmt="vt %.6f %.6f")
    has_n = normals is not None
    if has_n:
        np.savetxt(buf, _np(normals).astype(np.float64), fmt="vn %.6f %.6f %.6f")
    if material_file:
        buf.write(f"usemtl {material_name}\n")
    fi = f + 1
    if has_uv:
        ti = _np(uv_faces).astype(np.int64) + 1
        if has_n:
            cols = np.stack([fi[:, 0], ti[:, 0], fi[:, 0], fi[:, 1], ti[:, 1], fi[:, 1],
                             fi[:, 2], ti[:, 2], fi[:, 2]], 1)
            np.savetxt(buf, cols, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
        else:
            cols = np.stack([fi[:, 0], ti[:, 0], fi[:, 1], ti[:, 1], fi[:, 2], ti[:, 2]], 1)
            np.savetxt(buf, cols, fmt="f %d/%d %d/%d %d/%d")
    elif has_n:
        cols = np.stack([fi[:, 0], fi[:, 0], fi[:, 1], fi[:, 1], fi[:, 2], fi[:, 2]], 1)
        np.savetxt(buf, cols, fmt="f %d//%d %d//%d %d//%d")
    else:
        np.savetxt(buf, fi, fmt="f %d %d %d")
    return buf.getvalue().encode("ascii")


def mtl_bytes(texture_file: str, material_name: str = "material0") -> bytes:
    """A minimal .mtl that maps ``texture_file`` as the diffuse texture."""
    return (f"newmtl {material_name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
            f"map_Kd {texture_file}\n").encode("ascii")


def ply_bytes(vertices, faces, colors=None) -> bytes:
    """Binary little-endian PLY.

    Args:
        vertices: [V, 3] positions (written as float32).
        faces: [F, 3] vertex indices (written as int32 with a uchar count).
        colors: optional [V, 3] uint8 or float in [0, 1] per-vertex colours.
    """
    v = _np(vertices).astype("<f4")
    f = _np(faces).astype("<i4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
              "property float x", "property float y", "property float z"]
    vdtype = [("xyz", "<f4", (3,))]
    if colors is not None:
        c = _np(colors)
        if c.dtype != np.uint8:
            c = np.clip(np.rint(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        vdtype.append(("rgb", "u1", (3,)))
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    vert = np.empty(len(v), dtype=vdtype)
    vert["xyz"] = v
    if colors is not None:
        vert["rgb"] = c
    face = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"] = 3
    face["idx"] = f
    return ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()


def parse_obj(data: bytes) -> dict[str, np.ndarray]:
    """Read back an OBJ written by :func:`obj_bytes` (v, vt, vn, f with 0-based indices).

    Returns a dict with "vertices" [V,3], "faces" [F,3], and "uv_coords"/"uv_faces" when present.
    """
    vs, vts, fs, fts = [], [], [], []
    for line in data.decode("utf-8").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vs.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            vts.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            idx = [p.split("/") for p in parts[1:4]]
            fs.append([int(i[0]) - 1 for i in idx])
            if len(idx[0]) > 1 and idx[0][1]:
                fts.append([int(i[1]) - 1 for i in idx])
    out = {"vertices": np.array(vs, dtype=np.float64).reshape(-1, 3),
           "faces": np.array(fs, dtype=np.int64).reshape(-1, 3)}
    if vts:
        out["uv_coords"] = np.array(vts, dtype=np.float64)
        out["uv_faces"] = np.array(fts, dtype=np.int64)
    return out
