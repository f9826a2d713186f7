"""Load real FLAME assets (no chumpy, no plain pickle) and save our own formats.

Reads (all local paths; resolve URIs in the driver):

- FLAME 2017/2019/2020 ``generic_model.pkl`` / ``male_model.pkl`` / ``female_model.pkl``
  (Python 2 pickles; ``shapedirs`` is a chumpy ``Ch``) and FLAME 2023 ``flame2023*.pkl``
  (plain arrays), through :mod:`dcnn_flame.flame.unpickler`'s allow-list.
  ``shapedirs`` [V, 3, K] holds shape then expression components: the first
  ``n_shape`` (our key ``'n_shape'`` when present, else FLAME's 300) are shape, the
  rest expression. The root parent in ``kintree_table`` (FLAME's 4294967295) becomes -1.
- Our ``.npz`` (:func:`save_flame_model`), read with ``allow_pickle=False``. Keys:
  ``format_version`` (1), ``edition`` (str), ``v_template``, ``faces``, ``shapedirs``,
  ``exprdirs``, ``posedirs``, ``j_regressor``, ``lbs_weights``, ``kintree_table``
  (root parent -1), ``n_shape``, ``n_expression``; optional ``uv_coords``, ``uv_faces``,
  ``eyelid_dirs``, landmark keys ``lmk_static_faces``, ``lmk_static_bary``,
  ``lmk_full_faces``, ``lmk_full_bary``, ``lmk_dynamic_faces``, ``lmk_dynamic_bary``,
  and ``extra__<name>`` for each numeric ``extras[name]``.
- Landmark embeddings: DECA ``landmark_embedding.npy`` (dict of NumPy arrays or torch
  tensors in an object array), RingNet ``flame_static_embedding.pkl`` +
  ``flame_dynamic_embedding.npy``, or the ``lmk_*`` keys above.

:func:`save_flame_pickle` writes the FLAME 2023 pickle layout (``f`` uint32, ``v_template``,
``shapedirs`` = shape ++ expression, ``posedirs``, ``J_regressor`` scipy csc, ``J``,
``weights``, ``kintree_table`` with the 4294967295 root sentinel, ``bs_style``,
``bs_type``) plus our extension keys: ``n_shape`` (only when not 300), ``edition``,
``vt``/``ft`` (UVs), ``l_eyelid``/``r_eyelid``, the ``lmk_*`` and ``extra__*`` keys.

Edition (:func:`detect_edition`): an ``edition`` key wins; otherwise a year
2017/2019/2020/2023 in the file name, else in its folder name (``FLAME2020/generic_model.pkl``),
plus variants from the name (generic/male/female, no jaw, open); eyelid keys without a
year mean 2023; anything else is ``"FLAME(unknown edition)"``.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from dcnn_flame.constants import (
    NUM_CONTOUR_LANDMARKS,
    NUM_FLAME_JOINTS,
    NUM_LANDMARKS,
    NUM_STATIC_LANDMARKS,
)
from dcnn_flame.flame.data import FLAME_NUM_SHAPE_COMPONENTS, FlameModelData, LandmarkEmbedding
from dcnn_flame.flame.unpickler import (
    FlameAssetError,
    UnsafeAssetError,
    load_npy,
    load_pickle,
    to_numpy,
)

__all__ = [
    "FlameAssetError",
    "UnsafeAssetError",
    "detect_edition",
    "load_dynamic_landmark_embedding",
    "load_flame_model",
    "load_landmark_embedding",
    "save_flame_model",
    "save_flame_pickle",
    "validate_flame_model",
]

PathLike = Union[str, os.PathLike]

NPZ_FORMAT_VERSION = 1
#: FLAME pickles mark the root's parent with uint32 -1.
KINTREE_ROOT_SENTINEL = 4294967295
#: Pose-corrective features: 9 entries of (R - I) for each non-root joint.
NUM_POSE_FEATURES = 9 * (NUM_FLAME_JOINTS - 1)
#: Yaw bins of the dynamic contour embedding (-39..39 degrees).
NUM_YAW_BINS = 79
UNKNOWN_EDITION = "FLAME(unknown edition)"

_MODEL_HINT = ("Download FLAME 2020 (generic_model.pkl) or FLAME 2023 from "
               "https://flame.is.tue.mpg.de and pass flame.model_path=<that file>, "
               "or leave flame.model_path unset to use the procedural head.")
_LMK_HINT = ("Use DECA's landmark_embedding.npy, or RingNet's flame_static_embedding.pkl "
             "with dynamic_landmark_path=flame_dynamic_embedding.npy.")
_REQUIRED_PICKLE_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
                         "kintree_table")
_REQUIRED_NPZ_KEYS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor",
                      "lbs_weights", "kintree_table")
_EXTRA_PREFIX = "extra__"
_LMK_FIELDS = ("static_faces", "static_bary", "full_faces", "full_bary", "dynamic_faces",
               "dynamic_bary")
#: Accepted key names for each landmark field: ours, then DECA's.
_LMK_ALIASES = {
    "static_faces": ("lmk_static_faces", "static_lmk_faces_idx"),
    "static_bary": ("lmk_static_bary", "static_lmk_bary_coords"),
    "full_faces": ("lmk_full_faces", "full_lmk_faces_idx"),
    "full_bary": ("lmk_full_bary", "full_lmk_bary_coords"),
    "dynamic_faces": ("lmk_dynamic_faces", "dynamic_lmk_faces_idx"),
    "dynamic_bary": ("lmk_dynamic_bary", "dynamic_lmk_bary_coords"),
}
_LMK_SHAPES = {
    "static_faces": (NUM_STATIC_LANDMARKS,),
    "static_bary": (NUM_STATIC_LANDMARKS, 3),
    "full_faces": (NUM_LANDMARKS,),
    "full_bary": (NUM_LANDMARKS, 3),
    "dynamic_faces": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS),
    "dynamic_bary": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3),
}


# ----------------------------------------------------------------------------- paths


def _local_path(path: PathLike, what: str, hint: str) -> Path:
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith("file://"):
        text = text[len("file://"):]
    if isinstance(text, str) and "://" in text:
        raise FlameAssetError(f"{what} '{text}' is a URI; only local paths are read here. "
                              "Copy the file to local disk (the driver resolves URIs) and pass that path.")
    p = Path(text).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}. {hint}")
    return p


def _is_npz(p: Path) -> bool:
    if p.suffix.lower() == ".npz":
        return True
    if p.suffix.lower() in (".pkl", ".pickle"):
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _atomic_write(path: PathLike, write) -> Path:
    """Write through ``write(file)`` into a temp file next to ``path``, then rename."""
    p = Path(os.fspath(path)).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


# ----------------------------------------------------------------------------- arrays


def _float_array(value: Any, name: str, source: str) -> np.ndarray:
    arr = to_numpy(value, f"{source}: '{name}'")
    if arr.dtype in (np.float32, np.float64):
        return arr
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    raise FlameAssetError(f"{source}: '{name}' has dtype {arr.dtype}, expected a float array. "
                          f"{_MODEL_HINT}")


def _index_array(value: Any, name: str, source: str) -> np.ndarray:
    arr = to_numpy(value, f"{source}: '{name}'")
    if arr.dtype.kind not in "iu":
        raise FlameAssetError(f"{source}: '{name}' has dtype {arr.dtype}, expected integer indices")
    return arr.astype(np.int64)


def _drop_leading_one(arr: np.ndarray, ndim: int) -> np.ndarray:
    """DECA stores full_lmk_* as [1, 68(, 3)]: drop such batch axes."""
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _normalise_kintree(kintree: np.ndarray) -> np.ndarray:
    k = kintree.astype(np.int64).copy()
    if k.ndim == 2 and k.shape[0] == 2:
        parents = k[0]
        parents[(parents < 0) | (parents >= k.shape[1])] = -1
    return k


# ----------------------------------------------------------------------------- validation


def _fmt_shape(expected: Sequence[Any]) -> str:
    return "[" + ", ".join(str(e) for e in expected) + "]"


def _check(source: str, name: str, arr: Any, expected: Sequence[Any], hint: str = _MODEL_HINT) -> None:
    """``expected`` holds ints or names (a name matches any size)."""
    if arr is None:
        raise FlameAssetError(f"{source}: '{name}' is missing. {hint}")
    shape = tuple(np.shape(arr))
    ok = len(shape) == len(expected) and all(
        isinstance(e, str) or s == e for s, e in zip(shape, expected))
    if not ok:
        raise FlameAssetError(f"{source}: '{name}' has shape {list(shape)}, expected "
                              f"{_fmt_shape(expected)}. The file is not a FLAME model of this "
                              f"layout or is damaged. {hint}")


def _check_finite(source: str, name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise FlameAssetError(f"{source}: '{name}' contains NaN or infinite values. {_MODEL_HINT}")


def _check_indices(source: str, name: str, idx: np.ndarray, upper: int, what: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= upper):
        raise FlameAssetError(f"{source}: '{name}' has indices in [{idx.min()}, {idx.max()}] but "
                              f"there are only {upper} {what}. {_MODEL_HINT}")


def _validate_landmarks(lmk: LandmarkEmbedding, source: str, num_faces: int | None) -> None:
    for field in _LMK_FIELDS:
        arr = getattr(lmk, field)
        if arr is None and field.startswith("dynamic"):
            continue
        _check(source, f"landmarks.{field}", arr, _LMK_SHAPES[field], _LMK_HINT)
        if field.endswith("bary"):
            _check_finite(source, f"landmarks.{field}", arr)
        elif num_faces is not None:
            _check_indices(source, f"landmarks.{field}", arr, num_faces, "faces")
    if (lmk.dynamic_faces is None) != (lmk.dynamic_bary is None):
        raise FlameAssetError(f"{source}: the landmark embedding has only one of dynamic_faces / "
                              f"dynamic_bary. {_LMK_HINT}")


def validate_flame_model(data: FlameModelData, source: str = "") -> None:
    """Check every array of ``data`` against V (from ``v_template``) and F (from ``faces``).

    Shapes: v_template [V,3], faces [F,3] with indices < V, shapedirs [V,3,S],
    exprdirs [V,3,E], posedirs [V,3,36], j_regressor [5,V], lbs_weights [V,5] with
    rows summing to 1, kintree_table [2,5] with parents before children; optional
    uv_coords [Vt,2] + uv_faces [F,3], eyelid_dirs [2,V,3], landmarks (indices < F).
    Float arrays must be finite.

    Raises:
        FlameAssetError: naming the array, expected vs actual shape, ``source``, and what to do.
    """
    src = source or data.source or "FLAME data"
    _check(src, "v_template", data.v_template, ("V", 3))
    num_v = data.num_vertices
    if num_v == 0:
        raise FlameAssetError(f"{src}: 'v_template' has no vertices. {_MODEL_HINT}")
    j = NUM_FLAME_JOINTS
    _check(src, "faces", data.faces, ("F", 3))
    _check(src, "shapedirs", data.shapedirs, (num_v, 3, "S"))
    _check(src, "exprdirs", data.exprdirs, (num_v, 3, "E"))
    _check(src, "posedirs", data.posedirs, (num_v, 3, NUM_POSE_FEATURES))
    _check(src, "j_regressor", data.j_regressor, (j, num_v))
    _check(src, "lbs_weights", data.lbs_weights, (num_v, j))
    _check(src, "kintree_table", data.kintree_table, (2, j))
    if np.asarray(data.faces).dtype.kind not in "iu":
        raise FlameAssetError(f"{src}: 'faces' must be integer indices, got {data.faces.dtype}")
    _check_indices(src, "faces", np.asarray(data.faces), num_v, "vertices")
    for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights"):
        _check_finite(src, name, np.asarray(getattr(data, name)))
    row_err = np.abs(np.asarray(data.lbs_weights).sum(axis=1) - 1.0)
    if row_err.size and row_err.max() > 1e-3:
        bad = int(row_err.argmax())
        raise FlameAssetError(f"{src}: 'lbs_weights' rows must sum to 1; row {bad} sums to "
                              f"{float(np.asarray(data.lbs_weights)[bad].sum()):.6f}. {_MODEL_HINT}")
    parents = data.parents
    if parents[0] != -1 or any(not 0 <= parents[i] < i for i in range(1, j)):
        raise FlameAssetError(f"{src}: 'kintree_table' parents {parents.tolist()} are not a tree "
                              f"rooted at joint 0 with parents before children. {_MODEL_HINT}")
    if not np.array_equal(np.asarray(data.kintree_table)[1], np.arange(j)):
        raise FlameAssetError(f"{src}: 'kintree_table' row 1 must be the joint ids 0..{j - 1}, "
                              f"got {np.asarray(data.kintree_table)[1].tolist()}. {_MODEL_HINT}")
    num_f = int(np.shape(data.faces)[0])
    if (data.uv_coords is None) != (data.uv_faces is None):
        raise FlameAssetError(f"{src}: uv_coords and uv_faces must be given together")
    if data.uv_coords is not None:
        _check(src, "uv_coords", data.uv_coords, ("Vt", 2))
        _check(src, "uv_faces", data.uv_faces, (num_f, 3))
        _check_finite(src, "uv_coords", np.asarray(data.uv_coords))
        _check_indices(src, "uv_faces", np.asarray(data.uv_faces), len(data.uv_coords), "uv coordinates")
    if data.eyelid_dirs is not None:
        _check(src, "eyelid_dirs", data.eyelid_dirs, (2, num_v, 3))
        _check_finite(src, "eyelid_dirs", np.asarray(data.eyelid_dirs))
    if data.landmarks is not None:
        _validate_landmarks(data.landmarks, src, num_f)


# ----------------------------------------------------------------------------- edition


def detect_edition(path: PathLike, keys: Sequence[str] = ()) -> str:
    """Human-readable FLAME edition from the file name, its folder, and its keys.

    Never raises: unknown names give ``"FLAME(unknown edition)"``. Examples:
    ``FLAME2020/generic_model.pkl`` -> ``"FLAME2020 (generic)"``,
    ``flame2023_no_jaw.pkl`` -> ``"FLAME2023 (no jaw)"``.
    """
    p = Path(os.fspath(path))
    stem, folder = p.stem.lower(), p.parent.name.lower()
    year_re = re.compile(r"(?<!\d)(2017|2019|2020|2023)(?!\d)")
    m = year_re.search(stem) or year_re.search(folder)
    year = m.group(1) if m else ("2023" if {"l_eyelid", "r_eyelid"} & set(keys) else None)
    if year is None:
        return UNKNOWN_EDITION
    variants = []
    for prefix in ("generic", "female", "male"):
        if stem.startswith(prefix):
            variants.append(prefix)
            break
    if "no_jaw" in stem or "nojaw" in stem:
        variants.append("no jaw")
    if re.search(r"(^|[_\-.])open($|[_\-.])", stem):
        variants.append("open")
    return f"FLAME{year}" + (f" ({', '.join(variants)})" if variants else "")


# ----------------------------------------------------------------------------- landmarks


def _landmark_parts(mapping: Mapping, source: str) -> dict[str, np.ndarray]:
    """Landmark fields found in ``mapping`` under our, DECA's or RingNet's key names."""
    parts: dict[str, np.ndarray] = {}
    external_dynamic = False  # DECA/RingNet row order (see _external_yaw_rows_to_bins)
    for field, aliases in _LMK_ALIASES.items():
        for key in aliases:
            if key in mapping:
                parts[field] = mapping[key]
                if field.startswith("dynamic") and not key.startswith("lmk_"):
                    external_dynamic = True
                break
    if "lmk_face_idx" in mapping and "lmk_b_coords" in mapping:  # RingNet
        faces = to_numpy(mapping["lmk_face_idx"], f"{source}: 'lmk_face_idx'")
        kind = "dynamic" if faces.ndim == 2 else "static"
        parts[f"{kind}_faces"] = faces
        parts[f"{kind}_bary"] = mapping["lmk_b_coords"]
        external_dynamic = external_dynamic or kind == "dynamic"
    out = {}
    for field, value in parts.items():
        ndim = len(_LMK_SHAPES[field])
        if field.endswith("faces"):
            arr = _index_array(value, field, source)
        else:
            arr = _float_array(value, field, source).astype(np.float64)
        arr = _drop_leading_one(arr, ndim)
        if field.startswith("dynamic") and external_dynamic and arr.shape[:1] == (NUM_YAW_BINS,):
            arr = _external_yaw_rows_to_bins(arr)
        out[field] = arr
    return out


def _external_yaw_rows_to_bins(arr: np.ndarray) -> np.ndarray:
    """Reorder a DECA/RingNet dynamic contour table into our yaw bins.

    In the released files row 0 is yaw 0, rows 1..39 are yaw +1..+39 degrees and rows
    40..78 are yaw -1..-39 (this is how their index code reads them). Our bins are
    ``round(yaw) + 39`` (bin 39 = frontal), so ours = rows [78..40] then rows [0..39].
    The yaw sign of those files matches our convention (see ``flame.layer``); it could not
    be checked against a real file here.
    """
    return np.concatenate([arr[78:39:-1], arr[0:40]], axis=0)


def _read_landmark_mapping(path: PathLike, what: str) -> tuple[dict, str]:
    p = _local_path(path, what, _LMK_HINT)
    src = str(p)
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, src
        except ValueError as e:
            raise FlameAssetError(f"{src}: {e}. {_LMK_HINT}") from None
    if p.suffix.lower() == ".npy":
        arr = load_npy(p)
        obj = arr.item() if arr.dtype.hasobject and arr.ndim == 0 else arr
    else:
        obj = load_pickle(p)
    if not isinstance(obj, Mapping):
        raise FlameAssetError(f"{src} holds a {type(obj).__name__}, expected a dict of landmark "
                              f"arrays. {_LMK_HINT}")
    return dict(obj), src


def _assemble_embedding(parts: dict[str, np.ndarray], source: str) -> LandmarkEmbedding:
    static_f, static_b = parts.get("static_faces"), parts.get("static_bary")
    full_f, full_b = parts.get("full_faces"), parts.get("full_bary")
    dyn_f, dyn_b = parts.get("dynamic_faces"), parts.get("dynamic_bary")
    if static_f is None and full_f is not None and full_b is not None:
        static_f, static_b = full_f[NUM_CONTOUR_LANDMARKS:], full_b[NUM_CONTOUR_LANDMARKS:]
    if static_f is None or static_b is None:
        raise FlameAssetError(f"{source}: no static landmark embedding found (keys for the 51 "
                              f"inner landmarks are missing). {_LMK_HINT}")
    if full_f is None or full_b is None:
        if dyn_f is None or dyn_b is None:
            raise FlameAssetError(
                f"{source} has only the {NUM_STATIC_LANDMARKS} static landmarks; the "
                f"{NUM_CONTOUR_LANDMARKS} contour landmarks need a dynamic embedding: pass "
                "dynamic_landmark_path=flame_dynamic_embedding.npy (RingNet) or use DECA's "
                "landmark_embedding.npy.")
        _check(source, "dynamic_faces", dyn_f, _LMK_SHAPES["dynamic_faces"], _LMK_HINT)
        _check(source, "dynamic_bary", dyn_b, _LMK_SHAPES["dynamic_bary"], _LMK_HINT)
        frontal = dyn_f.shape[0] // 2  # bin 39 = yaw 0
        full_f = np.concatenate([dyn_f[frontal], static_f])
        full_b = np.concatenate([dyn_b[frontal], static_b])
    lmk = LandmarkEmbedding(static_faces=static_f, static_bary=static_b, full_faces=full_f,
                            full_bary=full_b, dynamic_faces=dyn_f, dynamic_bary=dyn_b)
    _validate_landmarks(lmk, source, None)
    return lmk


def load_landmark_embedding(path: PathLike, dynamic_path: PathLike | None = None) -> LandmarkEmbedding:
    """68-landmark embedding from DECA's, RingNet's or our files.

    Args:
        path: DECA ``landmark_embedding.npy`` (static, dynamic and full), RingNet
            ``flame_static_embedding.pkl`` (51 static), or an ``.npz`` with ``lmk_*`` keys.
        dynamic_path: RingNet ``flame_dynamic_embedding.npy`` (contour per yaw bin);
            overrides any dynamic part of ``path``.

    Returns:
        LandmarkEmbedding: static [51] / [51,3], full [68] / [68,3], dynamic [79,17] /
        [79,17,3] or None. Without a full embedding, the contour is the frontal (yaw 0,
        bin 39) row of the dynamic one followed by the 51 static points.

    Raises:
        FileNotFoundError: a path does not exist.
        UnsafeAssetError: a file references a non-allow-listed global.
        FlameAssetError: keys or shapes do not match any known layout.
    """
    mapping, src = _read_landmark_mapping(path, "landmark embedding file")
    parts = _landmark_parts(mapping, src)
    if dynamic_path:
        parts["dynamic_faces"], parts["dynamic_bary"] = load_dynamic_landmark_embedding(dynamic_path)
        src = f"{src} + {dynamic_path}"
    return _assemble_embedding(parts, src)


def load_dynamic_landmark_embedding(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Only the dynamic contour embedding of ``path``: faces [79,17] int64, bary [79,17,3]."""
    mapping, src = _read_landmark_mapping(path, "dynamic landmark embedding file")
    parts = _landmark_parts(mapping, src)
    if "dynamic_faces" not in parts or "dynamic_bary" not in parts:
        raise FlameAssetError(f"{src} holds no dynamic (per-yaw contour) embedding; keys found: "
                              f"{sorted(mapping)}. {_LMK_HINT}")
    _check(src, "dynamic_faces", parts["dynamic_faces"], _LMK_SHAPES["dynamic_faces"], _LMK_HINT)
    _check(src, "dynamic_bary", parts["dynamic_bary"], _LMK_SHAPES["dynamic_bary"], _LMK_HINT)
    return parts["dynamic_faces"], parts["dynamic_bary"]


