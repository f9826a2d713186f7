"""FLAME asset loading (chumpy-era and 2023 pickles, our npz), landmark embeddings,
and the restricted unpickler's refusal of code-running pickles."""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from dcnn_flame.flame.assets import (
    KINTREE_ROOT_SENTINEL,
    UNKNOWN_EDITION,
    FlameAssetError,
    UnsafeAssetError,
    detect_edition,
    load_flame_model,
    load_landmark_embedding,
    save_flame_model,
    save_flame_pickle,
    validate_flame_model,
)
from dcnn_flame.flame.data import FlameModelData, LandmarkEmbedding
from dcnn_flame.flame.unpickler import load_npy, loads_pickle

V, F = 50, 40
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


def tiny_landmarks(rng: np.random.Generator, num_faces: int) -> LandmarkEmbedding:
    def bary(*shape):
        b = rng.random(shape + (3,)) + 0.1
        return b / b.sum(-1, keepdims=True)

    return LandmarkEmbedding(
        static_faces=rng.integers(0, num_faces, 51), static_bary=bary(51),
        full_faces=rng.integers(0, num_faces, 68), full_bary=bary(68),
        dynamic_faces=rng.integers(0, num_faces, (79, 17)), dynamic_bary=bary(79, 17))


def tiny_model(n_shape: int = 6, n_expr: int = 4, seed: int = 0, dtype=np.float64,
               extras: bool = True) -> FlameModelData:
    rng = np.random.default_rng(seed)
    weights = rng.random((V, 5)) + 0.01
    j_reg = rng.random((5, V)) * (rng.random((5, V)) < 0.3)
    j_reg[:, 0] += 0.1  # no empty row
    uv = rng.random((V + 3, 2))
    return FlameModelData(
        v_template=rng.normal(size=(V, 3)).astype(dtype),
        faces=rng.integers(0, V, (F, 3)),
        shapedirs=rng.normal(size=(V, 3, n_shape)).astype(dtype),
        exprdirs=rng.normal(size=(V, 3, n_expr)).astype(dtype),
        posedirs=rng.normal(size=(V, 3, 36)).astype(dtype),
        j_regressor=j_reg / j_reg.sum(1, keepdims=True),
        lbs_weights=(weights / weights.sum(1, keepdims=True)).astype(dtype),
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        uv_coords=uv, uv_faces=rng.integers(0, len(uv), (F, 3)),
        landmarks=tiny_landmarks(rng, F),
        eyelid_dirs=rng.normal(size=(2, V, 3)).astype(dtype),
        edition="procedural", source="tiny",
        extras={"albedo": rng.random((V, 3)), "seed": np.int64(seed)} if extras else {})


