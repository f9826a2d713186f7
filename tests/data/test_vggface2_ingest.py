"""VGGFace2-shaped folder -> Parquet shards, from a local path and from a real S3-compatible
server; shards readable by ray.data.read_parquet and pyarrow with the schema's columns;
alignment checked against the known face geometry; reruns write nothing."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from faces import five_from_68, write_vggface2_tree
from ingest_fixtures import ray_local_s3_env, ray_s3  # noqa: F401  (fixtures)

from dcnn_flame.config import PrepareConfig, StorageConfig
from dcnn_flame.data import align as A
from dcnn_flame.data.schema import FAILURE_SCHEMA, SAMPLE_SCHEMA, check_table, decode_image

TREE = {"train": {"n000002": 5, "n000003": 3, "n000004": 4, "n000005": 4}, "test": {"n000001": 4}}
MARGIN = 0.12


def _make_tree(root):
    truth = write_vggface2_tree(root, TREE, seed=7)
    bad = root / "train" / "n000004" / "0004_01.jpg"
    bad.write_bytes(bad.read_bytes()[:600])  # a truncated download (its CSV rows stay)
    return truth, str(bad)


def _cfg(input_uri, output_uri, tmp_path, **kw):
    return PrepareConfig(source="vggface2", input_uri=input_uri, output_uri=output_uri, rows_per_shard=2,
                         val_fraction=0.25, margin=MARGIN, torch_hub_dir=str(tmp_path / "no_hub"),
                         progress=False, stall_timeout_s=120, contact_sheet_samples=4, **kw)


def _snapshot(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            out[p] = (st.st_mtime_ns, st.st_size)
    return out


def _check_rows(rows, truth, bad_uri):
    for row in rows:
        assert row["num_views"] == 4 and len(row["image"]) == 4
        assert bad_uri not in row["image_uri"]
        assert row["landmark_source"] == ["metadata5"] * 4
        for v in range(4):
            uri = row["image_uri"][v]
            folder = "test" if row["split"] == "test" else "train"
            t = truth[f"{folder}/{row['identity']}/{os.path.splitext(os.path.basename(uri))[0]}"]
            x, y, w, h = t["box"]
            m = A.box_alignment(np.array([x, y, x + w, y + h], dtype=float), MARGIN, 224)
            expected5 = A.transform_points(m, five_from_68(t["landmarks"]))
            got5 = np.array(row["landmarks5"][v]).reshape(5, 2)
            np.testing.assert_allclose(got5, expected5, atol=0.01)
            assert np.isnan(row["landmarks"][v]).all()
            np.testing.assert_allclose(row["crop_box"][v], A.crop_box(m, 224), atol=1e-3)
            img = decode_image(row["image"][v])
            assert img.shape == (224, 224, 3)
            for ex, ey in got5[:2]:  # the drawn pupils are dark: image and landmarks agree
                patch = img[int(ey) - 1:int(ey) + 2, int(ex) - 1:int(ex) + 2]
                assert patch.mean() < 110, (uri, patch.mean())
            assert np.isnan(row["au"][v]).all() and row["expression_class"][v] == -1


@pytest.mark.ray
@pytest.mark.slow
def test_local_ingest_rerun_and_resume(ray_local_s3_env, tmp_path, capsys):  # noqa: F811
    from dcnn_flame.data.ingest import run

    truth, bad = _make_tree(tmp_path / "vgg")
    out = tmp_path / "out"
    cfg = _cfg(str(tmp_path / "vgg"), str(out), tmp_path)
    s = run(cfg)
    printed = capsys.readouterr().out
    assert "FAN weights not found" in printed and "images/s" in printed
    assert s.failures == {"truncated": 1}
    # 5 -> 2 samples, 3 -> 1, 4 -> 1 (3 good views + 1 repeated), 4 -> 1; test 4 -> 1
    assert s.rows == 6 and s.rows_per_split["test"] == 1 and s.rows_per_split["val"] >= 1
    # distinct input images (a view padded from another shard's sample is read again there, but
    # is one image): 20 in the tree, 19 of them in the shards' rows
    assert s.images == 20 and s.images_ok == 19 and s.shards_written == s.shards_total

    files = sorted(out.glob("shards/*/*.parquet"))
    assert [f.name for f in files] == sorted(f"vggface2-{sp}-{i:05d}.parquet" for sp, n in
                                             s.rows_per_split.items() for i in range(-(-n // 2)))
    rows = []
    for f in files:
        table = pq.read_table(f)
        check_table(table, str(f))
        assert table.schema.names == SAMPLE_SCHEMA.names
        assert table.schema.equals(SAMPLE_SCHEMA, check_metadata=False)
        rows.extend(table.to_pylist())
    assert len({r["sample_id"] for r in rows}) == 6
    _check_rows(rows, truth, bad)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["identity"], set()).add(r["split"])
    assert by_id["n000001"] == {"test"} and all(len(v) == 1 for v in by_id.values())
    padded = [r for r in rows if r["identity"] == "n000004"][0]
    assert len(set(padded["image_uri"])) == 3  # the truncated view replaced by a good one

    import ray

    ds = ray.data.read_parquet(str(out / "shards"))
    assert ds.count() == 6
    assert set(SAMPLE_SCHEMA.names) <= set(ds.schema().names)

    fail = pq.read_table(out / "failures.parquet")
    assert fail.schema.equals(FAILURE_SCHEMA, check_metadata=False)
    assert fail.to_pylist() == [{"input_uri": bad, "identity": "n000004", "stage": "decode", "reason": "truncated",
                                 "detail": fail.column("detail")[0].as_py()}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["failures"] == {"truncated": 1} and manifest["images_ok"] == s.images_ok
    assert sum(manifest["rows"].values()) == 6 and manifest["landmarks"] == "metadata"
    from PIL import Image

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (4 * 226 + 2, 4 * 226 + 2)

    # rerun: nothing new, nothing rewritten
    before = _snapshot(out)
    s2 = run(cfg)
    assert s2.shards_written == 0 and s2.shards_skipped == s.shards_total and s2.images == 0
    assert s2.rows == 6 and s2.failures == {"truncated": 1}
    assert _snapshot(out) == before

    # an interrupted run: one shard missing its commit record is redone, byte-identical
    victim = files[0]
    data = victim.read_bytes()
    (out / "_done" / victim.name.replace(".parquet", ".json")).unlink()
    victim.unlink()
    s3 = run(cfg)
    assert s3.shards_written == 1 and victim.read_bytes() == data

    # a different plan into the same prefix is refused, not mixed
    with pytest.raises(ValueError, match="different plan"):
        run(_cfg(str(tmp_path / "vgg"), str(out), tmp_path, seed=1))


@pytest.mark.ray
@pytest.mark.slow
def test_s3_ingest(ray_s3, tmp_path):  # noqa: F811
    import pyarrow.fs as pafs
    import ray
    import s3fs

    from dcnn_flame.data.ingest import run
    from dcnn_flame.io.storage import get_fs

    _, (bucket, opts) = ray_s3
    truth, bad = _make_tree(tmp_path / "vgg")
    fs, _ = get_fs(bucket, opts)
    fs.put(str(tmp_path / "vgg") + "/", f"{bucket[5:]}/data/vgg/", recursive=True)
    cfg = _cfg(f"{bucket}/data/vgg", f"{bucket}/prepared/vgg", tmp_path,
               storage=StorageConfig(uri=bucket, endpoint_url=opts.endpoint_url))
    s = run(cfg)
    assert s.rows == 6 and s.failures == {"truncated": 1}
    s3_bad = f"{bucket}/data/vgg/" + os.path.relpath(bad, tmp_path / "vgg")

    paths = sorted(fs.find(f"{bucket[5:]}/prepared/vgg/shards"))
    assert paths and all(p.endswith(".parquet") for p in paths)
    rows = []
    for p in paths:
        with fs.open(p, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
        check_table(table, p)
        rows.extend(table.to_pylist())
    local_truth = {k: v for k, v in truth.items()}
    for r in rows:  # image_uri points into the bucket
        assert all(u.startswith(f"{bucket}/data/vgg/") for u in r["image_uri"])
        r["image_uri"] = [str(tmp_path / "vgg" / u[len(f"{bucket}/data/vgg/"):]) for u in r["image_uri"]]
    _check_rows(rows, local_truth, bad)

    reader_fs = pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": opts.endpoint_url})))
    ds = ray.data.read_parquet(paths, filesystem=reader_fs)
    assert ds.count() == 6 and set(SAMPLE_SCHEMA.names) <= set(ds.schema().names)
    with fs.open(f"{bucket[5:]}/prepared/vgg/failures.parquet", "rb") as f:
        assert pq.read_table(io.BytesIO(f.read())).column("input_uri").to_pylist() == [s3_bad]

    s2 = run(cfg)
    assert s2.shards_written == 0 and s2.images == 0 and s2.rows == 6


def _serial_shards(index, tmp_path, policy: str, rows_per_shard: int, **kw):
    """build_plan + write_shard for every shard in this process (what the Ray job runs)."""
    from dcnn_flame.data.plan import build_plan
    from dcnn_flame.data.shard_writer import ShardTools, WorkerSettings, write_shard

    settings = WorkerSettings(
        source="vggface2", output_uri=str(tmp_path / "out"), storage=None, num_views=4, short_identity_policy=policy,
        margin=MARGIN, align="box", image_format="png", jpeg_quality=95, min_image_size=8,
        max_image_pixels=10 ** 7, max_image_bytes=10 ** 7, landmarks="metadata", fan_path=None,
        detector="center", detector_path=None, center_crop_fraction=0.8, device="cpu", **kw)
    plan = build_plan(index, source="vggface2", num_views=4, policy=policy, val_fraction=0.0, seed=0,
                      rows_per_shard=rows_per_shard)
    tools = ShardTools(settings)
    return plan, [write_shard(sh.name, sh.split, sh.table, settings, tools) for sh in plan.shards]


def test_drop_policy_lists_every_image_of_a_dropped_sample(tmp_path):
    """short_identity_policy=drop: a sample that loses a view at decode time is dropped, and its
    usable images get failure rows of their own (they were in no shard and no row)."""
    from dcnn_flame.data.vggface2 import index_vggface2

    truth = write_vggface2_tree(tmp_path / "vgg", {"train": {"n000002": 8, "n000003": 3}}, seed=3)
    index = index_vggface2(str(tmp_path / "vgg"), folders=("train",))
    bad = str(truth["train/n000002/0002_01"]["path"])
    with open(bad, "r+b") as f:
        f.truncate(600)
    plan, records = _serial_shards(index, tmp_path, "drop", rows_per_shard=1)
    in_rows = set()
    for rec in records:
        in_rows |= set(pq.read_table(tmp_path / "out" / rec["path"]).column("image_uri").combine_chunks()
                       .flatten().to_pylist())
    failed = {f["input_uri"]: f for rec in records for f in rec["failures"]} | {f["input_uri"]: f for f in plan.failures}
    everything = set(index["uri"])
    assert in_rows | set(failed) == everything and not in_rows & set(failed)  # each image: a row or a shard
    assert failed[bad]["reason"] == "truncated"
    dropped = [u for u, f in failed.items() if f["stage"] == "group" and "n000002" in u]
    assert len(dropped) == 3 and all("sample vggface2/train/n000002/" in failed[u]["detail"] for u in dropped)
    assert len([u for u, f in failed.items() if "n000003" in u and f["reason"] == "too_few_views"]) == 3  # plan
    assert sum(r["images_ok"] for r in records) == len(in_rows) == 4
    assert sorted(u for r in records for u in r["ok_uris"]) == sorted(in_rows)


def test_padded_views_count_once(tmp_path):
    from dcnn_flame.data.ingest import _distinct_ok
    from dcnn_flame.data.vggface2 import index_vggface2

    write_vggface2_tree(tmp_path / "vgg", {"train": {"n000002": 5}}, seed=4)
    index = index_vggface2(str(tmp_path / "vgg"), folders=("train",))
    plan, records = _serial_shards(index, tmp_path, "pad", rows_per_shard=1)
    assert len(records) == 2 and sum(r["images_ok"] for r in records) == 8  # 4 + 4 views, per shard
    assert _distinct_ok(records) == 5  # but 5 images
    older = [{k: v for k, v in r.items() if k != "ok_uris"} for r in records]  # records of older versions
    assert _distinct_ok(older) == 8


def test_an_unknown_size_is_read_only_up_to_max_image_bytes(tmp_path):
    import fsspec

    from dcnn_flame.data.shard_writer import _Failure, _read

    fs = fsspec.filesystem("file")
    p = tmp_path / "big.jpg"
    p.write_bytes(bytes(range(256)) * 20)  # 5,120 bytes
    with pytest.raises(_Failure) as e:
        _read(fs, str(p), None, 1000)  # the metadata index: size unknown
    assert (e.value.stage, e.value.reason) == ("read", "too_large")
    assert _read(fs, str(p), None, 5120) == p.read_bytes()  # exactly the limit is fine
    with pytest.raises(_Failure) as e:
        _read(fs, str(p), 5120, 1000)
    assert e.value.reason == "too_large" and "not read" in e.value.detail


def test_settings_are_checked_before_any_work(tmp_path):
    from dcnn_flame.data.ingest import resolve_settings

    def settings(**kw):
        cfg = _cfg(str(tmp_path), str(tmp_path / "out"), tmp_path, **kw)
        return resolve_settings(cfg, str(tmp_path / "out"), None)

    with pytest.raises(ValueError, match="image_format must be 'jpeg'.*got 'webp'"):
        settings(image_format="webp")
    with pytest.raises(ValueError, match="jpeg_quality must be in 1..100, got 0"):
        settings(jpeg_quality=0)
    assert settings(image_format="PNG")[0].image_format == "PNG"
    with pytest.raises(FileNotFoundError) as e:
        settings(landmarks="fan")
    msg = str(e.value)
    assert "2DFAN4" in msg and str(tmp_path / "no_hub") in msg and "landmarks=auto" in msg
    assert "using the 5 metadata landmarks" not in msg  # the job stops: no fallback is used


def test_an_image_ingest_into_synthetic_shards_is_refused(tmp_path):
    from dcnn_flame.data.ingest import _guard_plan

    out = tmp_path / "out"
    (out / "shards" / "train").mkdir(parents=True)
    (out / "shards" / "train" / "synthetic-train-00000.parquet").write_bytes(b"PAR1")
    (out / "plan.json").write_text(json.dumps({"fingerprint": "synthetic-plan"}))
    with pytest.raises(ValueError, match="already holds shards of a different plan"):
        _guard_plan(str(out), "vggface2-plan", {}, None)
    assert json.loads((out / "plan.json").read_text())["fingerprint"] == "synthetic-plan"  # untouched


class _FlakyFs:
    """A filesystem whose reads fail ``fails`` times with ``exc``, then return ``data``."""

    def __init__(self, fails: int, exc: BaseException, data: bytes = b"image"):
        self.fails, self.exc, self.data, self.calls = fails, exc, data, 0

    def cat_file(self, path, start=None, end=None):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc
        return self.data[start:end]

    def size(self, path):
        return len(self.data)


def test_transient_read_errors_are_retried_before_they_become_a_failure_row(monkeypatch):
    """A read failure is committed with its shard (a rerun skips the shard), so an object
    store's timeout must not fail an image at the first try."""
    from dcnn_flame.data import shard_writer as sw

    monkeypatch.setattr(sw, "READ_BACKOFF_S", 0.0)
    fs = _FlakyFs(2, TimeoutError("read timed out"))
    assert sw._read(fs, "b/x.jpg", 5, 100) == b"image" and fs.calls == 3
    fs = _FlakyFs(5, ConnectionResetError("reset by peer"))
    with pytest.raises(sw._Failure) as e:
        sw._read(fs, "b/x.jpg", None, 100)
    assert e.value.reason == "read_error" and "(3 attempts)" in e.value.detail and fs.calls == 3
    for permanent, reason in ((PermissionError("denied"), "read_error"), (FileNotFoundError("gone"), "missing")):
        fs = _FlakyFs(5, permanent)
        with pytest.raises(sw._Failure) as e:
            sw._read(fs, "b/x.jpg", None, 100)
        assert e.value.reason == reason and fs.calls == 1  # no retry


def test_unknown_sizes_on_s3_one_ranged_read(s3_bucket):
    """Manifest inputs (no size): one ranged GET bounded by max_image_bytes; an empty object
    (which S3 answers a range with 416) is read as empty, for decode/empty."""
    from dcnn_flame.data.shard_writer import _Failure, _read
    from dcnn_flame.io import storage

    bucket, options = s3_bucket
    fs, _ = storage.get_fs(bucket, options)
    root = bucket.split("://", 1)[1]
    fs.pipe_file(f"{root}/empty.png", b"")
    fs.pipe_file(f"{root}/ten.png", b"0123456789")
    assert _read(fs, f"{root}/empty.png", None, 100) == b""
    assert _read(fs, f"{root}/ten.png", None, 10) == b"0123456789"
    with pytest.raises(_Failure) as e:
        _read(fs, f"{root}/ten.png", None, 9)
    assert (e.value.stage, e.value.reason) == ("read", "too_large")
    with pytest.raises(_Failure) as e:
        _read(fs, f"{root}/nothing.png", None, 9)
    assert e.value.reason == "missing"
