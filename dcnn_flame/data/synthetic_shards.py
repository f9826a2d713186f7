"""Synthetic world -> Parquet shards, manifest and contact sheet (``jobs/prepare.py source=synthetic``).

Output layout (the same as the image ingest, :mod:`dcnn_flame.data.ingest`)::

    <out>/shards/train/synthetic-train-00000.parquet ...   train from <out>/shards/train
    <out>/shards/val/synthetic-val-00000.parquet ...       validate from <out>/shards/val
    <out>/plan.json  <out>/manifest.json  <out>/contact_sheet.png

(or point training at ``<out>/shards`` and filter by the ``split`` column). Identities
``0 .. N - n_val - 1`` are split "train" and the last ``n_val = round(N * val_fraction)``
are "val"; each split is cut into shards of ``rows_per_shard`` consecutive identities, so
shard names and contents depend only on the settings. One row = one identity in
``num_views`` views (:data:`dcnn_flame.data.schema.SAMPLE_SCHEMA`, ground-truth columns filled).

Exactly-once by keys: a shard is generated in memory and written atomically under its
deterministic name, so an existing shard file is complete and a rerun skips it; ``plan.json``
refuses to mix shards of different settings in one prefix; the manifest and the contact sheet
are rewritten only when their bytes change (a rerun with nothing to do writes nothing).

Parallelism: ``parallel="ray"`` (Ray Data actor pool, one world per actor), ``"process"``
(a spawn process pool) or ``"serial"``; every worker uses one torch thread.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dcnn_flame.config import SyntheticConfig
from dcnn_flame.data.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, decode_image
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

logger = logging.getLogger(__name__)

SOURCE = "synthetic"
PARALLEL_MODES = ("auto", "ray", "process", "serial")
_ROW_GROUP = 32


@dataclass(frozen=True)
class ShardSpec:
    """One shard: identities ``start .. start + count - 1`` of split ``split``."""

    name: str
    split: str
    index: int
    start: int
    count: int

    @property
    def path(self) -> str:
        """Path relative to the output prefix."""
        return f"shards/{self.split}/{self.name}.parquet"


@dataclass(frozen=True)
class GeneratorJob:
    """What a shard writer needs (plain values, sent to workers)."""

    output_uri: str
    storage: StorageOptions
    seed: int
    num_views: int
    world: SyntheticConfig


@dataclass
class SyntheticRun:
    """What :func:`write_synthetic_shards` did."""

    output_uri: str
    manifest: dict[str, Any]
    """The content of manifest.json."""
    shards_total: int
    shards_written: int
    shards_skipped: int
    rows_written: int
    images_written: int
    seconds: float
    """Wall time of the shard generation of this run."""
    images_per_s: float
    """Rendered views per second of this run (0 when nothing was written)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """Per-shard records of this run (shard, split, status, rows, seconds)."""


def plan_shards(num_identities: int, rows_per_shard: int, val_fraction: float) -> list[ShardSpec]:
    """Deterministic shards: train identities first, the last ``round(N * val_fraction)`` val."""
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1, got {num_identities}")
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    n_val = min(num_identities, int(round(num_identities * val_fraction)))
    ranges = {"train": (0, num_identities - n_val), "val": (num_identities - n_val, num_identities)}
    specs = []
    for split, (lo, hi) in ranges.items():
        for k, start in enumerate(range(lo, hi, rows_per_shard)):
            specs.append(ShardSpec(name=f"{SOURCE}-{split}-{k:05d}", split=split, index=k, start=start,
                                   count=min(rows_per_shard, hi - start)))
    return specs


def shard_uri(output_uri: str, spec: ShardSpec) -> str:
    return storage.join(output_uri, spec.path)


def write_if_changed(uri: str, data: bytes, options: Optional[StorageOptions]) -> bool:
    """Atomically write ``data`` unless ``uri`` already holds exactly these bytes."""
    if storage.exists(uri, options) and storage.read_bytes(uri, options) == data:
        return False
    storage.atomic_write_bytes(uri, data, options)
    return True


# ------------------------------------------------------------------------------ workers


