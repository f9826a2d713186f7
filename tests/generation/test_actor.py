"""The decode stage and the reconstruction actor without Ray: the raw crops the stages pass,
the actor's write threads (same outputs as writing one character after the other; one
character's error stays its own) and write_stage=tasks (the actor hands characters over, the
write tasks write the same files)."""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_helpers import job_config  # noqa: E402

_TIMING = ["reconstruct_ms", "retarget_ms", "write_ms", "created_at"]


def _decode_settings():
    from dcnn_flame.generation.pipeline import decode_settings, storage_options

    cfg = job_config()
    return decode_settings(cfg, storage_options(cfg), "center")[0]


def test_crops_are_the_ingest_crops_raw(library):
    """The decode stage's raw crop is pixel for pixel the ingest's (lossless PNG) crop, and the
    actor's tensor is that crop (resized like F.interpolate when the model is smaller)."""
    from PIL import Image

    from dcnn_flame.data import shard_writer as sw
    from dcnn_flame.generation.predictor import decode_crops
    from dcnn_flame.generation.preprocess import CROP_BYTES, CROP_SIZE, _tools, preprocess_character

    root, good, _ = library
    uris = [os.path.join(root, c, "portrait.png") for c in good[:2]]
    ds = _decode_settings()
    assert ds.worker.image_format == "png"
    row = preprocess_character("a", "a", uris, [-1, -1], ds)
    assert [len(c) for c in row["images"]] == [CROP_BYTES, CROP_BYTES] and row["image_ok_uris"] == uris
    refs = []
    for uri, crop in zip(uris, row["images"]):
        with open(uri, "rb") as f:
            view = sw.prepare_view(f.read(), np.full(4, np.nan), np.full((5, 2), np.nan), ds.worker, _tools(ds))
        with Image.open(io.BytesIO(view.image)) as im:
            ref = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(np.frombuffer(crop, np.uint8).reshape(CROP_SIZE, CROP_SIZE, 3), ref)
        refs.append(ref)
    ref_x = torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2).float() / 255.0
    x = decode_crops(row["images"], CROP_SIZE)
    assert x.shape == (2, 3, CROP_SIZE, CROP_SIZE) and x.dtype == torch.float32
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-6)
    small = decode_crops(row["images"], 64)
    torch.testing.assert_close(small, F.interpolate(ref_x, size=(64, 64), mode="bilinear", align_corners=False,
                                                    antialias=True), rtol=0, atol=1e-6)
    assert decode_crops([], 64).shape == (0, 3, 64, 64)
    with pytest.raises(ValueError, match=f"raw RGB {CROP_SIZE}x{CROP_SIZE}.*{CROP_BYTES - 1}"):
        decode_crops([row["images"][0][:-1]], 64)


def _batch(library, n: int) -> pa.Table:
    """Stage-1 rows of n good characters of the library and one without a usable image."""
    from dcnn_flame.generation.preprocess import OUTPUT_SCHEMA, preprocess_character

    root, good, bad = library
    ds = _decode_settings()
    rows = [preprocess_character(c, c, [os.path.join(root, c, "portrait.png")], [-1], ds) for c in good[:n]]
    blank = os.path.join(root, "bad_blank", "a.png")
    rows.insert(1, preprocess_character("bad_blank", "bad_blank", [blank], [-1], ds))
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def _actor(tiny_ckpt, head, run_uri: str, threads: int, write_stage: str = "actor"):
    from dcnn_flame.generation.pipeline import resolve_bank, storage_options
    from dcnn_flame.generation.predictor import ActorSettings, Reconstructor

    cfg = job_config(expressions=["joy", "anger", "surprise"])
    options = storage_options(cfg)
    names, bank_au = resolve_bank(cfg, options)
    settings = ActorSettings(
        checkpoint_uri=tiny_ckpt, run_uri=run_uri, run_name="actor", storage=options, bank_names=tuple(names),
        bank_au=tuple(tuple(float(x) for x in r) for r in bank_au), preview=True, preview_size=48, preview_max=4,
        device="cpu", write_threads=threads, write_stage=write_stage)
    return Reconstructor(settings, head)