# ----------------------------------------------------------------------------- eyelids


def _load_eyelids(eyelids_path: Any) -> np.ndarray:
    """[2, V, 3] from a folder with l_eyelid.npy/r_eyelid.npy, a (left, right) pair of
    .npy paths, ``l_eyelid.npy`` (its ``r_eyelid.npy`` sibling is used), a [2,V,3] .npy,
    or an .npz with ``eyelid_dirs`` or ``l_eyelid``/``r_eyelid``."""
    hint = ("Pass the folder holding FLAME 2023's l_eyelid.npy and r_eyelid.npy, or an .npz with "
            "'l_eyelid' and 'r_eyelid'.")
    if isinstance(eyelids_path, (list, tuple)):
        if len(eyelids_path) != 2:
            raise FlameAssetError(f"eyelids_path must be (left, right), got {len(eyelids_path)} paths")
        pair = [_local_path(p, "eyelid blendshape file", hint) for p in eyelids_path]
    else:
        p = Path(os.fspath(eyelids_path)).expanduser()
        if p.is_dir():
            pair = [_local_path(p / f"{s}_eyelid.npy", "eyelid blendshape file", hint) for s in "lr"]
        else:
            p = _local_path(p, "eyelid blendshape file", hint)
            if p.suffix.lower() == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    if "eyelid_dirs" in z.files:
                        return _float_array(z["eyelid_dirs"], "eyelid_dirs", str(p))
                    if "l_eyelid" in z.files and "r_eyelid" in z.files:
                        return _float_array(np.stack([z["l_eyelid"], z["r_eyelid"]]), "eyelid_dirs", str(p))
                    raise FlameAssetError(f"{p} has no 'eyelid_dirs' or 'l_eyelid'/'r_eyelid' "
                                          f"keys (found {z.files}). {hint}")
            if p.name.lower() in ("l_eyelid.npy", "r_eyelid.npy"):
                pair = [_local_path(p.with_name(f"{s}_eyelid.npy"), "eyelid blendshape file", hint)
                        for s in "lr"]
            else:
                return _float_array(load_npy(p), "eyelid_dirs", str(p))
    arrays = [_float_array(load_npy(q), q.name, str(q)) for q in pair]
    if arrays[0].shape != arrays[1].shape:
        raise FlameAssetError(f"left/right eyelid shapes differ: {arrays[0].shape} vs "
                              f"{arrays[1].shape} ({pair[0]}, {pair[1]})")
    return np.stack(arrays)


