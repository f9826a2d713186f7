"""Binary glTF 2.0 (GLB) writer: one mesh, one primitive, morph targets, embedded texture.

The batch job writes one GLB per character: the neutral reconstruction plus one morph
target per retargeted expression, so animators get a blendshape rig in Blender, Maya,
three.js or a game engine. The container is written directly with ``struct``/``json``
(the format is small; writing it ourselves keeps alignment and enums under our control)
and checked in the tests by loading it with pygltflib.

What the file holds
- ``POSITION`` (float32 VEC3, with the ``min``/``max`` the spec requires), optional
  ``NORMAL`` (area-weighted vertex normals) and ``TEXCOORD_0``; ``indices`` as
  UNSIGNED_SHORT when the vertex count allows it, else UNSIGNED_INT.
- One morph target per entry of ``morph_targets``: ``POSITION`` deltas from the neutral
  (and ``NORMAL`` deltas with ``target_normals=True``); ``mesh.weights`` all 0; target
  names in ``mesh.extras.targetNames`` (the convention the Blender, three.js and Maya
  importers read).
- A PBR metallic-roughness material; with ``texture_png`` its ``baseColorTexture`` is the
  PNG embedded in the binary chunk (bufferView + ``image/png``) with a linear sampler.
- ``asset.extras`` = ``extras`` (e.g. model version, checkpoint).

UV seams. glTF stores one UV per vertex, while FLAME-like meshes index UVs separately
(``uv_faces``): a vertex on a texture seam has several UVs. Such vertices are split: every
unique (vertex, uv) corner pair becomes one glTF vertex (:func:`split_seams`), and every
morph target and normal is gathered through the same split, so the rig still deforms as one
surface. Normals are computed on the original (welded) topology before the split, so seams
do not show in the shading. With UVs, a vertex used by no face has no UV and is dropped.

UV convention. ``uv_coords`` follow the OBJ/FLAME convention (origin bottom-left, v up), like
:func:`dcnn_flame.io.meshes.obj_bytes`; glTF's origin is top-left, so ``v`` is written as
``1 - v``. ``texture_png`` is an ordinary PNG (row 0 = top of the image).

Units are whatever the vertices are in (the project uses metres, as glTF does).
"""
from __future__ import annotations

import json
import struct
from typing import Any, Mapping, Optional

import numpy as np