def test_write_threads_write_what_one_thread_writes(library, tiny_ckpt, head, tmp_path):
    from dcnn_flame.io.gltf import parse_glb

    batch = _batch(library, 5)
    runs = {}
    for threads in (1, 3):
        run_uri = str(tmp_path / f"w{threads}")
        actor = _actor(tiny_ckpt, head, run_uri, threads)
        assert (actor.pool is None) == (threads == 1)
        status = actor(batch).to_pandas()
        runs[threads] = (run_uri, status)
    (run1, st1), (run3, st3) = runs[1], runs[3]
    # status rows in the batch's order, whatever order the threads finished in
    assert st3["character_id"].tolist() == st1["character_id"].tolist() == batch["character_id"].to_pylist()
    cols = ["character_id", "status", "num_images", "num_failures", "num_expressions", "reason"]
    pd.testing.assert_frame_equal(st3[cols], st1[cols])
    assert st1.set_index("character_id").loc["bad_blank", "reason"] == "no_usable_image"
    ok = st1.loc[st1["status"] == "ok", "character_id"].tolist()
    assert len(ok) == 5
    for cid in ok:
        d1, d3 = (os.path.join(r, "characters", cid) for r in (run1, run3))
        assert sorted(os.listdir(d3)) == sorted(os.listdir(d1)) == ["_SUCCESS", "albedo.png", "character.glb",
                                                                    "preview.png"]
        for name in ("albedo.png", "preview.png", "_SUCCESS"):
            with open(os.path.join(d1, name), "rb") as f1, open(os.path.join(d3, name), "rb") as f3:
                assert f1.read() == f3.read(), (cid, name)
        with open(os.path.join(d1, "character.glb"), "rb") as f1, open(os.path.join(d3, "character.glb"), "rb") as f3:
            g1, g3 = parse_glb(f1.read()), parse_glb(f3.read())
        assert list(g3["morph_targets"]) == list(g1["morph_targets"]) == ["joy", "anger", "surprise"]
        np.testing.assert_allclose(g3["vertices"], g1["vertices"], atol=1e-6)
        for k in g1["morph_targets"]:
            np.testing.assert_allclose(g3["morph_targets"][k], g1["morph_targets"][k], atol=1e-6)
        r1 = pd.read_parquet(os.path.join(run1, "results", f"{cid}.parquet")).drop(columns=_TIMING + ["glb_uri",
                                                                                                      "preview_uri"])
        r3 = pd.read_parquet(os.path.join(run3, "results", f"{cid}.parquet")).drop(columns=_TIMING + ["glb_uri",
                                                                                                      "preview_uri"])
        assert len(r1) == 4
        pd.testing.assert_frame_equal(r3, r1, atol=1e-6)
    f1 = pd.read_parquet(os.path.join(run1, "failures", "bad_blank.parquet"))
    f3 = pd.read_parquet(os.path.join(run3, "failures", "bad_blank.parquet"))
    assert f3["reason"].tolist() == f1["reason"].tolist() == ["no_face", "no_usable_image"]


def test_a_write_error_in_a_thread_fails_only_its_character(library, tiny_ckpt, head, tmp_path):
    batch = _batch(library, 4)
    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 2)
    victim = batch["character_id"].to_pylist()[2]
    original = actor.writer.write_character

    def flaky(character_id, *args, **kwargs):
        if character_id == victim:
            raise OSError(f"disk full while writing {character_id}")
        return original(character_id, *args, **kwargs)

    actor.writer.write_character = flaky
    st = actor(batch).to_pandas().set_index("character_id")
    assert st.loc[victim, "status"] == "failed" and st.loc[victim, "reason"] == "error"
    assert (st.drop(index=[victim, "bad_blank"])["status"] == "ok").all() and len(st) == 5
    fail = pd.read_parquet(tmp_path / "run" / "failures" / f"{victim}.parquet")
    assert fail["stage"].tolist() == ["write"] and "disk full while writing" in fail["detail"].iloc[0]
    assert not os.path.exists(tmp_path / "run" / "characters" / victim / "_SUCCESS")
    for cid in st.index.drop([victim, "bad_blank"]):
        assert os.path.exists(tmp_path / "run" / "characters" / cid / "_SUCCESS")


def _rows_of(library, ids: list[str]) -> pa.Table:
    from dcnn_flame.generation.preprocess import OUTPUT_SCHEMA, preprocess_character

    root, _, _ = library
    ds = _decode_settings()
    return pa.Table.from_pylist([preprocess_character(c, c, [os.path.join(root, c, "portrait.png")], [-1], ds)
                                 for c in ids], schema=OUTPUT_SCHEMA)


