"""What a reconstruction actor hands to the write tasks (``write_stage=tasks``): one Arrow row
per character carrying its reconstruction, retargeted meshes and preview tiles.

With ``write_stage=actor`` (the default) the actor writes each character itself. With
``write_stage=tasks`` it only runs the device work (forward pass, retargeting, preview tiles,
the 8-bit albedo texture), packs each character into a :data:`PAYLOAD_SCHEMA` row and returns
it; CPU tasks of the next Ray Data stage (:mod:`.write_stage`) encode and write the files on
every core, in their own processes, while the actor's device works on the next batch.

Arrays travel as one binary blob per character plus a small JSON index of
``[name, dtype, shape, offset, nbytes]`` (:func:`pack_arrays`; offsets 8-byte aligned), so
the row is a handful of columns whatever the model's sizes are. Nothing is rounded: float32
stays float32 bit for bit, so a character written by a task is the same file as one written by
the actor (tested). 1.43 MB per character with 9 expressions, 160 px preview tiles and the
demo model (tiles 0.77 MB, meshes 0.61 MB, its 128 px texture 0.05 MB; the paper model's 256 px
texture is 0.2 MB).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from dcnn_flame.generation.schema import STATUS_SCHEMA

#: Status of a row that still has to be written (the others are final: "failed").
PENDING = "pending"

#: The actor's rows with ``write_stage=tasks``: the status fields (final for failed
#: characters, ``status="pending"`` for characters to write) and the character's payload.
PAYLOAD_SCHEMA = pa.schema(list(STATUS_SCHEMA) + [
    pa.field("failures", pa.string()),  # JSON list of the character's image failures
    pa.field("decode_ms", pa.float32()),
    pa.field("retarget_ms", pa.float32()),
    pa.field("tiles_ms", pa.float32()),
    pa.field("names", pa.list_(pa.string())),  # expression names, in the morph targets' order
    pa.field("arrays_index", pa.string()),  # JSON [[name, dtype, shape, offset, nbytes], ...]
    pa.field("arrays", pa.large_binary()),
])

_ALIGN = 8


@dataclass
class PackedArrays:
    """Named arrays laid out for one blob (:func:`layout_arrays`), not copied yet: ``index`` is
    the JSON index, ``parts`` the (offset, C-contiguous array) pairs, ``nbytes`` the blob's size.
    :func:`payload_table` copies them straight into the Arrow column's buffer."""

    index: str
    parts: list
    nbytes: int

    def into(self, buf: np.ndarray) -> None:
        """Copy the arrays into ``buf`` (uint8, ``nbytes`` long); alignment gaps become zeros."""
        end = 0
        for off, a in self.parts:
            buf[end:off] = 0
            buf[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
            end = off + a.nbytes
        buf[end:self.nbytes] = 0


def layout_arrays(arrays: dict[str, np.ndarray]) -> PackedArrays:
    """Named arrays -> their :class:`PackedArrays` layout (each array's bytes 8-byte aligned)."""
    index, parts, offset = [], [], 0
    for name, a in arrays.items():
        a = np.asarray(a, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype {a.dtype}; only numeric arrays can be packed")
        offset += (-offset) % _ALIGN
        index.append([name, a.dtype.str, list(a.shape), offset, int(a.nbytes)])
        parts.append((offset, a))
        offset += a.nbytes
    # The blob's size rounded up to 8 too, so that blobs laid end to end (payload_table) keep
    # every array aligned.
    return PackedArrays(json.dumps(index), parts, offset + (-offset) % _ALIGN)


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[str, bytearray]:
    """Named arrays -> (JSON index, one blob); each array's bytes start 8-byte aligned and the
    blob's length is a multiple of 8 (zeros in the gaps)."""
    packed = layout_arrays(arrays)
    blob = bytearray(packed.nbytes)
    packed.into(np.frombuffer(blob, dtype=np.uint8))
    return packed.index, blob


def payload_table(rows: Sequence[dict]) -> pa.Table:
    """:data:`PAYLOAD_SCHEMA` rows whose ``arrays`` is a :class:`PackedArrays`, bytes or None ->
    a table. The ``arrays`` column is built in one buffer with one copy of each array (a row
    list through ``Table.from_pylist`` would copy every blob once more, each into fresh memory:
    on the H200 machine packing and that copy cost 3 ms per character)."""
    n = len(rows)
    blobs = [r.get("arrays") for r in rows]
    sizes = np.array([0 if b is None else (b.nbytes if isinstance(b, PackedArrays) else len(b)) for b in blobs],
                     dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for b, lo, hi in zip(blobs, offsets[:-1], offsets[1:]):
        if isinstance(b, PackedArrays):
            b.into(data[lo:hi])
        elif b is not None:
            data[lo:hi] = np.frombuffer(b, dtype=np.uint8)
    valid = pa.array([b is not None for b in blobs], type=pa.bool_())
    nulls = n - int(sum(b is not None for b in blobs))
    column = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [valid.buffers()[1] if nulls else None,
                                                                     pa.py_buffer(offsets), pa.py_buffer(data)],
                                              null_count=nulls)
    rest = pa.schema([f for f in PAYLOAD_SCHEMA if f.name != "arrays"])
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "arrays"} for r in rows], schema=rest)
    return table.append_column(PAYLOAD_SCHEMA.field("arrays"), column)


