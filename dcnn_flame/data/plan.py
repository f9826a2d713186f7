"""The ingest plan (driver side): image index -> multi-view samples -> splits -> shards.

Everything here is deterministic in (index, settings, seed), so shard names and contents
are stable across reruns: that is what lets a rerun skip the shards already written.

A shard's plan is a small Arrow table, one row per view (:data:`PLAN_SCHEMA`), sent to the
worker that writes the shard.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dcnn_flame.constants import AU_COLUMNS, NUM_AUS
from dcnn_flame.data.views import group_views, split_identities, stable_seed

PLAN_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string()),
    pa.field("identity", pa.string()),
    pa.field("split", pa.string()),
    pa.field("view", pa.int16()),
    pa.field("uri", pa.string()),
    pa.field("size", pa.int64()),  # bytes, -1 = unknown
    pa.field("box", pa.list_(pa.float64(), 4)),  # x0, y0, x1, y1; NaN = no metadata box
    pa.field("lmk5", pa.list_(pa.float64(), 10)),  # NaN = none
    pa.field("au", pa.list_(pa.float32(), NUM_AUS)),  # NaN = missing
    pa.field("expression_class", pa.int16()),  # -1 = missing
])


@dataclass
class ShardPlan:
    """One output shard: its deterministic name, split and per-view plan rows."""

    name: str
    split: str
    index: int
    table: pa.Table

    @property
    def num_samples(self) -> int:
        return len(set(self.table.column("sample_id").to_pylist()))

    def to_ipc(self) -> bytes:
        """Arrow IPC stream bytes of the plan table (what travels to the worker)."""
        return table_to_ipc(self.table)


@dataclass
class Plan:
    """All shards of a run plus what was decided on the driver."""

    shards: list[ShardPlan]
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Plan-stage failure rows (FAILURE_SCHEMA columns)."""
    num_images: int = 0
    """Distinct input images in the plan."""

    def samples_per_split(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.split] = out.get(s.split, 0) + s.num_samples
        return out

    def fingerprint(self, settings: dict[str, Any]) -> str:
        """sha256 over the settings that change shard contents and every shard plan."""
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for s in self.shards:
            h.update(s.name.encode())
            h.update(s.to_ipc())
        return h.hexdigest()


def table_to_ipc(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, table.schema) as w:
        w.write_table(table)
    return buf.getvalue()


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


def _fixed_list(values: np.ndarray, width: int, dtype) -> pa.Array:
    flat = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def build_plan(index: pd.DataFrame, *, source: str, num_views: int, policy: str, val_fraction: float,
               seed: int, rows_per_shard: int) -> Plan:
    """Group, split and shard an image index.

    Args:
        index: one row per image with columns uri, size, identity, folder, box_x0..box_y1,
            lmk5_0..lmk5_9 and optionally AU_COLUMNS and expression_class.
        source: "vggface2" | "characters" | ... (prefix of sample ids and shard names).
        num_views: views per sample.
        policy: "pad" | "drop" (views.group_views).
        val_fraction: identities held out as "val" (folder "test" is always split "test").
        seed: seed of grouping, split and shard order.
        rows_per_shard: samples per shard (>= 1).

    Returns:
        The Plan; shard names are ``<source>-<split>-<index:05d>``.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    index = index.sort_values("uri", kind="stable").reset_index(drop=True)
    folder = index["folder"].astype(str).to_numpy()
    identity = index["identity"].astype(str).to_numpy()
    key = np.array([f"{f}/{i}" if f else i for f, i in zip(folder, identity)], dtype=object)
    groups, dropped = group_views(key.tolist(), num_views, policy, seed)

    failures = [{"input_uri": str(index.at[r, "uri"]), "identity": str(identity[r]), "stage": "group",
                 "reason": "too_few_views",
                 "detail": f"identity has an incomplete group of fewer than {num_views} images "
                           f"(short_identity_policy=drop)"} for r in dropped]

    trainable = sorted({k for k, f in zip(key, folder) if f != "test"})
    split_of = split_identities(trainable, val_fraction, seed)
    for k, f in zip(key, folder):
        if f == "test":
            split_of[k] = "test"

    n = len(index)
    box = index[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy(dtype=np.float64)
    lmk = index[[f"lmk5_{i}" for i in range(10)]].to_numpy(dtype=np.float64)
    au = (index[list(AU_COLUMNS)].to_numpy(dtype=np.float32) if all(c in index.columns for c in AU_COLUMNS)
          else np.full((n, NUM_AUS), np.nan, dtype=np.float32))
    expr = (index["expression_class"].to_numpy(dtype=np.int16) if "expression_class" in index.columns
            else np.full(n, -1, dtype=np.int16))
    size = index["size"].to_numpy(dtype=np.int64)
    uri = index["uri"].astype(str).to_numpy()

    by_split: dict[str, list] = {}
    for g in groups:
        sid = f"{source}/{g.identity}/{g.group:05d}"
        by_split.setdefault(split_of[g.identity], []).append((sid, g))

    shards: list[ShardPlan] = []
    for split in sorted(by_split):
        samples = sorted(by_split[split], key=lambda t: t[0])
        order = np.random.default_rng(stable_seed("shards", seed, split)).permutation(len(samples))
        samples = [samples[i] for i in order]
        for si, start in enumerate(range(0, len(samples), rows_per_shard)):
            chunk = samples[start:start + rows_per_shard]
            rows = np.array([r for _, g in chunk for r in g.rows], dtype=np.int64)
            sample_ids = [sid for sid, g in chunk for _ in g.rows]
            idents = [identity[g.rows[0]] for _, g in chunk for _ in g.rows]
            views = [v for _, g in chunk for v in range(len(g.rows))]
            table = pa.Table.from_arrays([
                pa.array(sample_ids, pa.string()),
                pa.array(idents, pa.string()),
                pa.array([split] * len(rows), pa.string()),
                pa.array(views, pa.int16()),
                pa.array(uri[rows].tolist(), pa.string()),
                pa.array(size[rows], pa.int64()),
                _fixed_list(box[rows], 4, np.float64),
                _fixed_list(lmk[rows], 10, np.float64),
                _fixed_list(au[rows], NUM_AUS, np.float32),
                pa.array(expr[rows], pa.int16()),
            ], schema=PLAN_SCHEMA)
            shards.append(ShardPlan(name=f"{source}-{split}-{si:05d}", split=split, index=si, table=table))
    return Plan(shards=shards, failures=failures, num_images=n)