def test_two_calls_of_one_actor_overlap_writing_with_the_device_part(library, tiny_ckpt, head, tmp_path):
    """actor_calls=2: Ray Data runs two calls of the actor at once in threads. One batch's writes
    must run while the other batch is on the device (each write below waits until the other
    batch's device part has begun: without the overlap it times out), the device parts never
    run at the same time (each one lasts 0.3 s longer here, so without the lock they would), and
    the files are those of one call after the other."""
    import threading
    import time

    _, good, _ = library
    batches = {"a": good[0:3], "b": good[3:6]}
    seq_run, par_run = str(tmp_path / "seq"), str(tmp_path / "par")
    seq = _actor(tiny_ckpt, head, seq_run, 1)
    for ids in batches.values():
        assert set(seq(_rows_of(library, ids))["status"].to_pylist()) == {"ok"}

    actor = _actor(tiny_ckpt, head, par_run, 1)
    began = {k: threading.Event() for k in batches}
    which = {c: k for k, ids in batches.items() for c in ids}
    inside, most, waited_out = [0], [0], []
    guard = threading.Lock()
    device_part, write_character = actor._device_part, actor.writer.write_character

    def timed_device_part(crops, count, views):
        began[threading.current_thread().name].set()  # the calling thread is named after its batch
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.3)
            return device_part(crops, count, views)
        finally:
            with guard:
                inside[0] -= 1

    def waiting_write(character_id, *args, **kwargs):
        other = "b" if which[character_id] == "a" else "a"
        if not began[other].wait(timeout=60):
            waited_out.append(character_id)
        return write_character(character_id, *args, **kwargs)

    actor._device_part, actor.writer.write_character = timed_device_part, waiting_write
    status: dict = {}

    def call(key):
        status[key] = actor(_rows_of(library, batches[key]))["status"].to_pylist()

    threads = [threading.Thread(target=call, args=(k,), name=k) for k in batches]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    assert not any(th.is_alive() for th in threads)
    assert status == {"a": ["ok"] * 3, "b": ["ok"] * 3}
    assert waited_out == [], "a batch's writes did not overlap the other batch's device part"
    assert most[0] == 1, "two batches were on the device at once"
    for cid in good[:6]:
        for name in ("albedo.png", "preview.png", "_SUCCESS"):
            with open(os.path.join(seq_run, "characters", cid, name), "rb") as f1, \
                    open(os.path.join(par_run, "characters", cid, name), "rb") as f2:
                assert f1.read() == f2.read(), (cid, name)
        r1, r2 = (pd.read_parquet(os.path.join(r, "results", f"{cid}.parquet")).drop(
            columns=_TIMING + ["glb_uri", "preview_uri"]) for r in (seq_run, par_run))
        pd.testing.assert_frame_equal(r2, r1)


def test_a_failed_device_part_fails_its_group_with_the_stage(library, tiny_ckpt, head, tmp_path):
    """A group whose device part fails ends as failure rows naming the stage and the cause, and
    the device lock is free again for the actor's next batch."""
    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 1)
    _, good, _ = library

    def broken(recs):
        raise RuntimeError("CUDA out of memory (simulated)")

    actor._retarget_many = broken
    st = actor(_rows_of(library, good[:2])).to_pandas()
    assert st["status"].tolist() == ["failed", "failed"] and set(st["reason"]) == {"error"}
    fail = pd.read_parquet(tmp_path / "run" / "failures" / f"{good[0]}.parquet")
    assert fail["stage"].tolist() == ["retarget"]
    assert fail["detail"].iloc[0] == "RuntimeError: CUDA out of memory (simulated)"
    assert not actor.device_lock.locked()  # released on the failure: the next call can run
    del actor._retarget_many  # the class's own again
    assert actor(_rows_of(library, good[2:3]))["status"].to_pylist() == ["ok"]