def flame2023_dict(data: FlameModelData, j_format: str = "csc") -> dict:
    """The FLAME 2023 pickle layout, written independently of save_flame_pickle."""
    j_reg = data.j_regressor
    j = {"csc": scipy.sparse.csc_matrix, "csr": scipy.sparse.csr_matrix,
         "coo": scipy.sparse.coo_matrix, "dense": np.asarray}[j_format](j_reg)
    return {
        "f": data.faces.astype(np.uint32), "v_template": data.v_template,
        "shapedirs": np.concatenate([data.shapedirs, data.exprdirs], axis=2),
        "posedirs": data.posedirs, "J_regressor": j, "J": j_reg @ data.v_template,
        "weights": data.lbs_weights,
        "kintree_table": np.array([[KINTREE_ROOT_SENTINEL, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
        "bs_style": "lbs", "bs_type": "lrotmin",
    }


def assert_core_equal(a: FlameModelData, b: FlameModelData) -> None:
    for name in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor",
                 "lbs_weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.kintree_table, [[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(a.parents, b.parents)
    assert a.faces.dtype == np.int64 and a.j_regressor.dtype == np.float64


def assert_landmarks_equal(a: LandmarkEmbedding, b: LandmarkEmbedding) -> None:
    for name in ("static_faces", "static_bary", "full_faces", "full_bary", "dynamic_faces",
                 "dynamic_bary"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.static_faces.dtype == np.int64 and a.full_faces.dtype == np.int64


# ----------------------------------------------------------------------------- chumpy era


@contextlib.contextmanager
def fake_chumpy():
    """A stand-in ``chumpy`` package in sys.modules only while the test pickles."""
    pkg, ch, ops = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.ch_ops"))

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self.label = "shapedirs"

        def __getstate__(self):  # chumpy drops its weakref caches the same way
            return dict(self.__dict__)

    class add:  # an expression node: no stored 'x'
        def __init__(self, a, b):
            self.a, self.b = a, b

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
    ch.Ch, ops.add, pkg.ch, pkg.ch_ops = Ch, add, ch, ops
    saved = {n: sys.modules.get(n) for n in ("chumpy", "chumpy.ch", "chumpy.ch_ops")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": ch, "chumpy.ch_ops": ops})
    try:
        yield pkg
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Py2Array:
    """Pickles like a Python-2 NumPy array: raw data as a (latin1-decoded) str."""

    def __init__(self, arr):
        self.arr = np.ascontiguousarray(arr)

    def __reduce__(self):
        a = self.arr
        return (_RECONSTRUCT, (np.ndarray, (0,), "b"),
                (1, a.shape, a.dtype, False, a.tobytes().decode("latin1")))


def _as_py2_names(blob: bytes) -> bytes:
    """Rewrite module paths to the ones Python 2 / old NumPy / old SciPy wrote."""
    return (blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                .replace(b"scipy.sparse._csc", b"scipy.sparse.csc"))


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_era_pickle_loads_without_chumpy(tmp_path, protocol):
    data = tiny_model(n_shape=300, n_expr=100, extras=False)
    d = flame2023_dict(data)
    d["kintree_table"] = d["kintree_table"].astype(np.int64)
    d["v_template"] = Py2Array(data.v_template)
    with fake_chumpy() as ch:
        d["shapedirs"] = ch.ch.Ch(d["shapedirs"])
        d["J"] = ch.ch_ops.add(ch.ch.Ch(d["J"]), ch.ch.Ch(np.zeros(3)))
        blob = _as_py2_names(pickle.dumps(d, protocol=protocol))
    assert "chumpy" not in sys.modules
    assert b"chumpy.ch" in blob and b"numpy.core.multiarray" in blob and b"scipy.sparse.csc\n" in blob
    path = tmp_path / "FLAME2020" / "generic_model.pkl"
    path.parent.mkdir()
    path.write_bytes(blob)

    loaded = load_flame_model(path)

    assert "chumpy" not in sys.modules
    assert_core_equal(loaded, data)
    assert loaded.num_shape == 300 and loaded.num_expression == 100  # FLAME convention
    assert loaded.edition == "FLAME2020 (generic)" and loaded.source == str(path)
    assert loaded.landmarks is None and loaded.eyelid_dirs is None and loaded.uv_coords is None


def test_chumpy_expression_as_array_is_a_clear_error(tmp_path):
    d = flame2023_dict(tiny_model())
    with fake_chumpy() as ch:
        d["shapedirs"] = ch.ch_ops.add(ch.ch.Ch(d["shapedirs"]), ch.ch.Ch(d["shapedirs"]))
        (tmp_path / "m.pkl").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(FlameAssetError, match=r"chumpy\.ch_ops\.add.*no array under 'x'"):
        load_flame_model(tmp_path / "m.pkl")


# ----------------------------------------------------------------------------- 2023 / npz / ours


@pytest.mark.parametrize("j_format", ["csc", "csr", "coo", "dense"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_flame2023_layout_round_trip(tmp_path, j_format, protocol):
    data = tiny_model(n_shape=300, n_expr=10, extras=False)
    path = tmp_path / "flame2023_no_jaw.pkl"
    path.write_bytes(pickle.dumps(flame2023_dict(data, j_format), protocol=protocol))

    loaded = load_flame_model(path)

    assert_core_equal(loaded, data)
    assert loaded.num_shape == 300 and loaded.num_expression == 10
    assert loaded.edition == "FLAME2023 (no jaw)"


def test_flame2023_with_eyelids_in_keys_and_from_files(tmp_path):
    data = tiny_model(extras=False)
    d = flame2023_dict(data)
    d["n_shape"] = data.num_shape
    d["l_eyelid"], d["r_eyelid"] = data.eyelid_dirs
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(d, protocol=4))
    loaded = load_flame_model(tmp_path / "x.pkl")
    np.testing.assert_array_equal(loaded.eyelid_dirs, data.eyelid_dirs)
    assert loaded.edition == "FLAME2023"  # eyelid keys, no year in the name

    del d["l_eyelid"], d["r_eyelid"]
    (tmp_path / "flame2023.pkl").write_bytes(pickle.dumps(d, protocol=4))
    lids = tmp_path / "lids"
    lids.mkdir()
    np.save(lids / "l_eyelid.npy", data.eyelid_dirs[0])
    np.save(lids / "r_eyelid.npy", data.eyelid_dirs[1])
    np.savez(lids / "lids.npz", l_eyelid=data.eyelid_dirs[0], r_eyelid=data.eyelid_dirs[1])
    for eyelids_path in (lids, str(lids / "r_eyelid.npy"), (lids / "l_eyelid.npy", lids / "r_eyelid.npy"),
                         lids / "lids.npz"):
        loaded = load_flame_model(tmp_path / "flame2023.pkl", eyelids_path=eyelids_path)
        np.testing.assert_array_equal(loaded.eyelid_dirs, data.eyelid_dirs)  # [0] left, [1] right
    np.save(tmp_path / "bad_lids.npy", data.eyelid_dirs[:, :-1])
    with pytest.raises(FlameAssetError, match=r"eyelid_dirs.*\[2, 49, 3\].*\[2, 50, 3\]"):
        load_flame_model(tmp_path / "flame2023.pkl", eyelids_path=tmp_path / "bad_lids.npy")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npz_round_trip_keeps_everything(tmp_path, dtype):
    data = tiny_model(dtype=dtype)
    path = save_flame_model(data, tmp_path / "sub" / "head.npz", compress=dtype == np.float32)

    with np.load(path, allow_pickle=False) as z:
        assert int(z["n_shape"]) == 6 and int(z["n_expression"]) == 4
        assert z["kintree_table"][0, 0] == -1
    loaded = load_flame_model(path)

    assert_core_equal(loaded, data)
    assert loaded.v_template.dtype == dtype and loaded.shapedirs.dtype == dtype
    assert_landmarks_equal(loaded.landmarks, data.landmarks)
    np.testing.assert_array_equal(loaded.uv_coords, data.uv_coords)
    np.testing.assert_array_equal(loaded.uv_faces, data.uv_faces)
    np.testing.assert_array_equal(loaded.eyelid_dirs, data.eyelid_dirs)
    assert set(loaded.extras) == {"albedo", "seed"}
    np.testing.assert_array_equal(loaded.extras["albedo"], data.extras["albedo"])
    assert int(loaded.extras["seed"]) == 0
    assert loaded.edition == "procedural" and loaded.source == str(path)
    assert not list(path.parent.glob(".*tmp*"))  # atomic write left no temp file


@pytest.mark.parametrize("n_shape", [6, 300])
def test_save_flame_pickle_round_trip_and_layout(tmp_path, n_shape):
    data = tiny_model(n_shape=n_shape, n_expr=3)
    path = save_flame_pickle(data, tmp_path / "head.pkl")

    raw = pickle.loads(path.read_bytes())  # our own file: plain pickle is fine here
    assert raw["f"].dtype == np.uint32 and raw["shapedirs"].shape == (V, 3, n_shape + 3)
    np.testing.assert_array_equal(raw["shapedirs"][:, :, n_shape:], data.exprdirs)
    assert scipy.sparse.isspmatrix_csc(raw["J_regressor"])
    assert raw["kintree_table"][0, 0] == KINTREE_ROOT_SENTINEL
    assert raw["bs_style"] == "lbs" and raw["bs_type"] == "lrotmin"
    assert ("n_shape" in raw) == (n_shape != 300)
    np.testing.assert_allclose(raw["J"], data.j_regressor @ data.v_template)

    loaded = load_flame_model(path)
    assert_core_equal(loaded, data)
    assert loaded.num_shape == n_shape and loaded.num_expression == 3
    assert_landmarks_equal(loaded.landmarks, data.landmarks)
    np.testing.assert_array_equal(loaded.uv_faces, data.uv_faces)
    np.testing.assert_array_equal(loaded.eyelid_dirs, data.eyelid_dirs)
    np.testing.assert_array_equal(loaded.extras["albedo"], data.extras["albedo"])
    assert loaded.edition == "procedural"


def test_dynamic_embedding_replaces_the_stored_one(tmp_path):
    data = tiny_model()
    save_flame_model(data, tmp_path / "head.npz")
    new = tiny_landmarks(np.random.default_rng(9), F)
    np.save(tmp_path / "flame_dynamic_embedding.npy",
            {"lmk_face_idx": external_rows(new.dynamic_faces), "lmk_b_coords": external_rows(new.dynamic_bary)},
            allow_pickle=True)
    loaded = load_flame_model(tmp_path / "head.npz",
                              dynamic_landmark_path=tmp_path / "flame_dynamic_embedding.npy")
    np.testing.assert_array_equal(loaded.landmarks.dynamic_faces, new.dynamic_faces)
    np.testing.assert_array_equal(loaded.landmarks.full_faces, data.landmarks.full_faces)


def test_saving_non_numeric_extras_is_refused(tmp_path):
    data = tiny_model()
    data.extras["note"] = {"a": 1}
    with pytest.raises(TypeError, match="extras\\['note'\\]"):
        save_flame_model(data, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- errors


def _bad(d: dict, key: str, value) -> dict:
    d = dict(d)
    d[key] = value
    return d


_BASE = tiny_model(extras=False)
_D = flame2023_dict(_BASE)


@pytest.mark.parametrize("key,value,pattern", [
    ("posedirs", _BASE.posedirs[:, :, :35], r"'posedirs' has shape \[50, 3, 35\], expected \[50, 3, 36\]"),
    ("J_regressor", _BASE.j_regressor[:, :49], r"'j_regressor' has shape \[5, 49\], expected \[5, 50\]"),
    ("weights", _BASE.lbs_weights[:, :4], r"'lbs_weights' has shape \[50, 4\], expected \[50, 5\]"),
    ("shapedirs", _D["shapedirs"][:49], r"'shapedirs' has shape \[49, 3, 10\], expected \[50, 3, K\]"),
    ("kintree_table", np.zeros((2, 4), np.int64), r"'kintree_table' has shape \[2, 4\]"),
    ("f", np.full((F, 3), V, np.uint32), r"'faces' has indices in \[50, 50\].*only 50 vertices"),
    ("f", _BASE.faces.astype(np.float32), r"'f' has dtype float32, expected integer"),
    ("v_template", np.full((V, 3), np.nan), r"'v_template' contains NaN"),
    ("weights", _BASE.lbs_weights * 2, r"'lbs_weights' rows must sum to 1"),
    ("kintree_table", np.array([[KINTREE_ROOT_SENTINEL, 2, 0, 1, 1], [0, 1, 2, 3, 4]]), r"parents"),
    ("bs_style", "dqs", r"bs_style is 'dqs'"),
])
def test_wrong_arrays_name_the_array_path_and_remedy(tmp_path, key, value, pattern):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(_bad(_D, key, value), protocol=4))
    with pytest.raises(FlameAssetError, match=pattern) as info:
        load_flame_model(path)
    msg = str(info.value)
    assert str(path) in msg and ("flame.is.tue.mpg.de" in msg or key == "f")


def test_missing_keys_and_files_are_named(tmp_path):
    d = dict(_D)
    del d["weights"]
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(d))
    with pytest.raises(FlameAssetError, match=r"missing FLAME keys \['weights'\]"):
        load_flame_model(tmp_path / "m.pkl")
    missing = tmp_path / "FLAME2020" / "generic_model.pkl"
    with pytest.raises(FileNotFoundError, match="flame.is.tue.mpg.de") as info:
        load_flame_model(str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_landmark_embedding(tmp_path / "nope.npy")
    with pytest.raises(FlameAssetError, match="local paths"):
        load_flame_model("s3://bucket/generic_model.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FlameAssetError, match="holds a list"):
        load_flame_model(tmp_path / "list.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(FlameAssetError, match="not a readable pickle"):
        load_flame_model(tmp_path / "junk.pkl")


def test_validate_accepts_good_and_names_bad_landmarks():
    data = tiny_model()
    validate_flame_model(data)
    data.landmarks.full_faces = data.landmarks.full_faces.copy()
    data.landmarks.full_faces[3] = F
    with pytest.raises(FlameAssetError, match=r"landmarks\.full_faces.*only 40 faces"):
        validate_flame_model(data)


# ----------------------------------------------------------------------------- security


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _evil_payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "posix.system": pickle.dumps({"v_template": _Reduce(os.system, cmd)}, protocol=2),
        "os.system": b"cos\nsystem\n(V" + cmd.encode() + b"\ntR.",
        "builtins.eval": pickle.dumps(_Reduce(eval, f"open({str(marker)!r}, 'w').close()"), protocol=4),
        "builtins.exec": b"c__builtin__\nexec\n(Vopen(" + repr(str(marker)).encode() + b",'w')\ntR.",
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(marker)]), protocol=4),
        "functools.partial": pickle.dumps(_Reduce(functools.partial(os.system, cmd)), protocol=2),
    }


@pytest.mark.parametrize("refused", ["posix.system", "os.system", "builtins.eval", "builtins.exec",
                                     "subprocess.Popen", "functools.partial"])
def test_code_running_pickles_are_refused_without_running(tmp_path, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_evil_payloads(marker)[refused])
    with pytest.raises(UnsafeAssetError) as info:
        load_flame_model(path)
    assert f"'{refused}'" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    # the same payload hidden in a chumpy state or a .npy object array
    with pytest.raises(UnsafeAssetError):
        load_landmark_embedding(path)
    assert not marker.exists()


def test_evil_payload_nested_in_chumpy_state_and_npy_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = dict(_D)
    with fake_chumpy() as ch:
        obj = ch.ch.Ch(d["shapedirs"])
        obj.hook = _Reduce(os.system, f"touch {marker}")
        d["shapedirs"] = obj
        (tmp_path / "m.pkl").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UnsafeAssetError, match="system"):
        load_flame_model(tmp_path / "m.pkl")
    np.save(tmp_path / "landmark_embedding.npy",
            np.array({"static_lmk_faces_idx": _Reduce(os.system, f"touch {marker}")}), allow_pickle=True)
    with pytest.raises(UnsafeAssetError, match="system"):
        load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    np.savez(tmp_path / "obj.npz", v_template=np.array([_Reduce(os.system, f"touch {marker}")]))
    with pytest.raises(FlameAssetError, match="without pickle"):
        load_flame_model(tmp_path / "obj.npz")
    assert not marker.exists()


def test_allowed_helpers_cannot_be_misused():
    # copyreg._reconstructor only for stand-ins; _codecs.encode only latin1
    with pytest.raises(UnsafeAssetError, match="_reconstructor"):
        loads_pickle(b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR.")
    with pytest.raises(UnsafeAssetError, match="latin1"):
        loads_pickle(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    assert loads_pickle(b"c_codecs\nencode\n(Vab\nVlatin1\ntR.") == b"ab"


def test_torch_storage_bytes_go_through_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
    blob = pickle.dumps({"x": _Reduce(torch.storage._load_from_bytes, inner)}, protocol=4)
    with pytest.raises(UnsafeAssetError, match="weights_only"):
        loads_pickle(blob)
    assert not marker.exists()


# ----------------------------------------------------------------------------- landmarks


def external_rows(bins: np.ndarray) -> np.ndarray:
    """Our yaw bins (bin 39 = frontal) -> the row order of DECA/RingNet files (row 0 = yaw 0,
    rows 1..39 = yaw +1..+39, rows 40..78 = yaw -1..-39), written as a plain loop."""
    rows = np.empty_like(bins)
    for yaw in range(-39, 40):
        row = yaw if yaw >= 0 else 39 - yaw
        rows[row] = bins[yaw + 39]
    return rows


def test_external_dynamic_rows_are_reordered_into_yaw_bins():
    from dcnn_flame.flame.assets import _external_yaw_rows_to_bins

    bins = np.arange(79 * 2).reshape(79, 2)
    np.testing.assert_array_equal(_external_yaw_rows_to_bins(external_rows(bins)), bins)


def _deca_dict(lmk: LandmarkEmbedding) -> dict:
    return {
        "static_lmk_faces_idx": lmk.static_faces, "static_lmk_bary_coords": lmk.static_bary,
        "dynamic_lmk_faces_idx": external_rows(lmk.dynamic_faces),
        "dynamic_lmk_bary_coords": external_rows(lmk.dynamic_bary),
        "full_lmk_faces_idx": lmk.full_faces[None], "full_lmk_bary_coords": lmk.full_bary[None],
    }


def test_deca_embedding_with_numpy_arrays(tmp_path):
    lmk = tiny_landmarks(np.random.default_rng(1), F)
    np.save(tmp_path / "landmark_embedding.npy", _deca_dict(lmk), allow_pickle=True)
    loaded = load_landmark_embedding(tmp_path / "landmark_embedding.npy")
    assert_landmarks_equal(loaded, lmk)
    assert loaded.full_faces.shape == (68,) and loaded.full_bary.shape == (68, 3)


def test_deca_embedding_with_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    lmk = tiny_landmarks(np.random.default_rng(2), F)
    d = _deca_dict(lmk)
    d["dynamic_lmk_faces_idx"] = torch.from_numpy(external_rows(lmk.dynamic_faces))  # int64 tensor
    # non-contiguous view with a storage offset: exercises offset/stride rebuilding
    padded = torch.cat([torch.zeros(7, dtype=torch.float32),
                        torch.from_numpy(external_rows(lmk.dynamic_bary).astype(np.float32)).permute(2, 0, 1).flatten()])
    d["dynamic_lmk_bary_coords"] = padded[7:].view(3, 79, 17).permute(1, 2, 0)
    assert not d["dynamic_lmk_bary_coords"].is_contiguous()
    d["full_lmk_faces_idx"] = torch.from_numpy(lmk.full_faces[None].astype(np.int32))
    np.save(tmp_path / "landmark_embedding.npy", d, allow_pickle=True)

    arr = load_npy(tmp_path / "landmark_embedding.npy")
    assert arr.dtype == object and isinstance(arr.item()["dynamic_lmk_faces_idx"], np.ndarray)
    loaded = load_landmark_embedding(tmp_path / "landmark_embedding.npy")

    np.testing.assert_array_equal(loaded.dynamic_faces, lmk.dynamic_faces)
    np.testing.assert_array_equal(loaded.full_faces, lmk.full_faces)
    np.testing.assert_allclose(loaded.dynamic_bary, lmk.dynamic_bary, rtol=1e-6)
    assert loaded.full_faces.dtype == np.int64 and loaded.dynamic_bary.dtype == np.float64


def test_ringnet_static_plus_dynamic(tmp_path):
    lmk = tiny_landmarks(np.random.default_rng(3), F)
    static = {"lmk_face_idx": lmk.static_faces.astype(np.uint32), "lmk_b_coords": lmk.static_bary}
    (tmp_path / "flame_static_embedding.pkl").write_bytes(_as_py2_names(pickle.dumps(static, protocol=2)))
    np.save(tmp_path / "flame_dynamic_embedding.npy",
            {"lmk_face_idx": external_rows(lmk.dynamic_faces), "lmk_b_coords": external_rows(lmk.dynamic_bary)},
            allow_pickle=True)

    loaded = load_landmark_embedding(tmp_path / "flame_static_embedding.pkl",
                                     tmp_path / "flame_dynamic_embedding.npy")

    np.testing.assert_array_equal(loaded.static_faces, lmk.static_faces)
    np.testing.assert_array_equal(loaded.dynamic_bary, lmk.dynamic_bary)
    for i in range(68):  # contour from the frontal (yaw 0) bin 39, then the static 51
        want_f = lmk.dynamic_faces[39, i] if i < 17 else lmk.static_faces[i - 17]
        want_b = lmk.dynamic_bary[39, i] if i < 17 else lmk.static_bary[i - 17]
        assert loaded.full_faces[i] == want_f
        np.testing.assert_array_equal(loaded.full_bary[i], want_b)

    with pytest.raises(FlameAssetError, match="dynamic_landmark_path"):
        load_landmark_embedding(tmp_path / "flame_static_embedding.pkl")
    with pytest.raises(FlameAssetError, match="no dynamic"):
        load_landmark_embedding(tmp_path / "flame_static_embedding.pkl",
                                tmp_path / "flame_static_embedding.pkl")

    # through the model loader, indices are checked against the model's faces
    path = tmp_path / "flame2023.pkl"
    path.write_bytes(pickle.dumps(flame2023_dict(_BASE)))
    model = load_flame_model(path, landmark_path=tmp_path / "flame_static_embedding.pkl",
                             dynamic_landmark_path=tmp_path / "flame_dynamic_embedding.npy")
    np.testing.assert_array_equal(model.landmarks.full_faces, loaded.full_faces)
    small = dict(flame2023_dict(_BASE), f=_BASE.faces[:10].astype(np.uint32))
    path.write_bytes(pickle.dumps(small))
    with pytest.raises(FlameAssetError, match=r"landmarks\.static_faces.*only 10 faces"):
        load_flame_model(path, landmark_path=tmp_path / "flame_static_embedding.pkl",
                         dynamic_landmark_path=tmp_path / "flame_dynamic_embedding.npy")


def test_landmark_shape_errors_are_named(tmp_path):
    lmk = tiny_landmarks(np.random.default_rng(4), F)
    d = _deca_dict(lmk)
    d["static_lmk_bary_coords"] = lmk.static_bary[:50]
    np.save(tmp_path / "e.npy", d, allow_pickle=True)
    with pytest.raises(FlameAssetError, match=r"landmarks\.static_bary' has shape \[50, 3\], expected \[51, 3\]"):
        load_landmark_embedding(tmp_path / "e.npy")


# ----------------------------------------------------------------------------- edition


@pytest.mark.parametrize("path,keys,edition", [
    ("FLAME2020/generic_model.pkl", (), "FLAME2020 (generic)"),
    ("models/FLAME2017/female_model.pkl", (), "FLAME2017 (female)"),
    ("flame2019/male_model.pkl", (), "FLAME2019 (male)"),
    ("flame2023.pkl", (), "FLAME2023"),
    ("flame2023_no_jaw.pkl", (), "FLAME2023 (no jaw)"),
    ("FLAME2023/flame2023_Open.pkl", (), "FLAME2023 (open)"),
    ("my_head.pkl", ("l_eyelid", "r_eyelid"), "FLAME2023"),
    ("generic_model.pkl", (), UNKNOWN_EDITION),
    ("weird-20201-name.pkl", (), UNKNOWN_EDITION),
    ("", (), UNKNOWN_EDITION),
])
def test_detect_edition(path, keys, edition):
    assert detect_edition(path, keys) == edition
