"""A UV layout for a head model whose file has none (the official FLAME pickles carry no UVs;
FLAME's texture space comes with ``FLAME_texture.npz`` and the template .obj).

``load_uv_layout(path, faces)`` reads ``vt`` [Vt, 2] and ``ft`` [F, 3] from an .npz or an .obj
and checks that they fit the model's faces: one UV triangle per face, indices in range and,
for an .obj, the same vertex triangles in the same order as the model's.
"""
from __future__ import annotations

import os

import numpy as np


class UVLayoutError(ValueError):
    """A UV file that cannot describe this head model's faces."""


def _read_obj(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vt [Vt, 2], face vertex ids [F, 3], face uv ids [F, 3]) of an .obj (0-based)."""
    vt, fv, ft = [], [], []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "vt":
                vt.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "f":
                corners = parts[1:]
                if len(corners) != 3:
                    raise UVLayoutError(f"{path}, line {n}: a face with {len(corners)} corners; the UV file must "
                                        f"be triangles like the head model")
                ids = [c.split("/") for c in corners]
                if any(len(c) < 2 or not c[1] for c in ids):
                    raise UVLayoutError(f"{path}, line {n}: a face without texture coordinates (f v/vt ...)")
                if any(int(c[0]) < 0 or int(c[1]) < 0 for c in ids):
                    raise UVLayoutError(f"{path}, line {n}: relative (negative) indices are not supported")
                fv.append([int(c[0]) - 1 for c in ids])
                ft.append([int(c[1]) - 1 for c in ids])
    return (np.asarray(vt, dtype=np.float32).reshape(-1, 2), np.asarray(fv, dtype=np.int64).reshape(-1, 3),
            np.asarray(ft, dtype=np.int64).reshape(-1, 3))


def load_uv_layout(path: str, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uv_coords [Vt, 2] float32, uv_faces [F, 3] int64) from ``path`` for a model with ``faces`` [F, 3].

    Raises:
        FileNotFoundError: no such file.
        UVLayoutError: the file's layout does not fit ``faces`` (what differs is named).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"UV file not found: {path} (flame.uv_path: FLAME_texture.npz, an .npz with vt "
                                f"and ft, or the FLAME template .obj)")
    faces = np.asarray(faces, dtype=np.int64)
    if path.lower().endswith(".obj"):
        vt, fv, ft = _read_obj(path)
        if fv.shape != faces.shape:
            raise UVLayoutError(f"{path}: {len(fv)} faces, the head model has {len(faces)}; give the template of "
                                f"this model")
        diff = np.flatnonzero((fv != faces).any(1))
        if diff.size:
            k = int(diff[0])
            raise UVLayoutError(f"{path}: face {k} is {fv[k].tolist()}, the head model's is {faces[k].tolist()} "
                                f"({diff.size} faces differ); give the template of this model")
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                if not {"vt", "ft"} <= set(z.files):
                    raise UVLayoutError(f"{path}: needs arrays vt [Vt, 2] and ft [F, 3]; it has {sorted(z.files)}")
                vt = np.asarray(z["vt"], dtype=np.float32)
                ft = np.asarray(z["ft"]).astype(np.int64)
        except (OSError, ValueError) as exc:
            if isinstance(exc, UVLayoutError):
                raise
            raise UVLayoutError(f"{path}: not a readable .npz or .obj ({exc})") from None
    if vt.ndim != 2 or vt.shape[1] != 2 or not len(vt):
        raise UVLayoutError(f"{path}: vt must be [Vt, 2], got {list(vt.shape)}")
    if ft.shape != faces.shape:
        raise UVLayoutError(f"{path}: ft is {list(ft.shape)}, the head model has {len(faces)} faces ([F, 3])")
    if ft.min() < 0 or ft.max() >= len(vt):
        raise UVLayoutError(f"{path}: ft indexes {int(ft.min())}..{int(ft.max())}, but vt has {len(vt)} rows")
    if not np.isfinite(vt).all():
        raise UVLayoutError(f"{path}: vt holds NaN or infinite values")
    return vt, ft