def test_the_device_part_frees_the_albedo_unless_previews_are_left_to_render(library, tiny_ckpt, head, tmp_path):
    """After the batch's preview tiles the reconstructions drop their device albedo (another
    call's batch may come onto the device while these are written); when the batched tiles
    fail, the albedo stays and each character's preview is rendered when it is written."""
    _, good, _ = library
    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 1)
    crops = [c for r in _rows_of(library, good[:2]).to_pylist() for c in r["images"]]
    part = actor._device_part(crops, 2, 1)
    assert part.tiles is not None and all(r.albedo is None and r.texture is not None for r in part.recs)

    batched = actor.writer.preview_tiles

    def fails_for_batches(outs, albedos, names):
        if len(outs) > 1:
            raise RuntimeError("out of memory (simulated)")
        return batched(outs, albedos, names)

    actor.writer.preview_tiles = fails_for_batches
    part = actor._device_part(crops, 2, 1)
    assert part.tiles is None and all(r.albedo is not None for r in part.recs)
    st = actor(_rows_of(library, good[:2]))
    assert st["status"].to_pylist() == ["ok", "ok"]
    for cid in good[:2]:
        assert os.path.getsize(tmp_path / "run" / "characters" / cid / "preview.png") > 0


@pytest.mark.parametrize("field, value, match", [
    ("write_threads", 0, "max_images_per_character must be >= 1, got 1, 4, 4, 0, 8, 8, 8"),
    ("read_threads", 0, "max_images_per_character must be >= 1, got 1, 4, 4, 1, 0, 8, 8"),
    ("write_batch_size", 0, "max_images_per_character must be >= 1, got 1, 4, 4, 1, 8, 0, 8"),
    ("max_images_per_character", -1, "max_images_per_character must be >= 1, got 1, 4, 4, 1, 8, 8, -1"),
    ("write_stage", "driver", "write_stage must be one of actor, tasks, got 'driver'"),
    ("write_task_cpus", 0.0, "write_task_cpus must be > 0, got 0.0"),
    ("cuda_wait", "sleep", "cuda_wait must be one of blocking, spin, yield, auto, got 'sleep'"),
    ("actor_calls", 0, "actor_calls must be >= 1 .*got 0")])
def test_job_refuses_bad_counts_and_write_settings(tmp_path, field, value, match):
    from dcnn_flame.generation.pipeline import run

    with pytest.raises(ValueError, match=match):
        run(job_config(demo_dir=str(tmp_path), **{field: value}))
    assert not os.listdir(tmp_path)  # refused before any work


def test_read_ahead_keeps_order_bounds_the_window_and_overlaps_reads(monkeypatch):
    """Four reads must be in flight together (a barrier of four parties would time out
    otherwise); results come back in input order, failures in place; never more than
    ``window`` images read ahead of the consumer."""
    import threading

    from dcnn_flame.data import shard_writer as sw
    from dcnn_flame.generation import preprocess as P

    barrier = threading.Barrier(4, timeout=30)
    lock = threading.Lock()
    started = [0]

    def fake_read(uri, size, settings):
        with lock:
            started[0] += 1
        barrier.wait()
        if uri == "u5":
            return sw._Failure("read", "missing", f"no such file: {uri}")
        return uri.encode()

    monkeypatch.setattr(P, "_read_or_failure", fake_read)
    jobs = [(f"u{i}", -1) for i in range(20)]
    out, ahead = [], []
    for item in P.read_ahead(jobs, None, threads=4, window=8):
        out.append(item)
        with lock:
            ahead.append(started[0] - len(out))
    assert [o.reason if isinstance(o, sw._Failure) else o.decode() for o in out] == [
        "missing" if i == 5 else f"u{i}" for i in range(20)]
    assert max(ahead) <= 8 - 1 and started[0] == 20


