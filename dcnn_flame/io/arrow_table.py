"""Arrow tables built column by column from numpy arrays, and small Parquet files.

The batch job writes one small results table per character (10 rows of 39 columns with 9
expressions). Building it row by row (a dict per row, ``pa.Table.from_pylist``) and writing it
with zstd and dictionary pages cost 2.6-2.9 ms of CPU per character on the 2-core CI machine;
columns from the arrays the writer already holds, written with snappy and plain pages, 1.2 ms
(side by side, docs/generation.md, "The write path"). Readers see the same schema and values.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Parquet options of the job's small tables. Dictionary pages and zstd contexts are set up per
#: column, which dominates a file of a few rows (1.7 -> 0.7 ms for a results table, and 10 %
#: smaller); snappy is read by every Parquet engine.
SMALL_TABLE_OPTIONS: dict[str, Any] = {"compression": "snappy", "use_dictionary": False}


@dataclass(frozen=True)
class Same:
    """A value repeated in every row of a column (a scalar, or one list for a list column)."""

    value: Any


def _list_array(values: np.ndarray, field_type: pa.DataType) -> pa.Array:
    """[N, K] array -> a list (or fixed-size list) column of N rows of K items."""
    n, k = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=field_type.value_type.to_pandas_dtype()).reshape(-1),
                    type=field_type.value_type)
    if pa.types.is_fixed_size_list(field_type):
        if k != field_type.list_size:
            raise ValueError(f"a {field_type} column needs {field_type.list_size} items per row, got {k}")
        return pa.FixedSizeListArray.from_arrays(flat, type=field_type)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(k), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat, type=field_type)


def column(value: Any, num_rows: int, field: pa.Field) -> pa.Array:
    """One column of ``num_rows`` rows of ``field``'s type.

    Args:
        value: None (all nulls); :class:`Same` (repeated); a numpy array ([N] for a scalar column,
            where NaN and inf become nulls in floating columns; [N, K] for a list column); or a
            sequence of N Python values (None = null).
    """
    t = field.type
    is_list = pa.types.is_list(t) or pa.types.is_fixed_size_list(t)
    if value is None:
        return pa.nulls(num_rows, type=t)
    if isinstance(value, Same):
        if is_list:
            if value.value is None:
                return pa.nulls(num_rows, type=t)
            item = np.asarray(value.value).reshape(1, -1)
            return _list_array(np.repeat(item, num_rows, axis=0), t)
        return pa.array([value.value] * num_rows, type=t)
    if isinstance(value, np.ndarray):
        if len(value) != num_rows:
            raise ValueError(f"column {field.name!r} has {len(value)} rows, the table {num_rows}")
        if is_list:
            return _list_array(value.reshape(num_rows, -1), t)
        if value.dtype.kind == "f" and pa.types.is_floating(t):
            return pa.array(value, type=t, mask=~np.isfinite(value))
        return pa.array(value, type=t)
    if len(value) != num_rows:
        raise ValueError(f"column {field.name!r} has {len(value)} rows, the table {num_rows}")
    return pa.array(list(value), type=t)


def columns_table(columns: Mapping[str, Any], num_rows: int, schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from ``name -> value`` (see :func:`column`); absent columns are null.

    Raises:
        ValueError: a name the schema does not have, or a column of the wrong length.
    """
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    return pa.Table.from_arrays([column(columns.get(f.name), num_rows, f) for f in schema], schema=schema)


def parquet_bytes(table: pa.Table, metadata: Optional[Mapping[bytes, bytes]] = None) -> bytes:
    """A small table -> Parquet bytes (:data:`SMALL_TABLE_OPTIONS`), with extra schema metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, **SMALL_TABLE_OPTIONS)
    return buf.getvalue()