def write_shard(world, spec: ShardSpec, job: GeneratorJob) -> dict[str, Any]:
    """Generate and write one shard (skipped when its file exists). Returns its record."""
    uri = shard_uri(job.output_uri, spec)
    rec = {"shard": spec.name, "split": spec.split, "path": spec.path, "rows": spec.count,
           "images": 0, "seconds": 0.0}
    if storage.exists(uri, job.storage):
        return {**rec, "status": "skipped"}
    t0 = time.perf_counter()
    rows = [ident.to_row(spec.split, job.world.store_vertices)
            for ident in world.generate(job.seed, spec.start, spec.count)]
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=_ROW_GROUP)
    storage.atomic_write_bytes(uri, buf.getvalue(), job.storage)
    return {**rec, "status": "written", "images": spec.count * job.num_views,
            "seconds": round(time.perf_counter() - t0, 3)}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


_PROCESS_JOB: Optional[GeneratorJob] = None


def _process_init(job: GeneratorJob) -> None:
    global _PROCESS_JOB
    _one_thread()
    _PROCESS_JOB = job


def _process_shard(spec: ShardSpec) -> dict[str, Any]:
    from dcnn_flame.data.synthetic import world_for

    assert _PROCESS_JOB is not None
    return write_shard(world_for(_PROCESS_JOB.world, _PROCESS_JOB.num_views), spec, _PROCESS_JOB)