def test_decode_batch_reads_s3_ahead_like_one_after_the_other(library, s3_bucket):
    """preprocess_batch on images in a real S3 server (moto): read by 4 threads or one after the
    other, the same rows (crops, failures: a missing file, a file over max_image_bytes)."""
    import dataclasses

    import boto3

    from dcnn_flame.generation.preprocess import preprocess_batch

    root, good, _ = library
    bucket, opts = s3_bucket
    client = boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1")
    name = bucket[len("s3://"):]
    items, largest = [], 0
    for cid in good[:6]:
        with open(os.path.join(root, cid, "portrait.png"), "rb") as f:
            body = f.read()
        largest = max(largest, len(body))
        client.put_object(Bucket=name, Key=f"lib/{cid}/portrait.png", Body=body)
        items.append({"character_id": cid, "character_key": cid, "image_uris": [f"{bucket}/lib/{cid}/portrait.png"],
                      "sizes": [-1]})
    client.put_object(Bucket=name, Key="lib/big/a.png", Body=b"\x89PNG" + b"\x00" * (largest + 1000))
    items[1]["image_uris"].append(f"{bucket}/lib/nobody/a.png")
    items[1]["sizes"].append(-1)
    items[3]["image_uris"].append(f"{bucket}/lib/big/a.png")
    items[3]["sizes"].append(-1)
    batch = pa.Table.from_pylist(items)
    from dcnn_flame.generation.pipeline import decode_settings

    cfg = job_config(max_image_bytes=largest + 500)
    cfg.storage.endpoint_url = opts.endpoint_url
    ds = decode_settings(cfg, opts, "center")[0]
    seq = preprocess_batch(batch, dataclasses.replace(ds, read_threads=1)).drop(["decode_ms"]).to_pylist()
    par = preprocess_batch(batch, dataclasses.replace(ds, read_threads=4)).drop(["decode_ms"]).to_pylist()
    assert par == seq
    assert [len(r["images"]) for r in par] == [1] * 6
    reasons = {r["character_id"]: [f["reason"] for f in json.loads(r["failures"])] for r in par}
    assert reasons[good[1]] == ["missing"] and reasons[good[3]] == ["too_large"]
    assert all(not v for k, v in reasons.items() if k not in (good[1], good[3]))


def test_decode_batch_turns_a_bad_size_into_a_failure_row(library):
    """A size that is not a number fails its image (stage decode, reason error), not the task."""
    from dcnn_flame.generation.preprocess import preprocess_batch

    root, good, _ = library
    items = [{"character_id": c, "character_key": c, "image_uris": [os.path.join(root, c, "portrait.png")],
              "sizes": [-1]} for c in good[:3]]
    items[1]["sizes"] = [None]
    out = preprocess_batch(pa.Table.from_pylist(items), _decode_settings()).to_pylist()
    assert [len(r["images"]) for r in out] == [1, 0, 1]
    fail = json.loads(out[1]["failures"])
    assert [(f["stage"], f["reason"]) for f in fail] == [("decode", "error")] and "TypeError" in fail[0]["detail"]


def test_batched_retarget_and_preview_equal_one_character_at_a_time(library, tiny_ckpt, head, tmp_path):
    """The actor retargets and preview-renders a whole group in one pass each: the meshes equal
    the per-character retarget (detail baked with the character's own code), the tiles equal
    rendering each character alone."""
    from dcnn_flame.generation.predictor import decode_crops, reconstruct

    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 1)
    batch = _batch(library, 3).to_pylist()
    rows = [r for r in batch if r["images"]]
    assert len(rows) == 3
    imgs = torch.stack([decode_crops(r["images"], actor.image_size) for r in rows])
    recs = reconstruct(actor.loaded, imgs)
    names, au, out = actor._retarget_many(recs)
    assert names == ["joy", "anger", "surprise"] and out.vertices.shape[:2] == (3, 3)
    dec = actor.loaded.model.detail_decoder
    assert out.displacement is not None  # the tiny model has a detail decoder: baking is exercised
    e, j = actor.retargeter.au_to_params(actor.bank_au)
    for b, rec in enumerate(recs):
        def detail(expression, jaw, code=rec.detail_code):
            return dec(code[None].expand(expression.shape[0], -1), expression, jaw).float()

        with torch.inference_mode():
            ref = actor.retargeter.retarget_from_performance(rec.shape, e, j, detail)
        torch.testing.assert_close(out.vertices[b], ref.vertices, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.neutral[b], ref.neutral, rtol=0, atol=1e-5)
    torch.testing.assert_close(au, actor.bank_au)
    from dcnn_flame.generation.predictor import _split_outputs

    outs = _split_outputs(out, 3)
    albedos = [r.albedo for r in recs]
    tiles = actor.writer.preview_tiles(outs, albedos, names)
    assert tiles.shape == (3, 4, 48, 48, 3) and tiles.dtype == np.uint8
    for b in range(3):
        alone = actor.writer.preview_tiles([outs[b]], [albedos[b]], names)[0]
        assert np.abs(alone.astype(int) - tiles[b]).max() <= 1
        assert (alone != tiles[b]).mean() < 1e-3
    actor.writer.preview.max_tiles = 5  # chunks that split a character's tiles give the same tiles
    chunked = actor.writer.preview_tiles(outs, albedos, names)
    assert np.abs(chunked.astype(int) - tiles).max() <= 1