# ----------------------------------------------------------------------------- models


def _extras_from(mapping: Mapping, source: str) -> dict:
    return {k[len(_EXTRA_PREFIX):]: to_numpy(v, f"{source}: '{k}'")
            for k, v in mapping.items() if isinstance(k, str) and k.startswith(_EXTRA_PREFIX)}


def _landmarks_from(mapping: Mapping, source: str) -> LandmarkEmbedding | None:
    if not any(k in mapping for k in ("lmk_static_faces", "lmk_full_faces")):
        return None
    return _assemble_embedding(_landmark_parts(mapping, source), source)


def _from_flame_pickle(d: Mapping, p: Path) -> FlameModelData:
    src = str(p)
    missing = [k for k in _REQUIRED_PICKLE_KEYS if k not in d]
    if missing:
        raise FlameAssetError(f"{src} is missing FLAME keys {missing} (found {sorted(map(str, d))}). "
                              f"{_MODEL_HINT}")
    style = d.get("bs_style", "lbs")
    if isinstance(style, str) and style != "lbs":
        raise FlameAssetError(f"{src}: bs_style is {style!r}; only linear blend skinning ('lbs') "
                              f"models are supported. {_MODEL_HINT}")
    v_template = _float_array(d["v_template"], "v_template", src)
    num_v = v_template.shape[0] if v_template.ndim == 2 else -1
    dirs = _float_array(d["shapedirs"], "shapedirs", src)
    _check(src, "shapedirs", dirs, (num_v if num_v >= 0 else "V", 3, "K"))
    k = dirs.shape[2]
    n_shape = int(d["n_shape"]) if "n_shape" in d else min(k, FLAME_NUM_SHAPE_COMPONENTS)
    if not 0 <= n_shape <= k:
        raise FlameAssetError(f"{src}: n_shape={n_shape} but shapedirs has only {k} components")
    uv_coords = _float_array(d["vt"], "vt", src) if "vt" in d else None
    uv_faces = _index_array(d["ft"], "ft", src) if "ft" in d else None
    eyelids = None
    if "l_eyelid" in d and "r_eyelid" in d:
        eyelids = np.stack([_float_array(d["l_eyelid"], "l_eyelid", src),
                            _float_array(d["r_eyelid"], "r_eyelid", src)])
    edition = d.get("edition")
    return FlameModelData(
        v_template=v_template,
        faces=_index_array(d["f"], "f", src),
        shapedirs=np.ascontiguousarray(dirs[:, :, :n_shape]),
        exprdirs=np.ascontiguousarray(dirs[:, :, n_shape:]),
        posedirs=_float_array(d["posedirs"], "posedirs", src),
        j_regressor=_float_array(d["J_regressor"], "J_regressor", src).astype(np.float64),
        lbs_weights=_float_array(d["weights"], "weights", src),
        kintree_table=_normalise_kintree(_index_array(d["kintree_table"], "kintree_table", src)),
        uv_coords=uv_coords,
        uv_faces=uv_faces,
        landmarks=_landmarks_from(d, src),
        eyelid_dirs=eyelids,
        edition=edition if isinstance(edition, str) else detect_edition(p, [str(x) for x in d]),
        source=src,
        extras=_extras_from(d, src),
    )