# glTF enums (spec section 5): componentType, bufferView.target, primitive mode, sampler.
FLOAT = 5126
UNSIGNED_SHORT = 5123
UNSIGNED_INT = 5125
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
TRIANGLES = 4
LINEAR = 9729
LINEAR_MIPMAP_LINEAR = 9987
CLAMP_TO_EDGE = 33071

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NUM_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_DTYPES = {FLOAT: "<f4", UNSIGNED_SHORT: "<u2", UNSIGNED_INT: "<u4", 5121: "u1", 5120: "i1", 5122: "<i2"}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def split_seams(faces, uv_faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices that carry several UVs: one output vertex per unique (vertex, uv) pair.

    Args:
        faces: [F, 3] vertex indices.
        uv_faces: [F, 3] UV indices of the same corners.

    Returns:
        ``(vertex_index [V'], uv_index [V'], new_faces [F, 3])``: output vertex ``k`` is
        original vertex ``vertex_index[k]`` with UV ``uv_index[k]``; ``new_faces`` index the
        output vertices. Output vertices are sorted by (vertex, uv), so the split is
        deterministic and, for a mesh without seams, keeps the original vertex order.
    """
    f = _np(faces).astype(np.int64)
    uf = _np(uv_faces).astype(np.int64)
    if f.shape != uf.shape or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces and uv_faces must both be [F,3], got {f.shape} and {uf.shape}")
    num_uv = int(uf.max()) + 1 if uf.size else 1
    key = f.reshape(-1) * num_uv + uf.reshape(-1)
    unique, inverse = np.unique(key, return_inverse=True)
    return unique // num_uv, unique % num_uv, inverse.reshape(f.shape).astype(np.int64)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] (float64); +Z where a vertex has no area."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    a = v.take(f[:, 0], axis=0)
    e1, e2 = v.take(f[:, 1], axis=0) - a, v.take(f[:, 2], axis=0) - a
    # e1 x e2 per component (length = 2 * area; np.cross and v[faces] are several times slower).
    face_n = (e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
              e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    # Scatter-add of each face normal onto its 3 corners (bincount: about twice as fast as np.add.at).
    corner = f.reshape(-1)
    n = np.stack([np.bincount(corner, weights=np.repeat(c, 3), minlength=len(v)) for c in face_n], axis=1)
    length = np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
    out = np.where(length > 1e-20, n / np.maximum(length, 1e-300), 0.0)
    out[length[:, 0] <= 1e-20] = (0.0, 0.0, 1.0)  # glTF requires unit normals
    return out


class _Builder:
    """Collects bufferViews (each 4-byte aligned) and accessors of the single buffer.

    The views' data (arrays or bytes) are kept as they are and copied once, into the file
    (:meth:`write_to`), instead of being turned into bytes, joined and joined again.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[int, Any]] = []  # (byte offset in the buffer, contiguous array or bytes)
        self.size = 0
        self.buffer_views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def view(self, data: Any, target: Optional[int] = None) -> int:
        """A bufferView of ``data`` (bytes, or a C-contiguous array stored as its raw bytes)."""
        self.size += _pad4(self.size)
        nbytes = data.nbytes if isinstance(data, np.ndarray) else len(data)
        bv: dict[str, Any] = {"buffer": 0, "byteOffset": self.size, "byteLength": nbytes}
        if target is not None:
            bv["target"] = target
        self.parts.append((self.size, data))
        self.size += nbytes
        self.buffer_views.append(bv)
        return len(self.buffer_views) - 1

    def accessor(self, array: np.ndarray, component_type: int, type_: str, target: Optional[int],
                 min_max: bool = False, bounds: Optional[tuple[np.ndarray, np.ndarray]] = None) -> int:
        """An accessor of ``array`` (cast to the component type); ``min_max`` stores its per-component
        min/max (computed here, or ``bounds`` = (min, max) computed by the caller for many arrays)."""
        arr = np.ascontiguousarray(array, dtype=_DTYPES[component_type])
        acc: dict[str, Any] = {
            "bufferView": self.view(arr, target),
            "componentType": component_type,
            "count": int(arr.shape[0]),
            "type": type_,
        }
        if min_max and bounds is None:
            # Reduced along contiguous rows of the transpose: ~20x faster than min(axis=0) of a
            # [N, 3] array. float32 -> Python float is exact, so min/max equal the stored values.
            cols = np.ascontiguousarray(arr.reshape(arr.shape[0], -1).T)
            bounds = cols.min(axis=1), cols.max(axis=1)
        if min_max:
            acc["min"] = [float(x) for x in bounds[0]]
            acc["max"] = [float(x) for x in bounds[1]]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    @property
    def padded_size(self) -> int:
        return self.size + _pad4(self.size)

    def write_to(self, out: bytearray, offset: int) -> None:
        """Copy the buffer into ``out[offset:offset + padded_size]`` (padding: zeros of a new bytearray)."""
        view = memoryview(out)
        for start, data in self.parts:
            raw = memoryview(data).cast("B") if isinstance(data, np.ndarray) else data
            view[offset + start:offset + start + len(raw)] = raw


def _check_vertices(name: str, arr: np.ndarray, num_vertices: int) -> np.ndarray:
    if arr.shape != (num_vertices, 3):
        raise ValueError(f"{name} must be [V,3] = [{num_vertices},3] like the neutral vertices, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; glTF positions must be finite")
    return arr.astype(np.float64)