def unpack_arrays(index: str, blob: bytes, copy: bool = True) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_arrays`. ``copy=False``: views of ``blob`` (read-only when
    ``blob`` is ``bytes``), for arrays only read."""
    buf = bytearray(blob) if copy else blob
    out = {}
    for name, dtype, shape, offset, nbytes in json.loads(index):
        dt = np.dtype(dtype)
        count = nbytes // dt.itemsize if dt.itemsize else 0
        if offset + nbytes > len(buf):
            raise ValueError(f"packed array {name!r} ends at byte {offset + nbytes}, the blob has {len(buf)}")
        out[name] = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)
    return out


def pack_character(row: dict, rec: Any, names: Sequence[str], au: torch.Tensor, out: Any,
                   tiles: Optional[np.ndarray], reconstruct_ms: float, retarget_ms: float,
                   tiles_ms: float) -> dict:
    """A :data:`PAYLOAD_SCHEMA` row of one character ready to write; its ``arrays`` is a
    :class:`PackedArrays` (copied into the table by :func:`payload_table`).

    Args:
        row: the decode stage's row (character_id, character_key, images, failures, decode_ms).
        rec: :class:`~dcnn_flame.generation.predictor.Reconstruction` (with its ``texture``).
        names: K expression names; au: [K, 17] their AU rows (NaN for performance frames).
        out: the character's :class:`~dcnn_flame.generation.retarget.RetargetOutput` (CPU).
        tiles: [T, s, s, 3] uint8 preview tiles or None.
    """
    arrays = {"shape": rec.shape, "expression": rec.expression, "pose": rec.pose, "au": rec.au,
              "bank_au": au, "out_expression": out.expression, "out_pose": out.pose, "vertices": out.vertices,
              "neutral": out.neutral}
    if rec.detail_code is not None:
        arrays["detail_code"] = rec.detail_code
    if rec.texture is None:
        raise ValueError("the reconstruction has no 8-bit texture (reconstruct() makes it)")
    arrays["texture"] = rec.texture
    if tiles is not None:
        arrays["tiles"] = tiles
    packed = layout_arrays({k: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor)
                                and v.dtype != torch.uint8 else np.asarray(v)) for k, v in arrays.items()})
    return {"character_id": row["character_id"], "character_key": row["character_key"], "status": PENDING,
            "num_images": len(row["images"]), "num_failures": len(json.loads(row.get("failures") or "[]")),
            "num_expressions": len(names), "reason": None, "reconstruct_ms": float(reconstruct_ms),
            "write_ms": 0.0, "failures": row.get("failures") or "[]",
            "decode_ms": float(row.get("decode_ms") or 0.0), "retarget_ms": float(retarget_ms),
            "tiles_ms": float(tiles_ms), "names": list(names), "arrays_index": packed.index, "arrays": packed}


def unpack_character(payload: dict) -> dict:
    """A pending :data:`PAYLOAD_SCHEMA` row -> the arguments of
    :func:`~dcnn_flame.generation.write_stage.finish_character`: ``rec`` (a Reconstruction whose
    ``albedo`` is the 8-bit texture / 255), ``names``, ``au`` [K, 17], ``out`` (RetargetOutput,
    vertices [K, V, 3]), ``tiles`` (or None) and the row's fields."""
    from dcnn_flame.generation.predictor import Reconstruction
    from dcnn_flame.generation.retarget import RetargetOutput

    # Images (uint8: tiles, texture) are only read: views; the rest become tensors: copies.
    a = {k: v if v.dtype == np.uint8 else torch.from_numpy(v.copy())
         for k, v in unpack_arrays(payload["arrays_index"], payload["arrays"], copy=False).items()}
    texture = a["texture"]
    rec = Reconstruction(shape=a["shape"], expression=a["expression"], pose=a["pose"],
                         albedo=torch.from_numpy(texture.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)),
                         detail_code=a.get("detail_code"), au=a["au"], texture=texture)
    out = RetargetOutput(expression=a["out_expression"], pose=a["out_pose"], vertices=a["vertices"],
                         neutral=a["neutral"])
    names = list(payload["names"] or [])
    if out.vertices.shape[0] != len(names) or a["bank_au"].shape[0] != len(names):
        raise ValueError(f"payload of {payload['character_id']!r} has {len(names)} names but "
                         f"{out.vertices.shape[0]} meshes and {a['bank_au'].shape[0]} AU rows")
    return {"rec": rec, "names": names, "au": a["bank_au"], "out": out, "tiles": a.get("tiles")}