def _from_npz(p: Path) -> FlameModelData:
    src = str(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays, damaged zip members
        raise FlameAssetError(f"{src} could not be read without pickle ({e}). {_MODEL_HINT}") from None
    missing = [k for k in _REQUIRED_NPZ_KEYS if k not in d]
    if missing:
        raise FlameAssetError(f"{src} is missing keys {missing} (found {sorted(d)}); it was not "
                              f"written by save_flame_model. {_MODEL_HINT}")
    version = int(d.get("format_version", NPZ_FORMAT_VERSION))
    if version > NPZ_FORMAT_VERSION:
        raise FlameAssetError(f"{src} has format_version {version}; this code reads up to "
                              f"{NPZ_FORMAT_VERSION}. Update dcnn_flame.")
    data = FlameModelData(
        v_template=_float_array(d["v_template"], "v_template", src),
        faces=_index_array(d["faces"], "faces", src),
        shapedirs=_float_array(d["shapedirs"], "shapedirs", src),
        exprdirs=_float_array(d["exprdirs"], "exprdirs", src),
        posedirs=_float_array(d["posedirs"], "posedirs", src),
        j_regressor=_float_array(d["j_regressor"], "j_regressor", src).astype(np.float64),
        lbs_weights=_float_array(d["lbs_weights"], "lbs_weights", src),
        kintree_table=_normalise_kintree(_index_array(d["kintree_table"], "kintree_table", src)),
        uv_coords=_float_array(d["uv_coords"], "uv_coords", src) if "uv_coords" in d else None,
        uv_faces=_index_array(d["uv_faces"], "uv_faces", src) if "uv_faces" in d else None,
        landmarks=_landmarks_from(d, src),
        eyelid_dirs=_float_array(d["eyelid_dirs"], "eyelid_dirs", src) if "eyelid_dirs" in d else None,
        edition=str(d["edition"]) if "edition" in d else UNKNOWN_EDITION,
        source=src,
        extras=_extras_from(d, src),
    )
    for key, n in (("n_shape", data.shapedirs.shape[-1]), ("n_expression", data.exprdirs.shape[-1])):
        if key in d and int(d[key]) != n:
            raise FlameAssetError(f"{src}: {key}={int(d[key])} but the stored basis has {n} "
                                  "components; the file is damaged. Re-save it with save_flame_model.")
    return data


def load_flame_model(
    path: PathLike,
    landmark_path: PathLike | None = None,
    dynamic_landmark_path: PathLike | None = None,
    eyelids_path: Any = None,
) -> FlameModelData:
    """Load a FLAME model file (.pkl of any edition, or our .npz) and validate it.

    Args:
        path: local FLAME ``.pkl`` (2017/2019/2020 chumpy-era or 2023) or ``.npz``
            from :func:`save_flame_model`.
        landmark_path: landmark embedding (see :func:`load_landmark_embedding`);
            replaces one stored in the model file.
        dynamic_landmark_path: RingNet ``flame_dynamic_embedding.npy``.
        eyelids_path: FLAME 2023 eyelid blendshapes: a folder with ``l_eyelid.npy`` and
            ``r_eyelid.npy``, one of those files, a (left, right) pair of paths, a
            [2,V,3] ``.npy`` or an ``.npz``; replaces eyelids stored in the model file.

    Returns:
        FlameModelData with v_template [V,3], faces [F,3] int64, shapedirs [V,3,S],
        exprdirs [V,3,E], posedirs [V,3,36], j_regressor [5,V] dense float64,
        lbs_weights [V,5], kintree_table [2,5] int64 (root parent -1).

    Raises:
        FileNotFoundError: a path does not exist (the message names it).
        UnsafeAssetError: the pickle references a global outside the allow-list.
        FlameAssetError: wrong keys/shapes/values (names the array, expected vs actual).
    """
    p = _local_path(path, "FLAME model file", _MODEL_HINT)
    if _is_npz(p):
        data = _from_npz(p)
    else:
        obj = load_pickle(p)
        if not isinstance(obj, Mapping):
            raise FlameAssetError(f"{p} holds a {type(obj).__name__}, not a dict of FLAME arrays. "
                                  f"{_MODEL_HINT}")
        data = _from_flame_pickle(obj, p)
    if landmark_path:
        data.landmarks = load_landmark_embedding(landmark_path, dynamic_landmark_path or None)
    elif dynamic_landmark_path:
        if data.landmarks is None:
            raise FlameAssetError("dynamic_landmark_path was given without landmark_path and the "
                                  f"model {p} has no landmark embedding. {_LMK_HINT}")
        dyn = load_dynamic_landmark_embedding(dynamic_landmark_path)
        data.landmarks.dynamic_faces, data.landmarks.dynamic_bary = dyn
    if eyelids_path:
        data.eyelid_dirs = _load_eyelids(eyelids_path)
    validate_flame_model(data, str(p))
    return data


# ----------------------------------------------------------------------------- saving


def _numeric_extras(extras: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for name, value in extras.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"extras key {name!r} cannot be saved: use letters, digits, '_', '.', '-'")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"extras[{name!r}] is {type(value).__name__} (dtype {arr.dtype}); only "
                            "numeric arrays can be saved. Convert it or leave it out of extras.")
        out[_EXTRA_PREFIX + name] = arr
    return out


