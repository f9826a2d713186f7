"""The payload of write_stage=tasks: arrays packed into one blob and back, exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_pack_arrays_round_trips_every_dtype_and_shape():
    from dcnn_flame.generation.handoff import pack_arrays, unpack_arrays

    rng = np.random.default_rng(0)
    arrays = {"f32": rng.standard_normal((3, 5)).astype(np.float32), "odd_u8": rng.integers(0, 255, 7, np.uint8),
              "i64": np.arange(4, dtype=np.int64).reshape(2, 2), "scalar": np.array(2.5),
              "empty": np.zeros((0, 3), np.float32), "strided": np.arange(20, dtype=np.float32)[::2],
              "nan": np.array([np.nan, np.inf, -0.0], np.float32)}
    index, blob = pack_arrays(arrays)
    back = unpack_arrays(index, blob)
    assert list(back) == list(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape, k
        assert back[k].tobytes() == np.ascontiguousarray(a).tobytes(), k  # bit for bit (NaN, -0.0)
        assert back[k].flags.writeable, k
    offsets = [e[3] for e in json.loads(index)]
    assert all(o % 8 == 0 for o in offsets) and offsets == sorted(offsets)
    end = json.loads(index)[-1][3] + json.loads(index)[-1][4]
    assert len(blob) == end + (-end) % 8 and not any(blob[end:])


def test_pack_arrays_errors():
    from dcnn_flame.generation.handoff import pack_arrays, unpack_arrays

    with pytest.raises(TypeError, match="'o' has dtype object"):
        pack_arrays({"o": np.array([object()])})
    index, blob = pack_arrays({"a": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match="'a' ends at byte 64, the blob has 10"):
        unpack_arrays(index, blob[:10])


def test_payload_table_builds_the_blobs_in_place_as_pack_arrays_would():
    """payload_table's arrays column (one buffer, one copy per array) holds for every row the
    bytes pack_arrays makes (zeroed gaps), nulls for rows without arrays, every array 8-byte
    aligned in the column's buffer; the other fields as from_pylist makes them."""
    import pyarrow as pa

    from dcnn_flame.generation.handoff import PAYLOAD_SCHEMA, layout_arrays, pack_arrays, payload_table, unpack_arrays

    rng = np.random.default_rng(1)
    sets = [{"v": rng.standard_normal((2, 3)).astype(np.float32), "t": rng.integers(0, 255, (3, 5), np.uint8)},
            None,
            {"odd": rng.integers(0, 255, 13, np.uint8), "x": np.arange(3, dtype=np.float64)},
            {"v": rng.standard_normal(5).astype(np.float32)[::-1]}]
    rows = []
    for i, arrays in enumerate(sets):
        row = {"character_id": f"c{i}", "character_key": f"c{i}", "status": "pending" if arrays else "failed",
               "num_images": 1, "names": ["joy"]}
        if arrays is not None:
            packed = layout_arrays(arrays)
            row["arrays_index"] = packed.index
            # one row handed over as bytes (as a payload read back from a table would be)
            row["arrays"] = bytes(pack_arrays(arrays)[1]) if i == 3 else packed
        rows.append(row)
    table = payload_table(rows)
    assert table.schema.equals(PAYLOAD_SCHEMA) and table.num_rows == 4
    column = table.column("arrays").chunk(0)
    assert column.null_count == 1 and column.is_null().to_pylist() == [False, True, False, False]
    back = table.to_pylist()
    for row, arrays in zip(back, sets):
        if arrays is None:
            assert row["arrays"] is None
            continue
        index, blob = pack_arrays(arrays)
        assert row["arrays_index"] == index and row["arrays"] == bytes(blob)
        for k, a in unpack_arrays(index, row["arrays"]).items():
            assert a.tobytes() == np.ascontiguousarray(arrays[k]).tobytes()
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[:5]
    assert all(int(o) % 8 == 0 for o in offsets)
    reference = pa.Table.from_pylist([dict(r, arrays=None) for r in rows], schema=PAYLOAD_SCHEMA)
    assert table.drop_columns(["arrays"]).equals(reference.drop_columns(["arrays"]))
    empty = payload_table([])
    assert empty.num_rows == 0 and empty.schema.equals(PAYLOAD_SCHEMA)
