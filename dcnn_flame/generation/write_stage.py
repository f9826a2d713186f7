"""Finishing a character: write its files, ``_SUCCESS`` last, and make its status row; and the
write tasks of ``write_stage=tasks`` (:func:`write_payloads`).

The reconstruction actor calls :func:`finish_character` itself with ``write_stage=actor``. With
``write_stage=tasks`` it returns :mod:`.handoff` payload rows instead, and Ray Data runs
:func:`write_payloads` on them as ordinary CPU tasks (one process per core, no GIL shared with
the actor, retried by Ray when a process dies). Both paths call the same functions, so the files
are the same; keys are deterministic, so a retried task overwrites rather than duplicates.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from dcnn_flame.generation.schema import STATUS_SCHEMA


@dataclass(frozen=True)
class MeshTopology:
    """The head model's arrays the writers need (faces and UVs), without its bases.

    Attributes:
        faces: [F, 3] int64; uv_coords: [Vt, 2] float32 or None; uv_faces: [F, 3] int64 or None.
    """

    faces: np.ndarray
    uv_coords: Optional[np.ndarray]
    uv_faces: Optional[np.ndarray]

    def digest(self) -> str:
        """SHA-1 of the arrays (shapes, dtypes and bytes): equal topologies, equal digests."""
        import hashlib

        h = hashlib.sha1()
        for a in (self.faces, self.uv_coords, self.uv_faces):
            h.update(b"none" if a is None else f"{a.dtype.str}{a.shape}".encode())
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    @classmethod
    def of(cls, data: Any) -> "MeshTopology":
        return cls(faces=np.asarray(data.faces, dtype=np.int64),
                   uv_coords=None if data.uv_coords is None else np.asarray(data.uv_coords, dtype=np.float32),
                   uv_faces=None if data.uv_faces is None else np.asarray(data.uv_faces, dtype=np.int64))


def maybe_block(fault_dir: Optional[str]) -> None:
    """Fault injection for tests: the first process to get here publishes its PID in
    ``<fault_dir>/actor_pid`` and waits (up to 120 s) for ``<fault_dir>/release``."""
    if not fault_dir:
        return
    try:
        fd = os.open(os.path.join(fault_dir, "actor_pid"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(fault_dir, "release")) and time.time() < deadline:
        time.sleep(0.05)


#: Prefix of a failed character's status ``reason`` when its failure could not be stored.
UNRECORDED = "unrecorded: "


def fail_character(writer: Any, row: dict, num_images: int, stage: str, reason: str, detail: str) -> dict:
    """Mark the character not complete (:meth:`CharacterWriter.clear_character`) and write its
    failures table (its image failures + this one); its status row. When storage refuses those
    writes the status row's reason says so (prefix :data:`UNRECORDED`; the job's summary counts
    them) and the character still has no ``_SUCCESS``."""
    failures = json.loads(row.get("failures") or "[]")
    failures.append({"input_uri": None, "stage": stage, "reason": reason, "detail": detail})
    try:
        writer.clear_character(row["character_key"])
        writer.write_failures(row["character_id"], row["character_key"], failures)
    except Exception as exc:  # noqa: BLE001 - reported in the status row below
        reason = f"{UNRECORDED}{reason} ({type(exc).__name__}: {exc})"
        print(f"generate: the failure of character {row['character_id']!r} ({stage}: {detail}) could not be "
              f"stored: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return {"character_id": row["character_id"], "character_key": row["character_key"], "status": "failed",
            "num_images": int(num_images), "num_failures": len(failures), "num_expressions": 0,
            "reason": reason, "reconstruct_ms": 0.0, "write_ms": 0.0}


def finish_character(writer: Any, row: dict, num_images: int, rec: Any, names: list[str], au: Any, out: Any,
                     tiles: Optional[np.ndarray], reconstruct_ms: float, retarget_ms: float, tiles_ms: float = 0.0,
                     before_success: Optional[Callable[[], None]] = None) -> dict:
    """Write one character (:meth:`CharacterWriter.write_character`); its status row. A write
    error becomes a failure row of stage "write" (the character has no ``_SUCCESS``)."""
    failures = json.loads(row.get("failures") or "[]")
    t1 = time.perf_counter()
    try:
        writer.write_character(row["character_id"], row["character_key"], rec, names, au, out, failures,
                               num_images=num_images,
                               timings=(reconstruct_ms + float(row.get("decode_ms") or 0.0), retarget_ms),
                               before_success=before_success, tiles=tiles, tiles_ms=tiles_ms)
    except Exception as exc:  # noqa: BLE001
        return fail_character(writer, row, num_images, "write", "error", f"{type(exc).__name__}: {exc}")
    return {"character_id": row["character_id"], "character_key": row["character_key"], "status": "ok",
            "num_images": int(num_images), "num_failures": len(failures), "num_expressions": len(names),
            "reason": None, "reconstruct_ms": float(reconstruct_ms),
            "write_ms": float((time.perf_counter() - t1) * 1000.0 + tiles_ms)}


#: Writers of this process by (settings, step, topology digest), newest last (see _writer).
_WRITERS: "OrderedDict[tuple, Any]" = OrderedDict()
_WRITERS_LOCK = threading.Lock()
_WRITERS_KEPT = 4


def _writer(settings: Any, topology: MeshTopology, step: int) -> Any:
    """This process's :class:`~dcnn_flame.generation.writers.CharacterWriter` for these
    arguments. Ray runs many write tasks in one worker process, and a new writer computes the
    UV seam split and draws the preview sheet's captions again (on the 2-core CPU machine 14 ms
    per task of 8 characters, ~1.8 ms per character). Settings that cannot be hashed get a new
    writer each time."""
    from dcnn_flame.generation.writers import CharacterWriter

    try:
        key = (settings, int(step), topology.digest())
        hash(key)
    except TypeError:
        return CharacterWriter(settings, topology, step, "cpu")
    with _WRITERS_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = CharacterWriter(settings, topology, step, "cpu")  # renders only when tiles are missing
            _WRITERS[key] = writer
            while len(_WRITERS) > _WRITERS_KEPT:
                _WRITERS.popitem(last=False)
        else:
            _WRITERS.move_to_end(key)
        return writer


def write_payloads(batch: pa.Table, settings: Any, topology: MeshTopology, step: int) -> pa.Table:
    """Ray Data task of ``write_stage=tasks``: payload rows (:data:`.handoff.PAYLOAD_SCHEMA`) ->
    status rows (:data:`STATUS_SCHEMA`), writing every pending character.

    Args:
        batch: the actor's rows; failed ones pass through as they are.
        settings: the job's :class:`~dcnn_flame.generation.predictor.ActorSettings`
            (``write_threads`` characters of the batch are written in parallel).
        topology: faces and UVs of the head model.
        step: the checkpoint's training step (stored in the rows).
    """
    from dcnn_flame.generation.handoff import PENDING, unpack_character

    writer = _writer(settings, topology, step)
    rows = batch.to_pylist()
    status: list[Optional[dict]] = [None] * len(rows)
    pending = []
    for i, r in enumerate(rows):
        if r["status"] == PENDING:
            pending.append(i)
        else:
            status[i] = {f.name: r[f.name] for f in STATUS_SCHEMA}

    def one(i: int) -> dict:
        r = rows[i]
        try:
            p = unpack_character(r)
        except Exception as exc:  # noqa: BLE001 - a broken payload fails its character only
            return fail_character(writer, r, r["num_images"], "write", "error", f"{type(exc).__name__}: {exc}")
        return finish_character(writer, r, r["num_images"], p["rec"], p["names"], p["au"], p["out"], p["tiles"],
                                r["reconstruct_ms"], r["retarget_ms"], r["tiles_ms"],
                                before_success=lambda: maybe_block(settings.fault_injection))

    threads = min(int(settings.write_threads), len(pending))
    if threads <= 1:
        for i in pending:
            status[i] = one(i)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads, thread_name_prefix="dcnn-flame-write") as pool:
            for i, st in zip(pending, pool.map(one, pending)):
                status[i] = st
    return pa.Table.from_pylist(status, schema=STATUS_SCHEMA)