def _landmark_keys(lmk: LandmarkEmbedding | None) -> dict[str, np.ndarray]:
    if lmk is None:
        return {}
    out = {}
    for field in _LMK_FIELDS:
        value = getattr(lmk, field)
        if value is not None:
            arr = np.asarray(value)
            out[_LMK_ALIASES[field][0]] = arr.astype(np.int64) if field.endswith("faces") else arr
    return out


def save_flame_model(data: FlameModelData, path: PathLike, compress: bool = False) -> Path:
    """Write ``data`` as our ``.npz`` (keys in the module docstring); atomic, no pickle.

    Args:
        data: a valid model (checked with :func:`validate_flame_model` first).
        path: local output file (``.npz`` suggested; the name is kept as given).
        compress: zip-deflate the arrays (smaller, slower).

    Returns:
        The written path.
    """
    validate_flame_model(data, data.source or "model to save")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(NPZ_FORMAT_VERSION, np.int64),
        "edition": np.asarray(str(data.edition)),
        "v_template": np.asarray(data.v_template),
        "faces": np.asarray(data.faces, np.int64),
        "shapedirs": np.asarray(data.shapedirs),
        "exprdirs": np.asarray(data.exprdirs),
        "posedirs": np.asarray(data.posedirs),
        "j_regressor": np.asarray(data.j_regressor),
        "lbs_weights": np.asarray(data.lbs_weights),
        "kintree_table": data.kintree_table.astype(np.int64).copy(),
        "n_shape": np.asarray(data.num_shape, np.int64),
        "n_expression": np.asarray(data.num_expression, np.int64),
    }
    arrays["kintree_table"][0] = data.parents
    if data.uv_coords is not None:
        arrays["uv_coords"] = np.asarray(data.uv_coords)
        arrays["uv_faces"] = np.asarray(data.uv_faces, np.int64)
    if data.eyelid_dirs is not None:
        arrays["eyelid_dirs"] = np.asarray(data.eyelid_dirs)
    arrays.update(_landmark_keys(data.landmarks))
    arrays.update(_numeric_extras(data.extras))
    saver = np.savez_compressed if compress else np.savez
    return _atomic_write(path, lambda f: saver(f, **arrays))


