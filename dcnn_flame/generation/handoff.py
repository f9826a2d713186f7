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


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[str, bytearray]:
    """Named arrays -> (JSON index, one blob); each array's bytes start 8-byte aligned."""
    index, offset = [], 0
    arrays = {k: np.asarray(a, order="C") for k, a in arrays.items()}  # (ascontiguousarray makes 0-d 1-d)
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype {a.dtype}; only numeric arrays can be packed")
        offset += (-offset) % _ALIGN
        index.append([name, a.dtype.str, list(a.shape), offset, int(a.nbytes)])
        offset += a.nbytes
    blob = bytearray(offset)
    for (name, _, _, off, nbytes), a in zip(index, arrays.values()):
        blob[off:off + nbytes] = a.reshape(-1).view(np.uint8).data
    return json.dumps(index), blob  # a bytearray: Arrow copies it once into the column


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
    """A :data:`PAYLOAD_SCHEMA` row of one character ready to write.

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
    index, blob = pack_arrays({k: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor)
                                   and v.dtype != torch.uint8 else np.asarray(v)) for k, v in arrays.items()})
    return {"character_id": row["character_id"], "character_key": row["character_key"], "status": PENDING,
            "num_images": len(row["images"]), "num_failures": len(json.loads(row.get("failures") or "[]")),
            "num_expressions": len(names), "reason": None, "reconstruct_ms": float(reconstruct_ms),
            "write_ms": 0.0, "failures": row.get("failures") or "[]",
            "decode_ms": float(row.get("decode_ms") or 0.0), "retarget_ms": float(retarget_ms),
            "tiles_ms": float(tiles_ms), "names": list(names), "arrays_index": index, "arrays": blob}


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
