"""Tiny shard sets in the real SAMPLE_SCHEMA for the training tests (random PNG views).

Each sample's images carry a simple, learnable signal: a bright square whose position gives the
landmarks (so the toy task can learn), and ground-truth vertices derived from the same numbers.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dcnn_flame.constants import NUM_AUS, NUM_LANDMARKS
from dcnn_flame.data import schema

IMG = 224
NV = 12  # ground-truth vertices per view (tiny)


def sample_rows(n: int, num_views: int = 4, split: str = "train", source: str = "synthetic", seed: int = 0,
                corrupt: tuple[int, ...] = (), image_size: int = IMG, prefix: str = "s") -> list[dict]:
    """``n`` schema rows; rows whose index is in ``corrupt`` get undecodable bytes in view 0."""
    rng = np.random.default_rng(seed)
    s = image_size / IMG  # geometry is drawn on the 224 grid and scaled to image_size
    rows = []
    for i in range(n):
        views, lmks, verts = [], [], []
        for v in range(num_views):
            cx, cy = rng.uniform(60, 164, size=2)
            img = np.full((image_size, image_size, 3), 30, np.uint8)
            x0, y0, w = int((cx - 20) * s), int((cy - 20) * s), max(int(40 * s), 1)
            img[max(y0, 0):y0 + w, max(x0, 0):x0 + w] = 220
            views.append(schema.encode_png(img))
            base = np.stack([np.linspace(-20, 20, NUM_LANDMARKS), np.linspace(-10, 10, NUM_LANDMARKS)], -1)
            lmk = (base + np.array([cx, cy])) * s
            lmks.append(lmk.astype(np.float32).reshape(-1).tolist())
            vv = np.zeros((NV, 3), np.float32)
            vv[:, 0] = (cx - 112) / 1000.0
            vv[:, 1] = (cy - 112) / 1000.0
            verts.append(schema.vertices_to_bytes(vv))
        if i in corrupt:
            views[0] = b"\x89PNG not really"
        lmk5 = [schema.landmarks5_from_68(np.asarray(l).reshape(68, 2)).reshape(-1).tolist() for l in lmks]
        rows.append({
            "schema_version": schema.SCHEMA_VERSION, "sample_id": f"{prefix}{i:05d}", "identity": f"id{i}",
            "source": source, "split": split, "num_views": num_views,
            "image_uri": [""] * num_views, "image": views, "landmarks": lmks, "landmarks5": lmk5,
            "landmark_source": ["ground_truth"] * num_views, "crop_box": [[0, 0, image_size, image_size]] * num_views,
            "au": [rng.uniform(0, 1, NUM_AUS).astype(np.float32).tolist() for _ in range(num_views)],
            "expression_class": [int(rng.integers(0, 8)) for _ in range(num_views)],
            "gt_shape": [[0.1, 0.2, 0.3]] * num_views, "gt_expression": [[0.0] * 5] * num_views,
            "gt_pose": [[0.0] * 15] * num_views, "gt_camera": [[9.0, 0.0, 0.0]] * num_views,
            "gt_light": [[0.0] * 27] * num_views, "gt_albedo": [[0.5]] * num_views, "gt_vertices": verts,
        })
    return rows


def write_shards(root: str, rows: list[dict], rows_per_file: int = 8, fs=None) -> str:
    """Write ``rows`` as ``part-XXXXX.parquet`` files under ``root`` (local path or, with ``fs``, a
    pyarrow filesystem path). Returns root."""
    if fs is None:
        os.makedirs(root, exist_ok=True)
    for k in range(0, len(rows), rows_per_file):
        table = pa.Table.from_pylist(rows[k:k + rows_per_file], schema=schema.SAMPLE_SCHEMA)
        pq.write_table(table, f"{root.rstrip('/')}/part-{k // rows_per_file:05d}.parquet", filesystem=fs)
    return root


def make_dataset(root: str, n_train: int = 16, n_val: int = 8, num_views: int = 4, corrupt: tuple[int, ...] = (),
                 source: str = "synthetic", seed: int = 0, fs=None, image_size: int = IMG) -> str:
    """One shard directory with train and val rows (``split`` column); returns root."""
    rows = sample_rows(n_train, num_views, "train", source, seed, corrupt, image_size=image_size,
                       prefix=f"{source[:2]}t")
    rows += sample_rows(n_val, num_views, "val", source, seed + 1, image_size=image_size, prefix=f"{source[:2]}v")
    return write_shards(root, rows, fs=fs)