class SyntheticShardWriter:
    """Ray Data callable class: builds the world once per actor, then writes shards.

    Input batch columns: the :class:`ShardSpec` fields. Output: shard, record (JSON).
    """

    def __init__(self, job: GeneratorJob) -> None:
        from dcnn_flame.data.synthetic import world_for

        _one_thread()
        self.job = job
        self.world = world_for(job.world, job.num_views)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, records = [], []
        for i in range(len(batch["name"])):
            spec = ShardSpec(name=str(batch["name"][i]), split=str(batch["split"][i]), index=int(batch["index"][i]),
                             start=int(batch["start"][i]), count=int(batch["count"][i]))
            try:
                rec = write_shard(self.world, spec, self.job)
            except Exception as exc:  # report and keep going: a rerun retries the shard
                logger.exception("synthetic shard %s failed", spec.name)
                rec = {"shard": spec.name, "split": spec.split, "path": spec.path, "rows": 0, "images": 0,
                       "seconds": 0.0, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            names.append(spec.name)
            records.append(json.dumps(rec))
        return {"shard": np.array(names, dtype=object), "record": np.array(records, dtype=object)}


def _iter_serial(todo: list[ShardSpec], job: GeneratorJob):
    from dcnn_flame.data.synthetic import world_for

    world = world_for(job.world, job.num_views)
    for spec in todo:
        yield write_shard(world, spec, job)


def _iter_process(todo: list[ShardSpec], job: GeneratorJob, workers: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_process_init,
                             initargs=(job,)) as pool:
        futures = [pool.submit(_process_shard, spec) for spec in todo]
        for fut in as_completed(futures):
            yield fut.result()


def _iter_ray(todo: list[ShardSpec], job: GeneratorJob, workers: int, progress: bool,
              stall_timeout_s: Optional[float] = None):
    import ray

    items = [asdict(s) for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(SyntheticShardWriter, batch_size=1, fn_constructor_kwargs={"job": job},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
                        num_cpus=1)
    ds.context.enable_progress_bars = bool(progress)
    if stall_timeout_s is not None:
        # a shard of large images on a busy machine can take minutes with nothing else moving
        ds.context.execution_no_progress_timeout_s = float(stall_timeout_s)
    for row in ds.iter_rows():
        yield json.loads(row["record"])


# ------------------------------------------------------------------------------- driver


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _guard_plan(output_uri: str, fingerprint: str, settings: dict[str, Any], options: Optional[StorageOptions]) -> None:
    uri = storage.join(output_uri, "plan.json")
    if storage.exists(uri, options):
        old = json.loads(storage.read_bytes(uri, options))
        if old.get("fingerprint") != fingerprint and storage.list_files(
                storage.join(output_uri, "shards"), options, suffixes=(".parquet",)):
            raise ValueError(
                f"{output_uri} already holds synthetic shards made with other settings (fingerprint "
                f"{str(old.get('fingerprint', '?'))[:12]} != {fingerprint[:12]}; see its plan.json). Use a new "
                f"output_uri, or delete {output_uri} to start over.")
    write_if_changed(uri, json.dumps({"fingerprint": fingerprint, **settings}, sort_keys=True, indent=1).encode(),
                     options)


def contact_sheet_png(output_uri: str, specs: list[ShardSpec], n_samples: int,
                      options: Optional[StorageOptions]) -> Optional[bytes]:
    """PNG bytes of the first ``n_samples`` rows (train first) as read back from the shards:
    one row of the sheet per identity, one column per view, landmarks drawn."""
    from dcnn_flame.data.contact_sheet import contact_sheet

    images, lmks, labels = [], [], []
    num_views = 1
    for spec in sorted(specs, key=lambda s: (s.split != "train", s.split, s.index)):
        if len(labels) and len(labels) >= n_samples * num_views:
            break
        uri = shard_uri(output_uri, spec)
        if not storage.exists(uri, options):
            continue
        fs, path = storage.get_fs(uri, options)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["identity", "image", "landmarks"])
        for row in table.to_pylist():
            if len(labels) >= n_samples * num_views:
                break
            num_views = len(row["image"])
            for v, (data, lmk) in enumerate(zip(row["image"], row["landmarks"])):
                images.append(decode_image(data))
                lmks.append(np.asarray(lmk, dtype=np.float64).reshape(-1, 2))
                labels.append(row["identity"] if v == 0 else "")
    if not images:
        return None
    sheet = contact_sheet(np.stack(images), np.stack(lmks), cols=num_views, labels=labels)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_shards(
    output_uri: str,
    num_identities: int,
    rows_per_shard: int = 64,
    seed: int = 0,
    num_views: int = 4,
    val_fraction: float = 0.1,
    storage_options: Optional[StorageOptions] = None,
    num_workers: Optional[int] = None,
    world: Optional[SyntheticConfig] = None,
    parallel: str = "auto",
    progress: bool = True,
    contact_sheet_samples: int = 6,
    stall_timeout_s: Optional[float] = None,
) -> SyntheticRun:
    """Generate the synthetic world as Parquet shards under ``output_uri`` (see the module docstring).

    Args:
        output_uri: output prefix (local path or URI); shards go to ``<out>/shards/<split>/``.
        num_identities: identities (rows) in total; ``world.num_identities`` is ignored here.
        rows_per_shard: identities per shard.
        seed: world seed (identity i depends only on (seed, i) and ``world``).
        num_views: views per identity.
        val_fraction: the last ``round(num_identities * val_fraction)`` identities are "val".
        storage_options: object-store settings.
        num_workers: parallel writers (None = Ray's CPUs or os.cpu_count()).
        world: sampling settings (None = defaults).
        parallel: "ray" (initialises Ray when needed), "process", "serial", or "auto"
            (Ray if it is initialised, else processes when more than one worker and shard).
        progress: tqdm bar over shards.
        contact_sheet_samples: identities on ``contact_sheet.png`` (0 = no sheet).
        stall_timeout_s: with Ray, fail when no shard finishes for this long (Ray Data's
            no-progress timeout for this job; None = the process-wide setting).

    Returns:
        :class:`SyntheticRun` (its ``manifest`` is what manifest.json holds).
    """
    from tqdm import tqdm

    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    world = world or SyntheticConfig()
    out = storage.resolve(output_uri)
    specs = plan_shards(num_identities, rows_per_shard, val_fraction)
    settings = {"schema_version": SCHEMA_VERSION, "source": SOURCE, "seed": int(seed),
                "num_identities": int(num_identities), "rows_per_shard": int(rows_per_shard),
                "num_views": int(num_views), "val_fraction": float(val_fraction),
                "world": {k: v for k, v in asdict(world).items() if k != "num_identities"}}
    fingerprint = _fingerprint(settings)
    _guard_plan(out, fingerprint, settings, storage_options)
    job = GeneratorJob(output_uri=out, storage=storage_options or StorageOptions(), seed=int(seed),
                       num_views=int(num_views), world=world)

    todo = [s for s in specs if not storage.exists(shard_uri(out, s), storage_options)]
    if parallel == "auto":
        import ray

        if ray.is_initialized():
            parallel = "ray"
        else:
            parallel = "process" if len(todo) > 1 and (num_workers or os.cpu_count() or 1) > 1 else "serial"
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if todo:
        if parallel == "ray":
            import ray

            from dcnn_flame.ray_utils import init_ray

            init_ray()
            workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            it = _iter_ray(todo, job, max(1, min(workers, len(todo))), progress, stall_timeout_s)
        elif parallel == "process":
            workers = num_workers or os.cpu_count() or 1
            it = _iter_process(todo, job, max(1, min(workers, len(todo))))
        else:
            it = _iter_serial(todo, job)
        images = 0
        with tqdm(total=len(todo), unit="shard", desc="synthetic shards", disable=not progress) as bar:
            for rec in it:
                records.append(rec)
                images += int(rec.get("images", 0))
                bar.update(1)
                bar.set_postfix(images=images, ips=f"{images / max(time.perf_counter() - t0, 1e-9):.1f}/s")
    seconds = time.perf_counter() - t0
    errors = [r for r in records if r.get("status") == "error"]

    present = {s.name for s in specs if storage.exists(shard_uri(out, s), storage_options)}
    rows: dict[str, int] = {}
    for s in specs:
        if s.name in present:
            rows[s.split] = rows.get(s.split, 0) + s.count
    manifest = {
        **settings, "fingerprint": fingerprint, "complete": len(present) == len(specs),
        "rows": dict(sorted(rows.items())), "images": sum(rows.values()) * int(num_views),
        "shards": [{"path": s.path, "split": s.split, "rows": s.count, "identities": [s.start, s.start + s.count]}
                   for s in specs if s.name in present],
    }
    write_if_changed(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1, sort_keys=True).encode(),
                     storage_options)
    if contact_sheet_samples > 0:
        png = contact_sheet_png(out, specs, contact_sheet_samples, storage_options)
        if png is not None:
            write_if_changed(storage.join(out, "contact_sheet.png"), png, storage_options)
    written = [r for r in records if r.get("status") == "written"]
    images_written = sum(int(r["images"]) for r in written)
    run = SyntheticRun(
        output_uri=out, manifest=manifest, shards_total=len(specs), shards_written=len(written),
        shards_skipped=len(specs) - len(todo) + sum(r.get("status") == "skipped" for r in records),
        rows_written=sum(int(r["rows"]) for r in written), images_written=images_written, seconds=seconds,
        images_per_s=images_written / seconds if written and seconds > 0 else 0.0, records=records)
    if errors:
        raise RuntimeError(f"{len(errors)} synthetic shard(s) failed under {out} (first: {errors[0].get('shard')}: "
                           f"{errors[0].get('error')}); rerun the same command to retry them")
    return run