def glb_bytes(
    vertices,
    faces,
    uv_coords=None,
    uv_faces=None,
    morph_targets: Optional[Mapping[str, Any]] = None,
    texture_png: Optional[bytes] = None,
    normals: bool = True,
    target_normals: bool = False,
    name: str = "character",
    extras: Optional[Mapping[str, Any]] = None,
    seams: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> bytearray:
    """A binary glTF 2.0 file with one mesh, morph targets and an optional embedded texture.

    Args:
        vertices: [V, 3] neutral positions.
        faces: [F, 3] 0-based vertex indices (counter-clockwise = front, as glTF expects).
        uv_coords: optional [Vt, 2] texture coordinates, origin bottom-left (OBJ/FLAME).
        uv_faces: [F, 3] indices into ``uv_coords`` (required with ``uv_coords``); seam
            vertices are split (module docstring).
        morph_targets: ordered ``name -> [V, 3]`` absolute positions; stored as POSITION
            deltas from ``vertices``. Names go to ``mesh.extras.targetNames``.
        texture_png: optional PNG bytes used as the material's baseColorTexture (needs UVs).
        normals: write per-vertex NORMAL (computed on the welded mesh).
        target_normals: also write NORMAL deltas for every morph target (needs ``normals``).
        name: mesh and node name.
        extras: JSON-serialisable metadata stored in ``asset.extras`` (model version, ...).
        seams: ``split_seams(faces, uv_faces)`` computed once by a caller that writes many meshes
            of one topology (the batch job); None = computed here.

    Returns:
        The GLB file (a bytearray: bytes-like for files, object stores and parsers, built in
        place without a final copy).
    """
    f = _np(faces).astype(np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"faces must be a non-empty [F,3] array, got {f.shape}")
    v0 = _np(vertices)
    if v0.ndim != 2 or v0.shape[1] != 3:
        raise ValueError(f"vertices must be [V,3], got {v0.shape}")
    v = _check_vertices("vertices", v0, len(v0))
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices out of range [0, {len(v)}): min {f.min()}, max {f.max()}")
    target_names = list(morph_targets or {})
    for tname in target_names:
        if not isinstance(tname, str) or not tname:
            raise ValueError(f"morph target names must be non-empty strings, got {tname!r}")
    arrays = [_np(morph_targets[t]) for t in target_names]
    for tname, arr in zip(target_names, arrays):
        if arr.shape != (len(v), 3):
            raise ValueError(f"morph target {tname!r} must be [V,3] = [{len(v)},3] like the neutral vertices, "
                             f"got {arr.shape}")
    # All targets as one [K, V, 3] array: checked, differenced and gathered in one pass each.
    # Deltas are the float64 difference rounded to float32. For float32 inputs a float32
    # subtraction gives exactly that (it is the exact difference rounded once, and double rounding
    # through float64 is innocuous for a subtraction: 53 >= 2 * 24 + 2 bits), in half the memory
    # traffic; other inputs go through float64.
    exact32 = v0.dtype == np.float32 and all(a.dtype == np.float32 for a in arrays)
    tdtype = np.float32 if exact32 else np.float64
    stack = np.stack(arrays).astype(tdtype, copy=False) if arrays else np.zeros((0, len(v), 3), tdtype)
    if not np.isfinite(stack).all():
        bad = next(t for k, t in enumerate(target_names) if not np.isfinite(stack[k]).all())
        raise ValueError(f"morph target {bad!r} contains NaN or inf; glTF positions must be finite")
    if target_normals and not normals:
        raise ValueError("target_normals=True needs normals=True")
    if (uv_coords is None) != (uv_faces is None):
        raise ValueError("uv_coords and uv_faces must be given together")
    if texture_png is not None:
        if uv_coords is None:
            raise ValueError("texture_png needs uv_coords and uv_faces (a texture cannot be mapped without UVs)")
        if not bytes(texture_png[:8]) == _PNG_SIGNATURE:
            raise ValueError("texture_png is not a PNG file (missing PNG signature); encode the texture as PNG")

    # Welded-topology normals first, so both sides of a UV seam shade the same.
    n0 = vertex_normals(v, f) if normals else None
    tn = [vertex_normals(t, f) - n0 for t in stack] if target_normals else []

    if uv_coords is not None:
        uv = _np(uv_coords).astype(np.float64)
        uf = _np(uv_faces).astype(np.int64)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"uv_coords must be [Vt,2], got {uv.shape}")
        if uf.shape != f.shape:
            raise ValueError(f"uv_faces must be [F,3] like faces {f.shape}, got {uf.shape}")
        if uf.min() < 0 or uf.max() >= len(uv):
            raise ValueError(f"uv_faces indices out of range [0, {len(uv)})")
        if seams is None:
            vidx, uvidx, out_faces = split_seams(f, uf)
        else:
            vidx, uvidx, out_faces = (np.asarray(a, dtype=np.int64) for a in seams)
            if out_faces.shape != f.shape or len(vidx) != len(uvidx) or (
                    len(vidx) and (vidx.max() >= len(v) or uvidx.max() >= len(uv)
                                   or out_faces.max() >= len(vidx))):
                raise ValueError("seams do not belong to these faces/uv_coords; pass split_seams(faces, uv_faces) "
                                 "of this mesh (or None)")
        texcoord = uv[uvidx].copy()
        texcoord[:, 1] = 1.0 - texcoord[:, 1]  # OBJ v-up -> glTF v-down
    else:
        vidx, out_faces, texcoord = np.arange(len(v)), f, None

    b = _Builder()
    num_out = len(vidx)
    index_type = UNSIGNED_SHORT if num_out <= 65535 else UNSIGNED_INT  # 65535 is reserved
    indices = b.accessor(out_faces.reshape(-1), index_type, "SCALAR", ELEMENT_ARRAY_BUFFER)
    attributes = {"POSITION": b.accessor(v[vidx], FLOAT, "VEC3", ARRAY_BUFFER, min_max=True)}
    if n0 is not None:
        attributes["NORMAL"] = b.accessor(n0[vidx], FLOAT, "VEC3", ARRAY_BUFFER)
    if texcoord is not None:
        attributes["TEXCOORD_0"] = b.accessor(texcoord, FLOAT, "VEC2", ARRAY_BUFFER)
    gl_targets = []
    if target_names:
        # neutral + delta reproduces the target to float32 precision (see ``exact32`` above).
        neutral = v0.astype(tdtype, copy=False) if exact32 else v
        deltas = (stack - neutral).take(vidx, axis=1).astype(np.float32, copy=False)  # [K, V', 3]
        cols = np.ascontiguousarray(deltas.transpose(0, 2, 1))  # [K, 3, V']: contiguous reductions
        lo, hi = cols.min(axis=2), cols.max(axis=2)
        for k in range(len(target_names)):
            t = {"POSITION": b.accessor(deltas[k], FLOAT, "VEC3", ARRAY_BUFFER, min_max=True,
                                        bounds=(lo[k], hi[k]))}
            if target_normals:
                t["NORMAL"] = b.accessor(tn[k][vidx], FLOAT, "VEC3", ARRAY_BUFFER)
            gl_targets.append(t)

    material: dict[str, Any] = {
        "name": f"{name}_material",
        "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.7},
        "doubleSided": False,
    }
    gltf: dict[str, Any] = {"asset": {"version": "2.0", "generator": "dcnn_flame.io.gltf"}}
    if extras:
        gltf["asset"]["extras"] = dict(extras)
    if texture_png is not None:
        image_view = b.view(bytes(texture_png))
        gltf["images"] = [{"bufferView": image_view, "mimeType": "image/png", "name": f"{name}_albedo"}]
        gltf["samplers"] = [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                             "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0, "texCoord": 0}
    else:
        material["pbrMetallicRoughness"]["baseColorFactor"] = [0.8, 0.8, 0.8, 1.0]

    primitive: dict[str, Any] = {"attributes": attributes, "indices": indices, "material": 0, "mode": TRIANGLES}
    mesh: dict[str, Any] = {"name": name, "primitives": [primitive]}
    if gl_targets:
        primitive["targets"] = gl_targets
        mesh["weights"] = [0.0] * len(gl_targets)
        mesh["extras"] = {"targetNames": target_names}
    gltf.update({
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [mesh],
        "materials": [material],
        "accessors": b.accessors,
        "bufferViews": b.buffer_views,
        "buffers": [{"byteLength": b.padded_size}],
    })
    try:
        js = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"extras must be JSON-serialisable (finite numbers, str, list, dict): {e}") from None
    js += b" " * _pad4(len(js))  # the JSON chunk is padded with spaces, BIN with zeros
    size = b.padded_size
    out = bytearray(12 + 8 + len(js) + 8 + size)
    struct.pack_into("<IIIII", out, 0, GLB_MAGIC, 2, len(out), len(js), CHUNK_JSON)
    out[20:20 + len(js)] = js
    struct.pack_into("<II", out, 20 + len(js), size, CHUNK_BIN)
    b.write_to(out, 28 + len(js))
    return out  # not bytes(out): a second copy of a ~1 MB file