def _files(run_uri: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(run_uri):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), run_uri)] = fh.read()
    return out


@pytest.mark.parametrize("task_threads", [1, 2])
def test_write_tasks_write_what_the_actor_writes(library, tiny_ckpt, head, tmp_path, task_threads):
    """write_stage=tasks: the actor returns payload rows (failed characters final, their
    failures table written); write_payloads turns them into the same files, byte for byte, as
    the actor writing them itself, and the same status rows."""
    import dataclasses

    from dcnn_flame.generation.handoff import PAYLOAD_SCHEMA, PENDING
    from dcnn_flame.generation.predictor import STATUS_SCHEMA
    from dcnn_flame.generation.write_stage import MeshTopology, write_payloads

    batch = _batch(library, 4)
    direct = _actor(tiny_ckpt, head, str(tmp_path / "direct"), 1)
    st_direct = direct(batch).to_pandas()
    actor = _actor(tiny_ckpt, head, str(tmp_path / "tasks"), 1, "tasks")
    payload = actor(batch)
    assert payload.schema.equals(PAYLOAD_SCHEMA)
    p = payload.to_pandas().set_index("character_id")
    assert p.loc["bad_blank", "status"] == "failed" and p.loc["bad_blank", "reason"] == "no_usable_image"
    assert (p.drop(index="bad_blank")["status"] == PENDING).all()
    assert sorted(os.listdir(tmp_path / "tasks")) == ["failures"]  # only the failed character's table so far
    settings = dataclasses.replace(actor.settings, write_threads=task_threads)
    # the write task gets a copy of the rows (as from the object store) and the topology only
    st = write_payloads(pa.Table.from_pylist(payload.to_pylist(), schema=PAYLOAD_SCHEMA), settings,
                        MeshTopology.of(head), actor.loaded.step)
    assert st.schema.equals(STATUS_SCHEMA)
    st = st.to_pandas()
    cols = ["character_id", "character_key", "status", "num_images", "num_failures", "num_expressions", "reason"]
    pd.testing.assert_frame_equal(st[cols], st_direct[cols])
    a, b = _files(str(tmp_path / "direct")), _files(str(tmp_path / "tasks"))
    assert sorted(a) == sorted(b) and len(a) == 4 * 5 + 1  # 4 characters x (4 files + results), 1 failures
    for name in a:
        if name.startswith(("results/", "failures/")):
            continue
        assert a[name] == b[name], name  # GLB, PNGs, _SUCCESS: the same bytes
    for name in a:
        if name.startswith("results/"):
            ra, rb = (pd.read_parquet(io.BytesIO(x[name])).drop(columns=_TIMING) for x in (a, b))
            for col in ("glb_uri", "preview_uri"):  # the same keys under each run's folder
                ra[col] = ra[col].str.replace(str(tmp_path / "direct"), "<run>")
                rb[col] = rb[col].str.replace(str(tmp_path / "tasks"), "<run>")
            pd.testing.assert_frame_equal(rb, ra)
    fa, fb = (pd.read_parquet(io.BytesIO(x["failures/bad_blank.parquet"])) for x in (a, b))
    assert fb["reason"].tolist() == fa["reason"].tolist() == ["no_face", "no_usable_image"]


def test_write_tasks_reuse_their_process_writer_only_for_equal_arguments(head, tmp_path):
    """A worker process keeps its CharacterWriter across write tasks with the same settings,
    step and topology; any difference (an output switch, the run, the step, the faces) gets
    another; only the newest few are kept."""
    import dataclasses

    from dcnn_flame.generation import write_stage as ws
    from dcnn_flame.generation.predictor import ActorSettings
    from dcnn_flame.io.storage import StorageOptions

    ws._WRITERS.clear()
    s = ActorSettings(checkpoint_uri="ck", run_uri=str(tmp_path / "a"), run_name="a", storage=StorageOptions(),
                      bank_names=("joy",), bank_au=((0.0,) * 17,), preview=True, preview_size=48, device="cpu")
    topo = ws.MeshTopology.of(head)
    w = ws._writer(s, topo, 3)
    assert ws._writer(dataclasses.replace(s), ws.MeshTopology.of(head), 3) is w  # equal, not identical, args
    others = [ws._writer(dataclasses.replace(s, preview=False), topo, 3),
              ws._writer(dataclasses.replace(s, run_uri=str(tmp_path / "b")), topo, 3),
              ws._writer(s, topo, 4),
              ws._writer(s, dataclasses.replace(topo, faces=topo.faces[::-1].copy()), 3)]
    assert all(o is not w for o in others) and len({id(o) for o in others}) == 4
    assert not others[0].previews and w.previews and others[2].step == 4
    assert len(ws._WRITERS) == ws._WRITERS_KEPT and ws._writer(s, topo, 3) is not w  # the oldest was dropped
    ws._WRITERS.clear()


