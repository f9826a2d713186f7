"""The ingest job (driver): plan the shards, write them with Ray Data, report.

``run(cfg)`` for source "vggface2" or "characters":

1. index the input (vggface2.py / characters.py) and plan (plan.py): group views, split by
   identity, assign samples to deterministically named shards;
2. resolve once what the workers use: FAN or metadata landmarks, which face detector
   (landmarks.py), and print it;
3. ``plan.json`` guards the output prefix: rerunning with a different plan or settings into
   the same prefix is refused instead of mixing shards;
4. shards whose done record exists are skipped; the rest go through a Ray Data dataset of
   shard plans -> ``ShardWriter`` actors (shard_writer.py), with a tqdm bar on the driver;
5. ``failures.parquet`` (FAILURE_SCHEMA, deduplicated), ``manifest.json`` (counts) and
   ``contact_sheet.png`` are rewritten only when their bytes change, so a rerun that has
   nothing to do writes nothing.

Output layout (``<out>`` = cfg.output_uri)::

    <out>/shards/<split>/<source>-<split>-00000.parquet   training reads <out>/shards
    <out>/_done/<shard>.json        per-shard commit records (rows, failures)
    <out>/plan.json  <out>/manifest.json  <out>/failures.parquet  <out>/contact_sheet.png

Source "synthetic" is produced by ``dcnn_flame.data.synthetic.prepare(cfg)`` (rendered, not
decoded); ``run`` hands it over when that module exists.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dcnn_flame.config import PrepareConfig
from dcnn_flame.data import landmarks as L
from dcnn_flame.data.plan import Plan, build_plan
from dcnn_flame.data.schema import FAILURE_SCHEMA, SCHEMA_VERSION, decode_image
from dcnn_flame.data.shard_writer import ShardWriter, WorkerSettings, shard_uri
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

logger = logging.getLogger(__name__)

SOURCES = ("vggface2", "characters", "synthetic")


@dataclass
class PrepareSummary:
    """What a run did (also printed)."""

    output_uri: str
    shards_total: int
    shards_written: int
    shards_skipped: int
    shards_failed: int
    rows: int
    """Rows in all shards of the plan (written now or before)."""
    rows_written: int
    """Rows written by this run."""
    images: int
    """Input images processed by this run (ok or failed)."""
    images_ok: int
    """Of those, images that became aligned views."""
    failures: dict[str, int]
    """Failure rows by reason (whole output, not only this run)."""
    seconds: float
    """Wall time of the shard processing (excludes planning and Ray's start-up; includes the
    shard writers' start-up)."""
    plan_seconds: float
    images_per_s: float
    landmarks: str
    detector: str
    rows_per_split: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        fails = sum(self.failures.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.rows_per_split.items()))
        return (f"[prepare] {self.output_uri}: {self.shards_written} shards written, {self.shards_skipped} "
                f"skipped, {self.shards_failed} failed of {self.shards_total}; {self.rows} rows ({splits}); "
                f"this run {self.rows_written} rows from {self.images} images ({self.images_ok} ok) in "
                f"{self.seconds:.1f} s = {self.images_per_s:.1f} images/s (planning {self.plan_seconds:.1f} s); "
                f"failures {fails}" + (f" ({by})" if by else ""))


def storage_options(cfg: PrepareConfig) -> StorageOptions:
    return StorageOptions(endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region, anon=cfg.storage.anon)


def output_uri_of(cfg: PrepareConfig) -> str:
    return storage.resolve(cfg.output_uri or storage.join(cfg.storage.root(), "prepared", storage.safe_key(cfg.source)))


def index_input(cfg: PrepareConfig, options: StorageOptions):
    """The image index DataFrame of ``cfg.source``."""
    if cfg.source == "vggface2":
        from dcnn_flame.data.vggface2 import index_vggface2

        return index_vggface2(cfg.input_uri, options, folders=tuple(cfg.folders), index=cfg.index,
                              max_identities=cfg.max_identities)
    if cfg.source == "characters":
        from dcnn_flame.data.characters import index_characters

        return index_characters(cfg.input_uri, options, labels_uri=cfg.labels_uri, au_scale=cfg.au_scale,
                                max_identities=cfg.max_identities)
    raise ValueError(f"source must be one of {SOURCES}, got {cfg.source!r}")


