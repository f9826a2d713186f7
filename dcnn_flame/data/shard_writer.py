"""Worker side of the ingest: one shard plan -> one Parquet shard + a done record.

For each image of the shard: read (threaded prefetch, so object-store latency overlaps
compute) -> decode (images.py) -> face box (metadata, detector or centre) -> 68 landmarks
(FAN) when available -> align to 224x224 (align.py) -> encode. Any per-image problem becomes
a failure row; a sample whose views partly failed is completed from its own good views
("pad") or dropped ("drop").

Exactly-once by keys: the shard is written atomically under its deterministic name, then the
done record ``_done/<shard>.json`` (rows, images, failures). The done record is the commit
marker: a rerun skips a shard whose record exists, and redoes (overwrites) a shard written
without one.
"""
from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dcnn_flame.constants import IMAGE_SIZE, NUM_AUS, NUM_LANDMARKS
from dcnn_flame.data import align as A
from dcnn_flame.data.images import DecodeError, decode_image, encode_image
from dcnn_flame.data.plan import table_from_ipc
from dcnn_flame.data.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, landmarks5_from_68
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

logger = logging.getLogger(__name__)

_PREFETCH_CHUNK = 16
_READ_THREADS = 8


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a shard writer needs (plain values; resolved on the driver)."""

    source: str
    output_uri: str
    storage: StorageOptions
    num_views: int
    short_identity_policy: str
    margin: float
    align: str
    image_format: str
    jpeg_quality: int
    min_image_size: int
    max_image_pixels: int
    max_image_bytes: int
    landmarks: str
    """"fan" or "metadata" (resolved from "auto" on the driver)."""
    fan_path: Optional[str]
    detector: str
    """"s3fd", "opencv" or "center" (resolved on the driver)."""
    detector_path: Optional[str]
    center_crop_fraction: float
    device: str

    def content_settings(self) -> dict[str, Any]:
        """The settings that change shard bytes (for the plan fingerprint; no paths)."""
        d = asdict(self)
        for k in ("output_uri", "storage", "fan_path", "detector_path", "device"):
            d.pop(k)
        return d


def shard_uri(output_uri: str, split: str, name: str) -> str:
    return storage.join(output_uri, "shards", split, f"{name}.parquet")


def done_uri(output_uri: str, name: str) -> str:
    return storage.join(output_uri, "_done", f"{name}.json")


class ShardTools:
    """Models a worker loads once (FAN, detector)."""

    def __init__(self, settings: WorkerSettings):
        from dcnn_flame.data import landmarks as L

        self.fan = None
        self.detector = None
        if settings.landmarks == "fan":
            s3fd = settings.detector_path if settings.detector == "s3fd" else None
            self.fan = L.FanLandmarker(settings.fan_path, s3fd, device=settings.device)
        if settings.detector == "s3fd":
            self.detector = (self.fan if self.fan is not None and self.fan.has_detector
                             else L.S3fdDetector(settings.detector_path, device=settings.device))
        elif settings.detector == "opencv":
            self.detector = L.CascadeDetector(settings.detector_path)


@dataclass
class _View:
    image: Any  # encoded bytes, or the [224, 224, 3] uint8 crop when prepare_view(encode=False)
    landmarks: list[float]
    landmarks5: list[float]
    source: str
    crop_box: list[float]


class _Failure(Exception):
    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(detail)
        self.stage, self.reason, self.detail = stage, reason, detail


def _finite(a: Optional[np.ndarray]) -> bool:
    return a is not None and bool(np.all(np.isfinite(a)))


def prepare_view(data: bytes, box: np.ndarray, lmk5: np.ndarray, settings: WorkerSettings,
                 tools: ShardTools, encode: bool = True) -> _View:
    """Decode, find the face, landmark and align one image (raises _Failure).

    ``encode=False`` keeps the aligned crop as a [224, 224, 3] uint8 array (for a consumer in
    the same pipeline, such as the generation job, that would only decode it again)."""
    try:
        img = decode_image(data, min_size=settings.min_image_size, max_pixels=settings.max_image_pixels,
                           max_bytes=settings.max_image_bytes)
    except DecodeError as exc:
        raise _Failure("decode", exc.reason, exc.detail) from None
    h, w = img.shape[:2]
    lmk5 = np.asarray(lmk5, dtype=np.float64).reshape(5, 2)
    if _finite(box):
        face = np.asarray(box, dtype=np.float64)
    elif tools.detector is not None:
        try:
            found = tools.detector.detect(img)
        except Exception as exc:  # a model error on one image must not stop the shard
            raise _Failure("detect", "detector_error", f"{type(exc).__name__}: {exc}") from None
        if found is None:
            raise _Failure("detect", "no_face", f"{settings.detector} found no face in {w}x{h} image")
        face = found[:4]
    else:
        face = A.center_box(h, w, settings.center_crop_fraction)

    lmk68 = np.full((NUM_LANDMARKS, 2), np.nan)
    if tools.fan is not None:
        try:
            lmk68 = tools.fan.landmarks(img, face)
        except Exception as exc:
            raise _Failure("detect", "landmark_error", f"FAN: {type(exc).__name__}: {exc}") from None
    has68 = _finite(lmk68)
    if not _finite(lmk5) and has68:
        lmk5 = landmarks5_from_68(lmk68)
    source = "fan" if has68 else ("metadata5" if _finite(lmk5) else "none")

    try:
        if settings.align == "landmarks5" and _finite(lmk5):
            m = A.landmarks5_alignment(lmk5, settings.margin, IMAGE_SIZE)
        else:
            m = A.box_alignment(face, settings.margin, IMAGE_SIZE)
    except ValueError as exc:
        raise _Failure("align", "bad_box", str(exc)) from None
    aligned = A.warp_image(img, m, IMAGE_SIZE)
    return _View(
        image=encode_image(aligned, settings.image_format, settings.jpeg_quality) if encode else aligned,
        landmarks=A.transform_points(m, lmk68).astype(np.float32).reshape(-1).tolist(),
        landmarks5=A.transform_points(m, lmk5).astype(np.float32).reshape(-1).tolist(),
        source=source,
        crop_box=A.crop_box(m, IMAGE_SIZE).astype(np.float32).tolist())


#: Attempts at an image read that fails with a possibly transient error (an object store's
#: timeout, a dropped connection), with READ_BACKOFF_S, then twice that, between them: a failure
#: row is committed with its shard, so a rerun would not try the image again.
READ_ATTEMPTS = 3
READ_BACKOFF_S = 0.5


def _read(fs, path: str, size: Optional[int], max_bytes: int) -> bytes:
    """An image's bytes; ``size`` None = unknown (the metadata index): then at most
    ``max_bytes + 1`` bytes are read (one ranged read), so a huge file is never read whole.
    A missing file or a refused permission fails at once; other errors are retried
    (:data:`READ_ATTEMPTS`)."""
    if size is not None and size > max_bytes:
        raise _Failure("read", "too_large", f"{size} bytes > max_image_bytes={max_bytes} (not read)")
    last: Optional[BaseException] = None
    for attempt in range(READ_ATTEMPTS):
        try:
            if size is None:
                try:
                    data = fs.cat_file(path, start=0, end=max_bytes + 1)
                except FileNotFoundError:
                    raise
                except Exception:
                    # An object store refuses any range of an empty object (HTTP 416): then
                    # the empty file is what it is (decode/empty), else the error stands.
                    if fs.size(path) == 0:
                        return b""
                    raise
                if len(data) > max_bytes:
                    raise _Failure("read", "too_large", f"more than max_image_bytes={max_bytes} bytes (reading "
                                                        f"stopped there)")
                return data
            return fs.cat_file(path)
        except _Failure:
            raise
        except FileNotFoundError:
            raise _Failure("read", "missing", f"no such file: {path}") from None
        except (PermissionError, IsADirectoryError) as exc:
            raise _Failure("read", "read_error", f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - maybe transient: try again
            last = exc
            if attempt + 1 < READ_ATTEMPTS:
                time.sleep(READ_BACKOFF_S * 2 ** attempt)
    raise _Failure("read", "read_error", f"{type(last).__name__}: {last} ({READ_ATTEMPTS} attempts)")


def _fetch_all(fs, jobs: list[tuple[str, str, int]], max_bytes: int):
    """Yield (uri, bytes | _Failure) in order, reading ahead with a thread pool."""
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        def submit(chunk):
            return [(u, pool.submit(_read, fs, p, s, max_bytes)) for u, p, s in chunk]

        chunks = [jobs[i:i + _PREFETCH_CHUNK] for i in range(0, len(jobs), _PREFETCH_CHUNK)]
        pending = submit(chunks[0]) if chunks else []
        for k in range(len(chunks)):
            ahead = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            for u, fut in pending:
                try:
                    yield u, fut.result()
                except _Failure as f:
                    yield u, f
            pending = ahead


def _nan_list(n: int) -> list[float]:
    return [float("nan")] * n


def write_shard(name: str, split: str, plan: pa.Table, settings: WorkerSettings, tools: ShardTools
                ) -> dict[str, Any]:
    """Process one shard plan and write it (skipped when its done record exists).

    Returns:
        The done record: shard, split, path, status ("written" | "skipped"), rows,
        images (distinct inputs attempted), images_ok (distinct inputs in the shard's rows) and
        ok_uris (those inputs), failures (FAILURE_SCHEMA dicts), seconds.
    """
    t0 = time.perf_counter()
    out = settings.output_uri
    opts = settings.storage
    if storage.exists(done_uri(out, name), opts):
        rec = json.loads(storage.read_bytes(done_uri(out, name), opts))
        rec["status"] = "skipped"
        return rec

    rows = plan.to_pylist()
    uris = list(dict.fromkeys(r["uri"] for r in rows))
    first = {}
    for r in rows:
        first.setdefault(r["uri"], r)
    fs, _ = storage.get_fs(uris[0], opts) if uris else (None, None)
    jobs = [(u, fs._strip_protocol(u), first[u]["size"] if first[u]["size"] >= 0 else None) for u in uris]

    results: dict[str, Any] = {}
    for u, got in _fetch_all(fs, jobs, settings.max_image_bytes):
        if isinstance(got, _Failure):
            results[u] = got
            continue
        r = first[u]
        try:
            results[u] = prepare_view(got, np.asarray(r["box"], dtype=np.float64),
                                      np.asarray(r["lmk5"], dtype=np.float64), settings, tools)
        except _Failure as f:
            results[u] = f
        except Exception as exc:  # never lose the shard for one image
            results[u] = _Failure("decode", "error", f"{type(exc).__name__}: {exc}")

    failures = []
    for u in uris:
        f = results[u]
        if isinstance(f, _Failure):
            failures.append({"input_uri": u, "identity": first[u]["identity"], "stage": f.stage,
                             "reason": f.reason, "detail": f.detail})

    samples: dict[str, list[dict]] = {}
    for r in rows:
        samples.setdefault(r["sample_id"], []).append(r)
    out_rows = []
    for sid, views in samples.items():
        ok = [(v, results[v["uri"]]) for v in views if isinstance(results[v["uri"]], _View)]
        if not ok:
            continue
        if len(ok) < len(views):
            if settings.short_identity_policy == "drop":
                # The views that failed have their own rows; the usable ones, dropped with their
                # sample, get one each, so that every input image is in a shard or in a row.
                for v, _ in ok:
                    failures.append({"input_uri": v["uri"], "identity": v["identity"], "stage": "group",
                                     "reason": "too_few_views",
                                     "detail": f"sample {sid}: {len(ok)} of {len(views)} views usable, the "
                                               f"sample is dropped (short_identity_policy=drop)"})
                continue
            ok = [ok[i % len(ok)] for i in range(len(views))]
        out_rows.append({
            "schema_version": SCHEMA_VERSION, "sample_id": sid, "identity": views[0]["identity"],
            "source": settings.source, "split": split, "num_views": len(ok),
            "image_uri": [v["uri"] for v, _ in ok],
            "image": [res.image for _, res in ok],
            "landmarks": [res.landmarks for _, res in ok],
            "landmarks5": [res.landmarks5 for _, res in ok],
            "landmark_source": [res.source for _, res in ok],
            "crop_box": [res.crop_box for _, res in ok],
            "au": [[float(x) for x in v["au"]] if v["au"] is not None else _nan_list(NUM_AUS) for v, _ in ok],
            "expression_class": [int(v["expression_class"]) for v, _ in ok],
        })
    table = pa.Table.from_pylist(out_rows, schema=SAMPLE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=64)
    path = shard_uri(out, split, name)
    storage.atomic_write_bytes(path, buf.getvalue(), opts)
    ok_uris = sorted({u for r in out_rows for u in r["image_uri"]})
    rec = {"shard": name, "split": split, "path": f"shards/{split}/{name}.parquet", "rows": table.num_rows,
           "images": len(uris), "images_ok": len(ok_uris), "ok_uris": ok_uris,
           "failures": failures, "seconds": round(time.perf_counter() - t0, 3)}
    storage.atomic_write_bytes(done_uri(out, name), json.dumps(rec, sort_keys=True).encode(), opts)
    rec["status"] = "written"
    return rec


class ShardWriter:
    """Ray Data callable class: loads the models once per actor, then writes shards.

    Input batch columns: name, split, plan (Arrow IPC bytes). Output: name, record (JSON).
    """

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.tools = ShardTools(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, records = [], []
        for name, split, plan in zip(batch["name"], batch["split"], batch["plan"]):
            name, split = str(name), str(split)
            try:
                rec = write_shard(name, split, table_from_ipc(bytes(plan)), self.settings, self.tools)
            except Exception as exc:  # e.g. the output store is unreachable: report, keep going
                logger.exception("shard %s failed", name)
                rec = {"shard": name, "split": split, "status": "error", "rows": 0, "images": 0, "images_ok": 0,
                       "seconds": 0.0, "failures": [{"input_uri": shard_uri(self.settings.output_uri, split, name),
                                                     "identity": "", "stage": "write", "reason": "shard_error",
                                                     "detail": f"{type(exc).__name__}: {exc}"}]}
            names.append(name)
            records.append(json.dumps(rec))
        return {"name": np.array(names, dtype=object), "record": np.array(records, dtype=object)}