def save_flame_pickle(data: FlameModelData, path: PathLike) -> Path:
    """Write ``data`` in the FLAME 2023 pickle layout (readable by FLAME tooling).

    ``shapedirs`` [V,3,S+E] = shape ++ expression; ``J_regressor`` a scipy csc matrix;
    root parent 4294967295. Extension keys (ignored by other tools): ``n_shape`` when
    S != 300, ``edition``, ``vt``/``ft``, ``l_eyelid``/``r_eyelid``, ``lmk_*``, ``extra__*``.
    Plain NumPy arrays only (no chumpy); pickle protocol 4; atomic write.

    Returns:
        The written path.
    """
    import scipy.sparse

    validate_flame_model(data, data.source or "model to save")
    faces = np.asarray(data.faces)
    kintree = data.kintree_table.astype(np.int64).copy()
    kintree[0] = np.where(data.parents < 0, KINTREE_ROOT_SENTINEL, data.parents)
    j_reg = np.asarray(data.j_regressor)
    out: dict[str, Any] = {
        "f": faces.astype(np.uint32),
        "v_template": np.asarray(data.v_template),
        "shapedirs": np.concatenate([np.asarray(data.shapedirs), np.asarray(data.exprdirs)], axis=2),
        "posedirs": np.asarray(data.posedirs),
        "J_regressor": scipy.sparse.csc_matrix(j_reg),
        "J": j_reg @ np.asarray(data.v_template),
        "weights": np.asarray(data.lbs_weights),
        "kintree_table": kintree,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "edition": str(data.edition),
    }
    if data.num_shape != FLAME_NUM_SHAPE_COMPONENTS:
        out["n_shape"] = data.num_shape
    if data.uv_coords is not None:
        out["vt"] = np.asarray(data.uv_coords)
        out["ft"] = np.asarray(data.uv_faces).astype(np.uint32)
    if data.eyelid_dirs is not None:
        out["l_eyelid"], out["r_eyelid"] = np.asarray(data.eyelid_dirs)[0], np.asarray(data.eyelid_dirs)[1]
    out.update(_landmark_keys(data.landmarks))
    out.update(_numeric_extras(data.extras))
    return _atomic_write(path, lambda f: pickle.dump(out, f, protocol=4))