def test_a_broken_payload_fails_only_its_character(library, tiny_ckpt, head, tmp_path):
    from dcnn_flame.generation.handoff import PAYLOAD_SCHEMA
    from dcnn_flame.generation.write_stage import MeshTopology, write_payloads

    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 1, "tasks")
    rows = actor(_batch(library, 3)).to_pylist()
    victim = rows[2]["character_id"]
    rows[2]["arrays"] = rows[2]["arrays"][:100]  # truncated on the way
    st = write_payloads(pa.Table.from_pylist(rows, schema=PAYLOAD_SCHEMA), actor.settings, MeshTopology.of(head),
                        actor.loaded.step).to_pandas().set_index("character_id")
    assert st.loc[victim, "status"] == "failed" and st.loc[victim, "reason"] == "error"
    assert (st.drop(index=[victim, "bad_blank"])["status"] == "ok").all()
    fail = pd.read_parquet(tmp_path / "run" / "failures" / f"{victim}.parquet")
    assert fail["stage"].tolist() == ["write"] and "ends at byte" in fail["detail"].iloc[0]
    assert not os.path.exists(tmp_path / "run" / "characters" / victim / "_SUCCESS")


def test_the_texture_made_on_the_device_is_the_albedo_png(library, tiny_ckpt, head, tmp_path):
    from dcnn_flame.generation.predictor import decode_crops, reconstruct
    from dcnn_flame.generation.writers import albedo_png, png_bytes

    actor = _actor(tiny_ckpt, head, str(tmp_path / "run"), 1)
    rows = [r for r in _batch(library, 2).to_pylist() if r["images"]]
    recs = reconstruct(actor.loaded, torch.stack([decode_crops(r["images"], actor.image_size) for r in rows]))
    for rec in recs:
        assert rec.texture.dtype == np.uint8 and rec.texture.shape == (*rec.albedo.shape[1:], 3)
        assert png_bytes(rec.texture) == albedo_png(rec.albedo)
        naive = np.round(np.clip(rec.albedo.cpu().permute(1, 2, 0).numpy().astype(np.float64), 0, 1) * 255.0)
        assert np.abs(naive - rec.texture).max() <= 1


def test_write_room_problem_names_the_numbers():
    from dcnn_flame.generation.pipeline import write_room_problem

    cfg = job_config(write_stage="tasks", num_actors=2, num_cpus_per_actor=1.0, write_task_cpus=1.0)
    assert write_room_problem(cfg, 3.0) is None
    msg = write_room_problem(cfg, 2.0)
    assert "the cluster has 2, num_actors x num_cpus_per_actor = 2 x 1 hold 2" in msg
    assert write_room_problem(job_config(write_stage="tasks", num_actors=2, write_task_cpus=0.5), 2.5) is None


def test_write_tasks_topology_from_the_checkpoint_config(head):
    """Without a head model on the driver, the write tasks' faces/UVs come from the checkpoint's
    own flame config (unknown keys of another version dropped)."""
    from dcnn_flame.generation.pipeline import _checkpoint_head
    from dcnn_flame.generation.write_stage import MeshTopology

    topo = MeshTopology.of(_checkpoint_head({"flame": {"procedural_seed": 0, "from_a_newer_version": 1}}))
    ref = MeshTopology.of(head)
    np.testing.assert_array_equal(topo.faces, ref.faces)
    np.testing.assert_array_equal(topo.uv_faces, ref.uv_faces)
    np.testing.assert_array_equal(topo.uv_coords, ref.uv_coords)
