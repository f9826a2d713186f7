"""Training input: Parquet shards -> Ray Dataset -> CPU decode -> torch batch dicts.

Driver side::

    ds = read_shards(uri, storage, split="train")          # ray.data.Dataset, lazy
    ds = decode_dataset(ds, num_views=4, domain=0)          # map_batches on CPU

Worker side (inside ``train_loop_per_worker``)::

    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=8, collate_fn=collate_batch(), drop_last=True):
        batch, n_bad = drop_invalid(batch)

The batch dict (the contract with the model's criterion and metrics)
--------------------------------------------------------------------
``B`` samples, ``V`` views per sample (``num_views``; 4 in the paper's four-view mode).

=================  ========================  ==================================================
key                shape / dtype             meaning
=================  ========================  ==================================================
images             [B, V, 3, H, W] float32   RGB in [0, 1] (no normalisation), H = W = 224
landmarks          [B, V, 68, 2] float32     iBUG-68 pixel coords in the 224 crop (x right,
                                             y down, pixel centres at +0.5); NaN = missing
landmarks5         [B, V, 5, 2] float32      eye centres R/L, nose tip, mouth corners R/L
au                 [B, V, 17] float32        AU intensities in [0, 1] (AU_IDS order); NaN = missing
expression_class   [B, V] int64              AffectNet-8 index; -1 = missing
view_valid         [B, V] bool               False for a view repeated to fill ``V`` (a row with
                                             fewer views than V repeats its views cyclically)
valid              [B] bool                  False when the row could not be decoded (dropped
                                             by :func:`drop_invalid` before the model sees it)
domain             [B] int64                 0 = source faces (VGGFace2/synthetic), 1 = target
                                             (animated characters)
gt_vertices        [B, V, Nv, 3] float32     ground-truth posed vertices, metres   (optional*)
gt_shape           [B, V, S] float32         ground-truth FLAME shape code         (optional*)
gt_expression      [B, V, E] float32         ground-truth FLAME expression code    (optional*)
gt_pose            [B, V, 15] float32        ground-truth FLAME pose               (optional*)
gt_camera          [B, V, 3] float32         ground-truth orthographic camera      (optional*)
=================  ========================  ==================================================

(*) present when the shards carry ground truth (the synthetic world); rows without it are NaN.
When two batches are merged (fine-tuning: source + target) a key missing on one side is filled
with NaN, so criteria must mask ground-truth terms with ``torch.isfinite``.

Bad data never raises here: a row whose image fails to decode (or has the wrong size) gets
``valid=False`` and zero images; the training loop drops and counts it.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from dcnn_flame.constants import IMAGE_SIZE, NUM_AUS, NUM_LANDMARKS, POSE_DIM
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

logger = logging.getLogger(__name__)

#: Columns every training read needs.
BASE_COLUMNS: tuple[str, ...] = ("sample_id", "num_views", "image", "landmarks", "landmarks5", "au",
                                 "expression_class")
#: Ground-truth columns read when present (synthetic shards).
GT_COLUMNS: tuple[str, ...] = ("gt_vertices", "gt_shape", "gt_expression", "gt_pose", "gt_camera")

#: Domain labels of the ``domain`` column.
SOURCE_DOMAIN = 0
TARGET_DOMAIN = 1


# ----------------------------------------------------------------------------- reading


def read_shards(uri: str, options: Optional[StorageOptions] = None, split: Optional[str] = None,
                with_ground_truth: bool = True):
    """Lazy Ray Dataset of the shard rows under ``uri`` (a directory/prefix of ``.parquet``).

    Args:
        uri: local path, file://, s3://... (resolved here; relative paths become absolute).
        options: object-store endpoint/region.
        split: keep only rows whose ``split`` column equals this ("train", "val", ...);
            None = every row.
        with_ground_truth: also read the ground-truth columns (null for real data).
    Raises: FileNotFoundError naming the URI when no shard exists there.
    """
    import ray.data
    from ray.data.expressions import col

    from dcnn_flame.io.arrow_fs import arrow_filesystem, strip_protocol

    uri = storage.resolve(uri)
    files = storage.list_files(uri, options, suffixes=(".parquet",))
    if not files:
        raise FileNotFoundError(f"no Parquet shards under {uri!r}. Create them with "
                                f"`python jobs/prepare.py ...` or point data.*_uri at existing shards.")
    columns = list(BASE_COLUMNS) + (list(GT_COLUMNS) if with_ground_truth else [])
    kwargs: dict[str, Any] = {}
    fs = arrow_filesystem(uri, options)
    if fs is not None:
        kwargs["filesystem"] = fs
        paths = [strip_protocol(f) for f in files]
    else:
        paths = files
    ds = ray.data.read_parquet(paths, **kwargs)
    if split is not None:
        # Ray pushes the predicate and the projection down into the Parquet scan.
        ds = ds.filter(expr=col("split") == split)
    return ds.select_columns(columns)


def decode_dataset(ds, num_views: int, domain: int = SOURCE_DOMAIN, image_size: int = IMAGE_SIZE,
                   batch_size: int = 16):
    """``ds.map_batches(decode_rows)`` on CPU tasks: adds fixed-size numpy arrays per row.

    Output columns: see the module docstring (images as uint8 [V, 3, H, W] here, converted to
    float32 in [0, 1] by :func:`collate_batch`, so the object store moves 4x fewer bytes).
    """
    return ds.map_batches(decode_rows, batch_format="pyarrow", batch_size=batch_size, num_cpus=1,
                          fn_kwargs={"num_views": num_views, "domain": domain, "image_size": image_size})


# ----------------------------------------------------------------------------- decoding


def _view_index(n: int, num_views: int) -> list[int]:
    # Fewer views than wanted: repeat cyclically (view_valid marks the copies); more: keep the first.
    return [i % n for i in range(num_views)] if n > 0 else []


def _fixed(values: Optional[list], idx: list[int], width: int, fill: float) -> np.ndarray:
    """[len(idx), width] float32 from per-view lists (None / wrong length -> fill)."""
    out = np.full((len(idx), width), fill, dtype=np.float32)
    if values is None:
        return out
    for j, i in enumerate(idx):
        v = values[i] if i < len(values) else None
        if v is not None and len(v) == width:
            out[j] = np.asarray(v, dtype=np.float32)
    return out


def _gt_width(col: list) -> int:
    """Common length of a variable-length ground-truth vector column (0 = absent)."""
    for row in col:
        for v in row or ():
            if v is not None and len(v) > 0:
                return len(v)
    return 0


def decode_rows(table, num_views: int, domain: int = SOURCE_DOMAIN,
                image_size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Decode one pyarrow batch of shard rows into fixed-size numpy arrays (never raises on data).

    Args:
        table: pyarrow Table with the :data:`BASE_COLUMNS` (and optionally :data:`GT_COLUMNS`).
        num_views: V of the output; rows with fewer views repeat them (``view_valid`` False).
        domain: value of the ``domain`` column for every row.
        image_size: expected square image size; other sizes make the row invalid.
    Returns: dict of numpy arrays with a leading row dimension b (see module docstring;
        ``images`` uint8 [b, V, 3, H, W]).
    """
    from dcnn_flame.data.schema import decode_image, vertices_from_bytes

    b = table.num_rows
    V = num_views
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    images = np.zeros((b, V, 3, image_size, image_size), dtype=np.uint8)
    valid = np.ones(b, dtype=bool)
    view_valid = np.zeros((b, V), dtype=bool)
    lmk = np.full((b, V, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    lmk5 = np.full((b, V, 5, 2), np.nan, dtype=np.float32)
    au = np.full((b, V, NUM_AUS), np.nan, dtype=np.float32)
    expr = np.full((b, V), -1, dtype=np.int64)
    gt_present = [c for c in GT_COLUMNS if c in cols and any(r is not None for r in cols[c])]
    gt: dict[str, np.ndarray] = {}
    widths = {"gt_pose": POSE_DIM, "gt_camera": 3}
    for c in gt_present:
        if c == "gt_vertices":
            continue
        w = widths.get(c) or _gt_width(cols[c])
        if w:
            gt[c] = np.full((b, V, w), np.nan, dtype=np.float32)
    vert_list: list[Optional[list[np.ndarray]]] = [None] * b

    for r in range(b):
        sid = cols["sample_id"][r]
        try:
            views = cols["image"][r] or []
            idx = _view_index(len(views), V)
            if not idx:
                raise ValueError("row has no views")
            for j, i in enumerate(idx):
                img = decode_image(views[i])
                if img.shape[:2] != (image_size, image_size):
                    raise ValueError(f"view {i} is {img.shape[1]}x{img.shape[0]}, expected "
                                     f"{image_size}x{image_size} (shards hold aligned crops)")
                images[r, j] = img.transpose(2, 0, 1)
            seen: set[int] = set()
            for j, i in enumerate(idx):
                view_valid[r, j] = i not in seen
                seen.add(i)
            lmk[r] = _fixed(cols["landmarks"][r], idx, 2 * NUM_LANDMARKS, np.nan).reshape(V, NUM_LANDMARKS, 2)
            lmk5[r] = _fixed(cols["landmarks5"][r], idx, 10, np.nan).reshape(V, 5, 2)
            au[r] = _fixed(cols["au"][r], idx, NUM_AUS, np.nan)
            ec = cols["expression_class"][r]
            if ec is not None:
                expr[r] = [(-1 if i >= len(ec) or ec[i] is None else int(ec[i])) for i in idx]
            for c, arr in gt.items():
                arr[r] = _fixed(cols[c][r], idx, arr.shape[-1], np.nan)
            if "gt_vertices" in gt_present and cols["gt_vertices"][r] is not None:
                raw = cols["gt_vertices"][r]
                vert_list[r] = [vertices_from_bytes(raw[i]) if i < len(raw) and raw[i] else None for i in idx]
        except Exception as exc:  # one bad row must not take the block (and the run) down
            valid[r] = False
            images[r] = 0
            view_valid[r] = False
            logger.warning("skipping sample %s: %s", sid, exc)

    out: dict[str, np.ndarray] = {
        "images": images, "landmarks": lmk, "landmarks5": lmk5, "au": au, "expression_class": expr,
        "view_valid": view_valid, "valid": valid, "domain": np.full(b, domain, dtype=np.int64),
    }
    out.update(gt)
    if "gt_vertices" in gt_present:
        nv = max((v.shape[0] for row in vert_list if row for v in row if v is not None), default=0)
        verts = np.full((b, V, nv, 3), np.nan, dtype=np.float32)
        for r, row in enumerate(vert_list):
            for j, v in enumerate(row or ()):
                if v is not None and v.shape[0] == nv:
                    verts[r, j] = v
        out["gt_vertices"] = verts
    return out


# ----------------------------------------------------------------------------- worker side


def collate_numpy(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """numpy batch -> CPU tensors of the batch contract (``images`` uint8 -> float32 in [0, 1];
    int columns -> int64; bools stay bool; anything else is dropped)."""
    import torch

    out: dict[str, Any] = {}
    for key, arr in batch.items():
        arr = np.asarray(arr)
        # Blocks from the object store are read-only: every branch makes a writable copy.
        if key == "images":
            out[key] = torch.from_numpy(arr.astype(np.float32)).mul_(1.0 / 255.0)
        elif arr.dtype == np.bool_:
            out[key] = torch.from_numpy(arr.copy())
        elif np.issubdtype(arr.dtype, np.integer):
            out[key] = torch.from_numpy(arr.astype(np.int64))
        elif np.issubdtype(arr.dtype, np.floating):
            out[key] = torch.from_numpy(arr.astype(np.float32))
    return out


def _collate_class():
    from ray.data.collate_fn import NumpyBatchCollateFn

    class CollateBatch(NumpyBatchCollateFn):
        """``iter_torch_batches(collate_fn=...)`` object applying :func:`collate_numpy`."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return collate_numpy(batch)

    return CollateBatch


def collate_batch():
    """A collate_fn object for ``iter_torch_batches`` producing the batch contract (CPU tensors)."""
    return _collate_class()()


def batch_size_of(batch: dict[str, Any]) -> int:
    """B of a batch dict."""
    return int(batch["valid"].shape[0])


def drop_invalid(batch: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Remove rows with ``valid=False``; returns (batch, number of rows removed)."""
    valid = batch["valid"]
    n_bad = int((~valid).sum())
    if n_bad == 0:
        return batch, 0
    return {k: v[valid] for k, v in batch.items()}, n_bad


def concat_batches(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate batch dicts along B; a key missing in some part is NaN-filled there.

    All parts must share ``V`` and image size (the decode step fixes both from config).
    """
    import torch

    parts = [p for p in parts if batch_size_of(p) > 0]
    if len(parts) == 1:
        return parts[0]
    keys: list[str] = []
    for p in parts:
        keys.extend(k for k in p if k not in keys)
    out: dict[str, Any] = {}
    for k in keys:
        ref = next(p[k] for p in parts if k in p)
        pieces = []
        for p in parts:
            if k in p:
                pieces.append(p[k])
            else:
                shape = (batch_size_of(p),) + tuple(ref.shape[1:])
                pieces.append(torch.full(shape, float("nan"), dtype=ref.dtype) if ref.is_floating_point()
                              else torch.full(shape, -1, dtype=ref.dtype))
        out[k] = torch.cat(pieces, dim=0)
    return out


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """Move every tensor of ``batch`` to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}
