"""Restricted unpickling of FLAME-era asset files: no chumpy needed, no code run.

FLAME models, RingNet and DECA landmark embeddings ship as pickles (or ``.npy``
object arrays, which are pickles inside). Plain ``pickle.load`` on such a file runs
whatever callable the file names, so every global a file references goes through
:meth:`RestrictedUnpickler.find_class`, which returns only:

- NumPy array reconstruction (``ndarray``, ``dtype``, ``_reconstruct``, ``scalar``,
  ``_frombuffer``): how arrays and NumPy scalars pickle (``_frombuffer`` for protocol 5).
- Stand-ins for ``chumpy.*`` classes: FLAME 2017-2020 store ``shapedirs`` as a
  ``chumpy.ch.Ch`` whose state dict holds the array under ``'x'``; the stand-in only
  keeps the state (:class:`ChumpyStandIn`).
- Stand-ins for ``scipy.sparse`` csc/csr/coo matrices and arrays (``J_regressor``);
  the stand-in keeps the state and densifies it with NumPy (:class:`SparseStandIn`),
  so old and new SciPy private module paths both load.
- ``copyreg._reconstructor`` (protocol 0/1 class instances), restricted to
  ``object`` as base and a stand-in class; ``builtins.object`` for that base.
- ``builtins.set``/``frozenset``/``bytearray``/``complex``: protocol <= 3 pickles these
  through their constructors; they only build values.
- ``_codecs.encode``: Python 3 pickles ``bytes`` at protocol <= 2 as
  ``_codecs.encode(str, 'latin1')``; only that codec is accepted.
- ``collections.OrderedDict``: the (empty) backward-hooks argument of pickled tensors.
- ``torch._utils._rebuild_tensor_v2``/``_rebuild_tensor`` and
  ``torch.storage._load_from_bytes``: DECA's ``landmark_embedding.npy`` holds torch
  tensors. The storage bytes are read with ``torch.load(..., weights_only=True)``
  (torch's own restricted loader) and tensors come back as NumPy arrays.

Anything else raises :class:`UnsafeAssetError` before it is called.
Python 2 pickles are read with ``encoding='latin1'`` (NumPy's advice for old arrays).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_SPARSE_MODULES = frozenset(
    ["scipy.sparse"] + [f"scipy.sparse.{m}" for m in ("csc", "_csc", "csr", "_csr", "coo", "_coo")]
)
_SPARSE_NAMES = frozenset(f"{fmt}_{kind}" for fmt in ("csc", "csr", "coo") for kind in ("matrix", "array"))


class FlameAssetError(ValueError):
    """An asset file is not in a supported layout (wrong keys, shapes or values)."""


class UnsafeAssetError(FlameAssetError, pickle.UnpicklingError):
    """A pickle references a global outside the allow-list; nothing was executed."""


class PickledStandIn:
    """Inert replacement for a pickled class instance: keeps constructor args and state.

    Attributes:
        original: ``"module.Name"`` of the class named in the file.
        args: positional arguments the pickle passed to the constructor, if any.
        state: whatever the pickle passed to ``__setstate__`` (usually a dict).
    """

    original: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        keys = sorted(self.state) if isinstance(self.state, dict) else type(self.state).__name__
        return f"<stand-in for {self.original}, state {keys}>"

    def state_dict(self) -> dict:
        """The state as a dict (a ``(dict, slots)`` pair is merged; anything else -> {})."""
        st = getattr(self, "state", None)
        if isinstance(st, tuple) and len(st) == 2:
            merged = dict(st[0] or {})
            merged.update(st[1] or {})
            return merged
        return st if isinstance(st, dict) else {}


class ChumpyStandIn(PickledStandIn):
    """Stand-in for any ``chumpy.*`` class; :meth:`array` returns the stored ``'x'``."""

    def array(self) -> np.ndarray:
        x: Any = self.state_dict().get("x")
        for _ in range(8):  # a Ch may wrap another Ch
            if not isinstance(x, ChumpyStandIn):
                break
            x = x.state_dict().get("x")
        if isinstance(x, (np.ndarray, np.generic, int, float)):
            return np.asarray(x)
        raise FlameAssetError(
            f"a pickled {self.original} object holds no array under 'x' (state keys: "
            f"{sorted(self.state_dict())}); it is a chumpy expression, not a stored array. "
            "Re-save the model with plain NumPy arrays (e.g. with chumpy installed, in a "
            "sandbox: np.asarray(value)) or use an official FLAME file."
        )


class SparseStandIn(PickledStandIn):
    """Stand-in for ``scipy.sparse`` csc/csr/coo matrices; :meth:`toarray` densifies."""

    fmt: str = ""

    def toarray(self) -> np.ndarray:
        st = self.state_dict()
        try:
            data = np.asarray(st["data"])
            shape = tuple(int(s) for s in st.get("_shape", st.get("shape")))
            dense = np.zeros(shape, dtype=np.result_type(data.dtype, np.float64))
            if self.fmt == "coo":
                coords = st.get("coords")
                rows, cols = (coords if coords is not None else (st["row"], st["col"]))
                rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
            else:
                indptr = np.asarray(st["indptr"], np.int64)
                idx = np.asarray(st["indices"], np.int64)
                outer = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
                rows, cols = (idx, outer) if self.fmt == "csc" else (outer, idx)
            if rows.shape != data.shape or cols.shape != data.shape:
                raise ValueError("index and data lengths differ")
            if data.size and (rows.min() < 0 or cols.min() < 0
                              or rows.max() >= shape[0] or cols.max() >= shape[1]):
                raise ValueError(f"indices out of range for shape {shape}")
            np.add.at(dense, (rows, cols), data)  # duplicates sum, as in scipy
            return dense
        except (KeyError, TypeError, ValueError) as e:
            raise FlameAssetError(
                f"a pickled {self.original} could not be read ({e}; state keys "
                f"{sorted(st)}); the file is damaged or not a FLAME asset"
            ) from None


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafeAssetError(f"_codecs.encode is only allowed as str -> latin1 bytes, got {encoding!r}")
    return obj.encode("latin1", errors)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if base is not object or not (isinstance(cls, type) and issubclass(cls, PickledStandIn)):
        raise UnsafeAssetError(
            f"copyreg._reconstructor is only allowed for stand-in classes, got {cls!r}/{base!r}")
    return cls.__new__(cls)


def _safe_load_from_bytes(b: Any) -> Any:
    import torch  # only when a file really holds tensors

    if isinstance(b, str):  # Python 2 str payload decoded as latin1
        b = b.encode("latin1")
    try:
        return torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafeAssetError(f"torch storage inside the pickle was refused by "
                               f"torch.load(weights_only=True): {e}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise FlameAssetError(f"a pickled torch storage could not be read ({e})") from None


def _safe_rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any,
                         *unused: Any) -> np.ndarray:
    """torch ``_rebuild_tensor_v2`` replacement: builds the tensor, returns it as NumPy."""
    import torch
    from torch._utils import _rebuild_tensor

    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise FlameAssetError(f"a pickled tensor has storage of type {type(storage).__name__}")
    try:
        t = _rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride)).detach()
    except (RuntimeError, TypeError, ValueError) as e:
        raise FlameAssetError(f"a pickled tensor could not be rebuilt ({e})") from None
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Functions taken from NumPy's own reduce output, so private module moves
    # (numpy.core -> numpy._core in 2.0) need no import of a deprecated path.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


#: Non-NumPy globals a FLAME/landmark asset may reference, each mapped to what is
#: returned (a restricted replacement where the original could do more).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): _safe_codecs_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _safe_rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals (see module doc).

    Args:
        file: binary file positioned at the pickle.
        source: path or description used in error messages.
    """

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self._stand_ins: dict[str, type] = {}
        self._numpy = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        key = (module, name)
        if key in self._numpy:
            return self._numpy[key]
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "chumpy" or module.startswith("chumpy."):
            return self._stand_in(module, name, ChumpyStandIn, "")
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return self._stand_in(module, name, SparseStandIn, name[:3])
        raise UnsafeAssetError(
            f"refused to load {self.source}: it references the global '{module}.{name}', which "
            "is not on the allow-list for FLAME assets (NumPy arrays, SciPy sparse matrices, "
            "chumpy arrays, torch tensors). Nothing was executed. The file may be malicious or "
            "not a FLAME/landmark asset: do not open it with plain pickle; use the official file."
        )

    def _stand_in(self, module: str, name: str, base: type, fmt: str) -> type:
        qual = f"{module}.{name}"
        if qual not in self._stand_ins:
            self._stand_ins[qual] = type(f"StandIn_{name}", (base,), {"original": qual, "fmt": fmt})
        return self._stand_ins[qual]


