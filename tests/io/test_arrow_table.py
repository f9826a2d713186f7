"""Column-by-column Arrow tables equal the row-by-row ones (pa.Table.from_pylist, the naive
reference), and the small-table Parquet files read back the same."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcnn_flame.io.arrow_table import Same, column, columns_table, parquet_bytes

SCHEMA = pa.schema([
    pa.field("version", pa.int16(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("score", pa.float32()),
    pa.field("count", pa.int64()),
    pa.field("vec", pa.list_(pa.float32())),
    pa.field("pose", pa.list_(pa.float32(), 3)),
    pa.field("same_vec", pa.list_(pa.float32())),
    pa.field("uri", pa.string()),
    pa.field("at", pa.timestamp("ms", tz="UTC")),
], metadata={b"k": b"v"})


def _reference(n: int, rng) -> tuple[dict, list[dict]]:
    score = rng.normal(size=n).astype(np.float32)
    score[1 % n] = np.nan
    score[2 % n] = np.inf
    vec = rng.normal(size=(n, 4)).astype(np.float32)
    pose = rng.normal(size=(n, 3)).astype(np.float32)
    same = np.array([0.5, -1.25], np.float32)
    now = dt.datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=dt.timezone.utc)
    uris = [None if i % 3 == 0 else f"s3://b/{i}.obj" for i in range(n)]
    cols = {"version": Same(1), "name": [f"e{i}" for i in range(n)], "score": score, "count": Same(7),
            "vec": vec, "pose": pose, "same_vec": Same(same), "uri": uris, "at": Same(now)}
    rows = [{"version": 1, "name": f"e{i}", "score": float(score[i]) if np.isfinite(score[i]) else None,
             "count": 7, "vec": vec[i].tolist(), "pose": pose[i].tolist(), "same_vec": same.tolist(),
             "uri": uris[i], "at": now} for i in range(n)]
    return cols, rows


@pytest.mark.parametrize("n", [1, 5, 10])
def test_columns_equal_the_row_by_row_table(n):
    cols, rows = _reference(n, np.random.default_rng(n))
    got = columns_table(cols, n, SCHEMA)
    want = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert got.schema == want.schema and got.schema.metadata == {b"k": b"v"}
    assert got.equals(want)
    assert got.column("score").null_count == min(n, 2)  # NaN and inf are NULL, as the naive rows say


def test_absent_columns_and_none_are_null_and_empty_lists_work():
    t = columns_table({"version": Same(2), "name": ["a", "b"], "vec": Same(np.zeros(0))}, 2, SCHEMA)
    assert t.column("vec").to_pylist() == [[], []]
    for name in ("score", "count", "pose", "same_vec", "uri", "at"):
        assert t.column(name).null_count == 2, name
    assert column(None, 3, SCHEMA.field("pose")).to_pylist() == [None] * 3


def test_bad_columns_are_refused_with_the_column_name():
    with pytest.raises(ValueError, match="not in the schema: \\['nope'\\]"):
        columns_table({"nope": Same(1)}, 1, SCHEMA)
    with pytest.raises(ValueError, match="'name' has 3 rows, the table 2"):
        columns_table({"version": Same(1), "name": ["a", "b", "c"]}, 2, SCHEMA)
    with pytest.raises(ValueError, match="3 items per row, got 2"):
        column(np.zeros((2, 2), np.float32), 2, SCHEMA.field("pose"))


def test_parquet_bytes_read_back_with_metadata():
    cols, rows = _reference(4, np.random.default_rng(0))
    data = parquet_bytes(columns_table(cols, 4, SCHEMA), {b"hash": b"abc"})
    back = pq.read_table(io.BytesIO(data))
    assert back.schema.metadata[b"hash"] == b"abc" and back.schema.metadata[b"k"] == b"v"
    assert back.equals(pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(back.schema.metadata))
    meta = pq.read_metadata(io.BytesIO(data))
    assert meta.row_group(0).column(2).compression == "SNAPPY"