def resolve_settings(cfg: PrepareConfig, output_uri: str, options: StorageOptions
                     ) -> tuple[WorkerSettings, str, str]:
    """WorkerSettings plus the landmark and detector messages (printed and in the manifest)."""
    if cfg.landmarks not in ("auto", "fan", "metadata"):
        raise ValueError(f"landmarks must be 'auto', 'fan' or 'metadata', got {cfg.landmarks!r}")
    if cfg.align not in ("box", "landmarks5"):
        raise ValueError(f"align must be 'box' or 'landmarks5', got {cfg.align!r}")
    if str(cfg.image_format).lower() not in ("jpeg", "jpg", "png"):
        raise ValueError(f"image_format must be 'jpeg' (or 'jpg') or 'png', got {cfg.image_format!r}")
    if not 1 <= int(cfg.jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {cfg.jpeg_quality}")
    weights = L.find_fan_weights(cfg.torch_hub_dir)
    if cfg.landmarks == "fan" and not weights.has_fan:
        raise FileNotFoundError(
            f"landmarks=fan, but face-alignment's 2D FAN weights are not at "
            f"{os.path.join(weights.checkpoints_dir, L.FAN_2D_FILE)}: copy {L.FAN_2D_FILE} (from {L.FAN_2D_URL}) "
            f"there or point torch_hub_dir at the folder above its checkpoints/ (docs/ingest.md), or run with "
            f"landmarks=auto (FAN when found, else the 5 metadata landmarks) or landmarks=metadata")
    use_fan = cfg.landmarks != "metadata" and weights.has_fan
    lmk_msg = weights.describe() if cfg.landmarks != "metadata" else "landmarks=metadata: FAN not used"
    det = L.resolve_detector(cfg.detector, weights, cfg.cascade_path)
    settings = WorkerSettings(
        source=cfg.source, output_uri=output_uri, storage=options, num_views=cfg.num_views,
        short_identity_policy=cfg.short_identity_policy, margin=cfg.margin, align=cfg.align,
        image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality, min_image_size=cfg.min_image_size,
        max_image_pixels=cfg.max_image_pixels, max_image_bytes=cfg.max_image_bytes,
        landmarks="fan" if use_fan else "metadata", fan_path=weights.fan if use_fan else None,
        detector=det.name, detector_path=det.path, center_crop_fraction=cfg.center_crop_fraction,
        device=cfg.device)
    return settings, lmk_msg, det.message


def write_if_changed(uri: str, data: bytes, options: StorageOptions) -> bool:
    """Atomically write ``data`` unless ``uri`` already holds exactly these bytes."""
    if storage.exists(uri, options) and storage.read_bytes(uri, options) == data:
        return False
    storage.atomic_write_bytes(uri, data, options)
    return True


def _guard_plan(output_uri: str, fingerprint: str, info: dict, options: StorageOptions) -> None:
    uri = storage.join(output_uri, "plan.json")
    if storage.exists(uri, options):
        old = json.loads(storage.read_bytes(uri, options))
        written = (storage.list_files(storage.join(output_uri, "_done"), options)
                   or storage.list_files(storage.join(output_uri, "shards"), options, suffixes=(".parquet",)))
        if old.get("fingerprint") != fingerprint and written:  # shards of another plan (or of source=synthetic)
            raise ValueError(
                f"{output_uri} already holds shards of a different plan (fingerprint {old.get('fingerprint', '?')[:12]} "
                f"!= {fingerprint[:12]}: the input, the grouping/split/shard settings or the landmark backend "
                f"changed). Use a new output_uri, or delete {output_uri} to start over.")
    write_if_changed(uri, json.dumps({"fingerprint": fingerprint, **info}, sort_keys=True, indent=1).encode(),
                     options)


def _done_records(output_uri: str, names: set[str], options: StorageOptions) -> dict[str, dict]:
    files = storage.list_files(storage.join(output_uri, "_done"), options, suffixes=(".json",))
    wanted = [f for f in files if f.rsplit("/", 1)[-1][:-5] in names]
    if not wanted:
        return {}
    fs, _ = storage.get_fs(wanted[0], options)
    got = fs.cat([fs._strip_protocol(f) for f in wanted])
    out = {}
    for data in got.values():
        rec = json.loads(data)
        rec["status"] = "skipped"
        out[rec["shard"]] = rec
    return out


def _run_shards(plan: Plan, todo: list[str], settings: WorkerSettings, cfg: PrepareConfig) -> dict[str, dict]:
    import ray
    from tqdm import tqdm

    from dcnn_flame.ray_utils import init_ray

    init_ray(cfg.ray)
    by_name = {s.name: s for s in plan.shards}
    cpus = ray.cluster_resources().get("CPU", 1.0)
    workers = cfg.num_workers or max(1, int(cpus // max(cfg.num_cpus_per_worker, 1e-6)))
    workers = max(1, min(workers, len(todo)))
    items = [{"name": n, "split": by_name[n].split, "plan": by_name[n].to_ipc()} for n in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    kwargs: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_worker}
    if cfg.num_gpus_per_worker:
        kwargs["num_gpus"] = cfg.num_gpus_per_worker
    ds = ds.map_batches(ShardWriter, batch_size=1, fn_constructor_kwargs={"settings": settings},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
                        **kwargs)
    # A shard with FAN on CPU can take minutes with nothing else moving: Ray Data's
    # no-progress guard (2 min under our CI env) must not mistake that for a hang.
    ds.context.execution_no_progress_timeout_s = float(cfg.stall_timeout_s)
    ds.context.enable_progress_bars = bool(cfg.progress)
    records: dict[str, dict] = {}
    t0 = time.perf_counter()
    images = 0
    with tqdm(total=len(todo), unit="shard", desc=f"prepare {cfg.source}", disable=not cfg.progress) as bar:
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            records[rec["shard"]] = rec
            images += int(rec.get("images", 0))
            bar.update(1)
            bar.set_postfix(images=images, ips=f"{images / max(time.perf_counter() - t0, 1e-9):.1f}/s")
    return records


def _failures_table(plan: Plan, records: dict[str, dict]) -> pa.Table:
    rows = list(plan.failures)
    for rec in records.values():
        rows.extend(rec.get("failures", []))
    seen, unique = set(), []
    for r in rows:
        k = (r["input_uri"], r["stage"], r["reason"])
        if k not in seen:
            seen.add(k)
            unique.append({c: str(r.get(c, "")) for c in FAILURE_SCHEMA.names})
    unique.sort(key=lambda r: (r["input_uri"], r["stage"], r["reason"]))
    return pa.Table.from_pylist(unique, schema=FAILURE_SCHEMA)


def _contact_sheet(output_uri: str, records: dict[str, dict], plan: Plan, n_samples: int, num_views: int,
                   options: StorageOptions) -> Optional[bytes]:
    from dcnn_flame.data.contact_sheet import contact_sheet

    images, lmks, labels = [], [], []
    taken = 0
    order = sorted(plan.shards, key=lambda s: (s.split != "train", s.split, s.index))
    for s in order:
        rec = records.get(s.name)
        if not rec or rec.get("status") == "error" or not rec.get("rows"):
            continue
        fs, path = storage.get_fs(shard_uri(output_uri, s.split, s.name), options)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["sample_id", "image", "landmarks", "landmarks5"])
        for row in table.slice(0, n_samples - taken).to_pylist():
            taken += 1
            for v in range(len(row["image"])):
                img = decode_image(row["image"][v])
                l68 = np.asarray(row["landmarks"][v], dtype=np.float64).reshape(-1, 2)
                l5 = np.asarray(row["landmarks5"][v], dtype=np.float64).reshape(-1, 2)
                pts = np.full((68, 2), np.nan)
                if np.isfinite(l68).all():
                    pts = l68
                else:
                    pts[:5] = l5
                images.append(img)
                lmks.append(pts)
                labels.append(row["sample_id"].rsplit("/", 2)[-2] if v == 0 else "")
        if taken >= n_samples:
            break
    if not images:
        return None
    sheet = contact_sheet(np.stack(images), np.stack(lmks), cols=max(num_views, 1) if num_views > 1 else 8,
                          labels=labels)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _distinct_ok(records: list[dict]) -> int:
    """Distinct images in the rows of these shards (their records' ``ok_uris``; a record of an
    older version without them counts its ``images_ok``)."""
    uris: set[str] = set()
    older = 0
    for r in records:
        if "ok_uris" in r:
            uris.update(r["ok_uris"])
        else:
            older += int(r.get("images_ok", 0))
    return len(uris) + older


def run(cfg: PrepareConfig) -> PrepareSummary:
    """Run the ingest described by ``cfg`` (see the module docstring); returns the summary."""
    if cfg.source == "synthetic":
        try:
            from dcnn_flame.data import synthetic
        except ImportError as exc:
            raise NotImplementedError("source=synthetic needs dcnn_flame.data.synthetic (the procedural "
                                      "generator), which is not installed in this checkout") from exc
        return synthetic.prepare(cfg)
    if cfg.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {cfg.source!r}")
    t_start = time.perf_counter()
    options = storage_options(cfg)
    out = output_uri_of(cfg)
    settings, lmk_msg, det_msg = resolve_settings(cfg, out, options)
    print(f"[prepare] landmarks: {lmk_msg}")
    print(f"[prepare] detector (images without a metadata box): {det_msg}")

    index = index_input(cfg, options)
    if len(index) == 0:
        raise FileNotFoundError(f"no images found under {cfg.input_uri!r} for source={cfg.source} "
                                f"(expected {'<root>/train/<identity>/*.jpg' if cfg.source == 'vggface2' else 'PNG/JPG/WebP files'})")
    plan = build_plan(index, source=cfg.source, num_views=cfg.num_views, policy=cfg.short_identity_policy,
                      val_fraction=cfg.val_fraction, seed=cfg.seed, rows_per_shard=cfg.rows_per_shard)
    fingerprint = plan.fingerprint(settings.content_settings())
    _guard_plan(out, fingerprint, {"source": cfg.source, "input_uri": storage.resolve(cfg.input_uri),
                                   "settings": settings.content_settings()}, options)
    names = [s.name for s in plan.shards]
    records = _done_records(out, set(names), options)
    todo = [n for n in names if n not in records]
    plan_seconds = time.perf_counter() - t_start
    print(f"[prepare] {plan.num_images} images -> {sum(plan.samples_per_split().values())} samples in "
          f"{len(names)} shards ({len(records)} already done); planned in {plan_seconds:.1f} s")

    if todo:
        from dcnn_flame.ray_utils import init_ray

        # Started before the clock: images/s measures the shard work, not Ray's start-up.
        init_ray(cfg.ray)
    t0 = time.perf_counter()
    new = _run_shards(plan, todo, settings, cfg) if todo else {}
    seconds = time.perf_counter() - t0
    records.update(new)

    failures = _failures_table(plan, records)
    buf = io.BytesIO()
    pq.write_table(failures, buf)
    write_if_changed(storage.join(out, "failures.parquet"), buf.getvalue(), options)

    done = [records[n] for n in names if n in records and records[n].get("status") != "error"]
    rows_per_split: dict[str, int] = collections.Counter()
    for r in done:
        rows_per_split[r["split"]] += int(r["rows"])
    by_reason = dict(collections.Counter(failures.column("reason").to_pylist()))
    manifest = {
        "schema_version": SCHEMA_VERSION, "source": cfg.source, "input_uri": storage.resolve(cfg.input_uri),
        "fingerprint": fingerprint, "num_views": cfg.num_views, "landmarks": settings.landmarks,
        "landmarks_note": lmk_msg, "detector": settings.detector, "detector_note": det_msg,
        "images_planned": plan.num_images, "samples_planned": plan.samples_per_split(),
        "rows": dict(sorted(rows_per_split.items())), "images_ok": _distinct_ok(done),
        "failures": dict(sorted(by_reason.items())), "complete": len(done) == len(names),
        "shards": [{"path": records[n]["path"], "split": records[n]["split"], "rows": records[n]["rows"]}
                   for n in names if n in records and records[n].get("status") != "error"],
    }
    write_if_changed(storage.join(out, "manifest.json"), json.dumps(manifest, indent=1, sort_keys=True).encode(),
                     options)
    if cfg.contact_sheet_samples > 0:
        png = _contact_sheet(out, records, plan, cfg.contact_sheet_samples, cfg.num_views, options)
        if png is not None:
            write_if_changed(storage.join(out, "contact_sheet.png"), png, options)

    statuses = collections.Counter(r.get("status") for r in new.values())
    written = [r for r in new.values() if r.get("status") == "written"]
    # Distinct images: with short_identity_policy=pad one image may fill views of samples in
    # several shards (each shard decodes it again, but it is one image of the input).
    by_name = {s.name: s for s in plan.shards}
    images = len({u for r in written for u in by_name[r["shard"]].table.column("uri").to_pylist()})
    summary = PrepareSummary(
        output_uri=out, shards_total=len(names), shards_written=statuses.get("written", 0),
        shards_skipped=len(names) - len(todo) + statuses.get("skipped", 0), shards_failed=statuses.get("error", 0),
        rows=sum(rows_per_split.values()), rows_written=sum(int(r["rows"]) for r in new.values()
                                                           if r.get("status") == "written"),
        images=images, images_ok=_distinct_ok(written),
        failures=by_reason, seconds=seconds, plan_seconds=plan_seconds,
        images_per_s=images / seconds if seconds > 0 and images else 0.0,
        landmarks=settings.landmarks, detector=settings.detector, rows_per_split=dict(rows_per_split))
    print(summary.line())
    if summary.shards_failed:
        print(f"[prepare] {summary.shards_failed} shard(s) failed (see failures.parquet, stage 'write'); "
              f"rerun the same command to retry them.")
    return summary