def _as_path(path: str | os.PathLike) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"asset file not found: {p} (is the path right and readable?)")
    return p


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a local file through :class:`RestrictedUnpickler`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeAssetError: the file references a global outside the allow-list.
        FlameAssetError: the file is not a readable pickle.
    """
    p = _as_path(path)
    with open(p, "rb") as f:
        return _load(f, str(p))


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Like :func:`load_pickle` for in-memory bytes."""
    return _load(io.BytesIO(data), source)


def _load(f: BinaryIO, source: str) -> Any:
    try:
        return RestrictedUnpickler(f, source).load()
    except (UnsafeAssetError, FlameAssetError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as e:
        raise FlameAssetError(f"{source} is not a readable pickle ({type(e).__name__}: {e}); "
                              "the file is damaged or in an unsupported format") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.npy`` file; object arrays are unpickled through the restricted unpickler.

    Numeric arrays go through ``np.load(allow_pickle=False)``. For object arrays the
    header is parsed with ``numpy.lib.format`` and the payload (a pickled ndarray, as
    ``np.save`` writes it) goes through :class:`RestrictedUnpickler`.

    Returns:
        The array (0-d object array for a saved dict: use ``.item()``).
    """
    p = _as_path(path)
    with open(p, "rb") as f:
        try:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = npy_format.read_array_header_2_0(f)
            else:
                dtype = None
        except ValueError as e:
            raise FlameAssetError(f"{p} is not a .npy file ({e})") from None
        if dtype is None or not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        arr = _load(f, str(p))
    if not isinstance(arr, np.ndarray):
        raise FlameAssetError(f"{p}: the .npy payload is a {type(arr).__name__}, not an array")
    return arr


def to_numpy(value: Any, name: str = "value") -> np.ndarray:
    """Turn an unpickled value (array, stand-in, tensor-as-array, list) into an ndarray."""
    if isinstance(value, ChumpyStandIn):
        return value.array()
    if isinstance(value, SparseStandIn):
        return value.toarray()
    if isinstance(value, PickledStandIn):
        raise FlameAssetError(f"{name} is a {value.original} object, not an array")
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor built elsewhere
        return value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise FlameAssetError(f"{name} cannot be read as an array ({e})") from None
    if arr.dtype.hasobject:
        raise FlameAssetError(f"{name} is not a numeric array (holds {type(value).__name__})")
    return arr