def _read_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    bv = gltf["bufferViews"][acc["bufferView"]]
    if "byteStride" in bv or "sparse" in acc:
        raise ValueError("parse_glb reads only tightly packed, non-sparse accessors (as glb_bytes writes)")
    n = _NUM_COMPONENTS[acc["type"]]
    start = bv.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(binary, dtype=_DTYPES[acc["componentType"]], count=acc["count"] * n, offset=start)
    return arr.reshape(acc["count"], n) if n > 1 else arr


def parse_glb(data: bytes) -> dict[str, Any]:
    """Read back a GLB written by :func:`glb_bytes` (the first primitive of the first mesh).

    Returns a dict with "name", "vertices" [V',3] (after the seam split), "faces" [F,3],
    "normals" [V',3] or None, "uv_coords" [V',2] (origin bottom-left again) or None,
    "morph_targets" ``name -> [V',3]`` absolute positions, "texture_png" bytes or None,
    and "extras" (asset.extras).
    """
    if len(data) < 20:
        raise ValueError(f"not a GLB file: only {len(data)} bytes")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2:
        raise ValueError(f"not a glTF 2.0 binary file (magic {magic:#x}, version {version})")
    if total != len(data):
        raise ValueError(f"GLB header says {total} bytes but the data has {len(data)} (truncated?)")
    js_len, js_type = struct.unpack_from("<II", data, 12)
    if js_type != CHUNK_JSON:
        raise ValueError("GLB first chunk is not JSON")
    gltf = json.loads(data[20:20 + js_len])
    off = 20 + js_len
    binary = b""
    if off < len(data):
        bin_len, bin_type = struct.unpack_from("<II", data, off)
        if bin_type != CHUNK_BIN:
            raise ValueError("GLB second chunk is not BIN")
        binary = data[off + 8: off + 8 + bin_len]
    mesh = gltf["meshes"][0]
    prim = mesh["primitives"][0]
    attrs = prim["attributes"]
    pos = _read_accessor(gltf, binary, attrs["POSITION"]).astype(np.float64)
    out: dict[str, Any] = {
        "name": mesh.get("name"),
        "vertices": pos,
        "faces": _read_accessor(gltf, binary, prim["indices"]).astype(np.int64).reshape(-1, 3),
        "normals": _read_accessor(gltf, binary, attrs["NORMAL"]).astype(np.float64) if "NORMAL" in attrs else None,
        "uv_coords": None,
        "texture_png": None,
        "extras": gltf["asset"].get("extras", {}),
    }
    if "TEXCOORD_0" in attrs:
        uv = _read_accessor(gltf, binary, attrs["TEXCOORD_0"]).astype(np.float64).copy()
        uv[:, 1] = 1.0 - uv[:, 1]
        out["uv_coords"] = uv
    names = mesh.get("extras", {}).get("targetNames") or [f"target_{i}" for i in range(len(prim.get("targets", [])))]
    out["morph_targets"] = {
        n: pos + _read_accessor(gltf, binary, t["POSITION"]).astype(np.float64)
        for n, t in zip(names, prim.get("targets", []))
    }
    if gltf.get("images"):
        bv = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
        start = bv.get("byteOffset", 0)
        out["texture_png"] = bytes(binary[start:start + bv["byteLength"]])
    return out