def prepare(cfg) -> Any:
    """``jobs/prepare.py source=synthetic``: write the world of ``cfg.synthetic`` with Ray.

    Uses cfg.seed, rows_per_shard, num_views, val_fraction, num_workers, progress,
    contact_sheet_samples, storage, ray and output_uri (default ``<storage.uri>/prepared/synthetic``).
    Returns the ingest's :class:`~dcnn_flame.data.ingest.PrepareSummary`.
    """
    from dcnn_flame.data.ingest import PrepareSummary, output_uri_of, storage_options
    from dcnn_flame.ray_utils import init_ray

    init_ray(cfg.ray)
    out = output_uri_of(cfg)
    t0 = time.perf_counter()
    run = write_synthetic_shards(
        out, num_identities=cfg.synthetic.num_identities, rows_per_shard=cfg.rows_per_shard, seed=cfg.seed,
        num_views=cfg.num_views, val_fraction=cfg.val_fraction, storage_options=storage_options(cfg),
        num_workers=cfg.num_workers, world=cfg.synthetic, parallel="ray", progress=cfg.progress,
        contact_sheet_samples=cfg.contact_sheet_samples, stall_timeout_s=cfg.stall_timeout_s)
    summary = PrepareSummary(
        output_uri=out, shards_total=run.shards_total, shards_written=run.shards_written,
        shards_skipped=run.shards_skipped, shards_failed=0, rows=sum(run.manifest["rows"].values()),
        rows_written=run.rows_written, images=run.images_written, images_ok=run.images_written, failures={},
        seconds=run.seconds, plan_seconds=time.perf_counter() - t0 - run.seconds,
        images_per_s=run.images_per_s, landmarks="ground_truth", detector="none",
        rows_per_split=dict(run.manifest["rows"]))
    print(summary.line())
    return summary
