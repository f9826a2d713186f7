"""Stage 1 of the generation pipeline (CPU): read, decode, find the face, align.

The per-image work is the ingest's own (:func:`dcnn_flame.data.shard_writer.prepare_view`:
decode with the typed reasons of :mod:`dcnn_flame.data.images`, face box from S3FD / OpenCV /
centre crop, optional FAN landmarks, alignment to a 224x224 crop), so characters are cropped
exactly like the training data. On top of it one check the ingest does not need: a crop with
(almost) no contrast has no face in it (reason ``no_face``), which catches blank and flat
images when no detector is available.

The crops go to the reconstruction actors as raw RGB bytes (:data:`CROP_BYTES` each), not
PNG: encoding a crop only for the next stage to decode it again cost more than the rest of
this stage. A task reads its batch's images ahead with a few threads (:func:`read_ahead`):
object stores answer slowly, decoding is quick (docs/generation.md, "Throughput").

Every image problem becomes a failure row (stage read/decode/detect/align, a reason code and a
detail); a character with no usable image is passed on with zero images, and the actor turns
it into a failed character. Nothing here raises for bad data.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from dcnn_flame.constants import IMAGE_SIZE
from dcnn_flame.data import shard_writer as sw
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

#: Side of the aligned crops (the ingest's) and the byte length of one raw RGB crop.
CROP_SIZE = IMAGE_SIZE
CROP_BYTES = CROP_SIZE * CROP_SIZE * 3

#: Columns the stage adds (the input columns character_id, character_key, image_uris, sizes stay).
OUTPUT_SCHEMA = pa.schema([
    pa.field("character_id", pa.string()),
    pa.field("character_key", pa.string()),
    pa.field("image_uris", pa.list_(pa.string())),
    pa.field("images", pa.list_(pa.binary())),  # aligned crops, raw RGB uint8 [CROP_SIZE, CROP_SIZE, 3]
    pa.field("image_ok_uris", pa.list_(pa.string())),  # the input URI of each crop
    pa.field("failures", pa.string()),  # JSON list of {input_uri, stage, reason, detail}
    pa.field("decode_ms", pa.float32()),
])


@dataclass(frozen=True)
class DecodeSettings:
    """What stage 1 needs (plain values, resolved on the driver).

    Attributes:
        worker: the ingest's settings (detector, landmarks, margin, size limits, PNG crops).
        min_crop_std: crops with a lower pixel standard deviation (0-255) fail as ``no_face``.
        fs: fsspec filesystem built on the driver for remote inputs (carries the driver's
            credentials to workers, see :mod:`dcnn_flame.io.arrow_fs`); None = from options.
        storage: object-store options (local inputs ignore them).
        read_threads: images a decode task reads concurrently (1 = one after the other).
    """

    worker: sw.WorkerSettings
    min_crop_std: float
    fs: Any
    storage: StorageOptions
    read_threads: int = 8


_TOOLS: dict[int, sw.ShardTools] = {}


def _tools(settings: DecodeSettings) -> sw.ShardTools:
    """Detector/landmarker models, loaded once per worker process (Ray reuses workers)."""
    key = hash(settings.worker)
    tools = _TOOLS.get(key)
    if tools is None:
        tools = _TOOLS[key] = sw.ShardTools(settings.worker)
    return tools


def _fs_for(uri: str, settings: DecodeSettings):
    if settings.fs is not None and not storage.is_local(uri):
        return settings.fs, uri.split("://", 1)[1]
    return storage.get_fs(uri, settings.storage)


def crop_std(crop: np.ndarray) -> float:
    """Pixel standard deviation (0-255, over all channels) of a uint8 crop [H, W, 3]."""
    return float(np.asarray(crop, dtype=np.float32).std())


def read_image(uri: str, size: int, settings: DecodeSettings) -> bytes:
    """Read one input image's bytes; raises ``shard_writer._Failure``. ``size`` from the listing,
    or -1 (a manifest): then one ranged read of at most ``max_image_bytes + 1`` bytes, so a file
    over the limit is never read whole, in one request (it was a HEAD for the size, then the GET)."""
    fs, path = _fs_for(uri, settings)
    return sw._read(fs, path, size if size >= 0 else None, settings.worker.max_image_bytes)


def crop_image(data: bytes, settings: DecodeSettings, tools: sw.ShardTools) -> bytes:
    """An input image's bytes -> its aligned crop as raw RGB bytes (:data:`CROP_BYTES`, row-major
    [CROP_SIZE, CROP_SIZE, 3] uint8); raises ``shard_writer._Failure``."""
    nan4, nan5 = np.full(4, np.nan), np.full((5, 2), np.nan)
    view = sw.prepare_view(data, nan4, nan5, settings.worker, tools, encode=False)
    std = crop_std(view.image)
    if std < settings.min_crop_std:
        raise sw._Failure("detect", "no_face", f"the aligned crop is featureless (pixel std {std:.2f} < "
                                               f"min_crop_std={settings.min_crop_std}); no face found")
    crop = np.ascontiguousarray(view.image, dtype=np.uint8)
    if crop.shape != (CROP_SIZE, CROP_SIZE, 3):
        raise sw._Failure("align", "error", f"aligned crop has shape {crop.shape}, expected "
                                            f"({CROP_SIZE}, {CROP_SIZE}, 3)")
    return crop.tobytes()


def prepare_image(uri: str, size: int, settings: DecodeSettings, tools: sw.ShardTools) -> bytes:
    """Read one image and return its aligned raw crop (:func:`read_image` + :func:`crop_image`)."""
    return crop_image(read_image(uri, size, settings), settings, tools)


def _failure_row(uri: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, sw._Failure):
        return {"input_uri": uri, "stage": exc.stage, "reason": exc.reason, "detail": exc.detail}
    return {"input_uri": uri, "stage": "decode", "reason": "error", "detail": f"{type(exc).__name__}: {exc}"}


def _read_or_failure(uri: str, size: int, settings: DecodeSettings) -> Any:
    try:
        return read_image(uri, int(size), settings)
    except Exception as exc:  # noqa: BLE001 - returned, becomes the image's failure row
        return exc


def preprocess_character(character_id: str, key: str, uris: list[str], sizes: list[int],
                         settings: DecodeSettings, tools: Optional[sw.ShardTools] = None,
                         data: Optional[Iterable[Any]] = None) -> dict[str, Any]:
    """One output row of stage 1 for one character (see :data:`OUTPUT_SCHEMA`).

    Args:
        data: the images already read, one per URI (bytes, or the exception reading it raised),
            e.g. by :func:`read_ahead`; None = read here, one after the other.
    """
    t0 = time.perf_counter()
    tools = tools if tools is not None else _tools(settings)
    if data is None:
        data = (_read_or_failure(u, s, settings) for u, s in zip(uris, sizes))
    images, ok_uris, failures = [], [], []
    for uri, raw in zip(uris, data):
        try:
            if isinstance(raw, BaseException):
                raise raw
            images.append(crop_image(raw, settings, tools))
            ok_uris.append(uri)
        except Exception as exc:  # noqa: BLE001 - one image must never stop the character
            failures.append(_failure_row(uri, exc))
    return {"character_id": character_id, "character_key": key, "image_uris": list(uris), "images": images,
            "image_ok_uris": ok_uris, "failures": json.dumps(failures),
            "decode_ms": float((time.perf_counter() - t0) * 1000.0)}


def read_ahead(jobs: Sequence[tuple[str, int]], settings: DecodeSettings, threads: int,
               window: int) -> Iterator[Any]:
    """Read ``(uri, size)`` images with ``threads`` threads, at most ``window`` ahead of the
    consumer; yields each image's bytes (or the exception reading it raised) in order.

    Object stores answer each GET after tens of milliseconds, far longer than decoding and
    aligning the image takes: one task reading one image after the other waits most of its time.
    """
    if threads <= 1 or len(jobs) <= 1:
        for uri, size in jobs:
            yield _read_or_failure(uri, size, settings)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dcnn-flame-read") as pool:
        pending: deque = deque()
        it = iter(jobs)
        for uri, size in it:
            pending.append(pool.submit(_read_or_failure, uri, size, settings))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_read_or_failure, nxt[0], nxt[1], settings))
            yield result


def preprocess_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Ray Data ``map_batches`` function (batch_format="pyarrow"): stage 1 for a batch of characters.

    The batch's images are read ahead by ``settings.read_threads`` threads (at most
    ``2 * read_threads`` images in memory ahead of the decoder) while they are decoded in order.
    """
    chars = batch.to_pylist()
    # one size per URI (-1 = unknown); int(size) happens per read, inside its try
    per_char = [list(zip(r["image_uris"], list(r["sizes"] or []) + [-1] * len(r["image_uris"])))
                for r in chars]
    threads = max(1, int(settings.read_threads))
    data = read_ahead([j for jobs in per_char for j in jobs], settings, threads, window=2 * threads)
    tools = _tools(settings)
    rows = []
    for r, jobs in zip(chars, per_char):
        rows.append(preprocess_character(r["character_id"], r["character_key"], [u for u, _ in jobs],
                                         [s for _, s in jobs], settings, tools, data=[next(data) for _ in jobs]))
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
