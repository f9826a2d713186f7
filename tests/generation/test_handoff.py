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
    assert len(blob) == json.loads(index)[-1][3] + json.loads(index)[-1][4]


def test_pack_arrays_errors():
    from dcnn_flame.generation.handoff import pack_arrays, unpack_arrays

    with pytest.raises(TypeError, match="'o' has dtype object"):
        pack_arrays({"o": np.array([object()])})
    index, blob = pack_arrays({"a": np.ones(16, np.float32)})
    with pytest.raises(ValueError, match="'a' ends at byte 64, the blob has 10"):
        unpack_arrays(index, blob[:10])
