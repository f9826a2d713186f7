"""Mesh serialisers: Wavefront OBJ (with UVs and an optional material) and binary PLY.

They return bytes, so callers choose where they go (``storage.atomic_write_bytes``).
GLB with morph targets lives in ``gltf.py`` (batch job). A caller that writes many OBJ files
of one topology formats their texture-coordinate and face lines once (:func:`obj_topology`):
the batch job's OBJ output went from 343 to 24 ms per character (docs/generation.md).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


_CHUNK_ROWS = 65536  # rows formatted per call (bounds the format string and the value tuple)


def _lines(fmt: str, rows: np.ndarray) -> str:
    """``fmt % tuple(row)`` and a newline for every row of ``rows`` [N, C], the text
    ``np.savetxt(fmt=fmt)`` writes, formatted in one call per chunk of rows (savetxt formats
    row by row in Python: ~3.5x slower for a head's vertices)."""
    out = []
    for i in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[i:i + _CHUNK_ROWS]
        out.append(((fmt + "\n") * len(chunk)) % tuple(chunk.reshape(-1).tolist()))
    return "".join(out)


@dataclass(frozen=True)
class ObjTopology:
    """The lines of an OBJ file that depend only on the mesh's topology (texture coordinates and
    faces), formatted once for the many meshes of one topology (a character's expressions, a
    batch of characters). Made by :func:`obj_topology`; used by :func:`obj_bytes`.

    Attributes:
        num_vertices: V of the meshes it belongs to (checked against their vertices).
        has_uv / has_normals: whether the face lines index texture coordinates / normals.
        uv_text: the ``vt`` lines ("" without UVs); face_text: the ``f`` lines.
    """

    num_vertices: int
    has_uv: bool
    has_normals: bool
    uv_text: str
    face_text: str


def obj_topology(faces, uv_coords=None, uv_faces=None, normals: bool = False,
                 num_vertices: Optional[int] = None) -> ObjTopology:
    """The topology lines of :func:`obj_bytes` for ``faces`` (and UVs; ``normals``: the face lines
    also index per-vertex normals ``vn``, numbered like the vertices).

    Args:
        faces: [F, 3] 0-based vertex indices; uv_coords [Vt, 2] and uv_faces [F, 3] optional.
        num_vertices: V of the meshes (default: the largest index + 1).

    Raises:
        ValueError: bad shapes, indices out of range, or UVs without their faces.
    """
    f = _np(faces).astype(np.int64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F,3], got {f.shape}")
    nv = int(num_vertices) if num_vertices is not None else (int(f.max()) + 1 if f.size else 0)
    if f.size and (f.min() < 0 or f.max() >= nv):
        raise ValueError(f"face indices out of range [0, {nv})")
    has_uv = uv_coords is not None
    if has_uv and uv_faces is None:
        raise ValueError("uv_coords given without uv_faces")
    fi = f + 1
    uv_text = ""
    if has_uv:
        uv = _np(uv_coords).astype(np.float64)
        ti = _np(uv_faces).astype(np.int64)
        if ti.shape != f.shape:
            raise ValueError(f"uv_faces must be [F,3] like faces {f.shape}, got {ti.shape}")
        if ti.size and (ti.min() < 0 or ti.max() >= len(uv)):
            raise ValueError(f"uv_faces indices out of range [0, {len(uv)})")
        uv_text = _lines("vt %.6f %.6f", uv.reshape(-1, 2))
        ti = ti + 1
        if normals:
            cols = np.stack([fi[:, 0], ti[:, 0], fi[:, 0], fi[:, 1], ti[:, 1], fi[:, 1],
                             fi[:, 2], ti[:, 2], fi[:, 2]], 1)
            face_text = _lines("f %d/%d/%d %d/%d/%d %d/%d/%d", cols)
        else:
            cols = np.stack([fi[:, 0], ti[:, 0], fi[:, 1], ti[:, 1], fi[:, 2], ti[:, 2]], 1)
            face_text = _lines("f %d/%d %d/%d %d/%d", cols)
    elif normals:
        cols = np.stack([fi[:, 0], fi[:, 0], fi[:, 1], fi[:, 1], fi[:, 2], fi[:, 2]], 1)
        face_text = _lines("f %d//%d %d//%d %d//%d", cols)
    else:
        face_text = _lines("f %d %d %d", fi)
    return ObjTopology(num_vertices=nv, has_uv=has_uv, has_normals=bool(normals), uv_text=uv_text,
                       face_text=face_text)


def obj_bytes(
    vertices,
    faces,
    uv_coords=None,
    uv_faces=None,
    normals=None,
    material_file: Optional[str] = None,
    material_name: str = "material0",
    comment: str = "",
    topology: Optional[ObjTopology] = None,
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
        topology: :func:`obj_topology` of these faces/UVs, made once by a caller that writes
            many meshes of one topology (the batch job: 10 OBJs per character); None = made
            here. The file is the same either way.
    """
    v = _np(vertices).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V,3], got {v.shape}")
    has_n = normals is not None
    if topology is None:
        topology = obj_topology(faces, uv_coords, uv_faces, normals=has_n, num_vertices=len(v))
    elif (topology.num_vertices != len(v) or topology.has_uv != (uv_coords is not None)
          or topology.has_normals != has_n):
        raise ValueError(f"topology was made for {topology.num_vertices} vertices (UVs {topology.has_uv}, normals "
                         f"{topology.has_normals}), not for this mesh ({len(v)} vertices, UVs "
                         f"{uv_coords is not None}, normals {has_n}); pass obj_topology() of this mesh, or None")
    buf = io.StringIO()
    if comment:
        for line in comment.splitlines():
            buf.write(f"# {line}\n")
    if material_file:
        buf.write(f"mtllib {material_file}\n")
    buf.write(_lines("v %.6f %.6f %.6f", v))
    buf.write(topology.uv_text)
    if has_n:
        buf.write(_lines("vn %.6f %.6f %.6f", _np(normals).astype(np.float64).reshape(-1, 3)))
    if material_file:
        buf.write(f"usemtl {material_name}\n")
    buf.write(topology.face_text)
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
