"""The driver's plan (ids, keys, manifests) and the idempotent writers, without Ray."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from dcnn_flame.generation import library, writers
from dcnn_flame.generation.schema import FAILURES_SCHEMA
from dcnn_flame.io import storage


def _touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_listing_groups_folders_and_flat_files(tmp_path):
    _touch(tmp_path / "hero" / "a.png")
    _touch(tmp_path / "hero" / "sub" / "b.jpg")
    _touch(tmp_path / "solo.png")
    _touch(tmp_path / "hero" / ".a.png.123.tmp")
    _touch(tmp_path / "notes.txt")
    plan = library.plan_library(str(tmp_path), None, max_images=8)
    got = {t.character_id: [os.path.relpath(u, tmp_path) for u in t.image_uris] for t in plan.tasks}
    assert got == {"hero": ["hero/a.png", "hero/sub/b.jpg"], "solo": ["solo.png"]}
    assert plan.failures == [] and plan.num_images == 3


@pytest.mark.parametrize("cid", ["../x", "a/../../b", "..", "", "   ", "bad\x00id", "x" * 600])
def test_bad_ids_become_plan_failures(tmp_path, cid):
    _touch(tmp_path / "ok.png")
    manifest = tmp_path / "m.parquet"
    import pandas as pd

    pd.DataFrame({"character_id": ["good", cid], "image_uri": ["ok.png", "ok.png"]}).to_parquet(manifest)
    plan = library.plan_library(str(tmp_path), str(manifest))
    assert [t.character_id for t in plan.tasks] == ["good"]
    assert [(f["stage"], f["reason"]) for f in plan.failures] == [("plan", "bad_id")]
    assert plan.failures[0]["character_key"] is None


def test_safe_keys_stay_inside_the_prefix_and_collisions_fail(tmp_path):
    _touch(tmp_path / "ok.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("character_id,image_uri\nJosé Ñ,ok.png\nJos?_Ñ,ok.png\nplain,ok.png\n")
    plan = library.plan_library(str(tmp_path), str(manifest))
    keys = {t.character_id: t.key for t in plan.tasks}
    assert keys["plain"] == "plain"
    for k in keys.values():
        assert "/" not in k and not k.startswith(".") and os.path.basename(k) == k
        assert all(c.isalnum() or c in "._-" for c in k)
    assert len(set(keys.values())) == len(keys)


def test_manifest_ids_are_text_in_parquet_as_in_csv(tmp_path):
    """Integer ids in a Parquet manifest are the ids a CSV of the same rows gives ("101"); an
    empty cell is a bad_id failure that says so."""
    import pyarrow as pa

    _touch(tmp_path / "ok.png")
    pq.write_table(pa.table({"character_id": pa.array([101, 102, None], pa.int64()),
                             "image_uri": ["ok.png", "ok.png", "ok.png"]}), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text("character_id,image_uri\n101,ok.png\n102,ok.png\n,ok.png\n")
    plans = [library.plan_library(str(tmp_path), str(tmp_path / m)) for m in ("m.parquet", "m.csv")]
    for plan in plans:
        assert [(t.character_id, t.key) for t in plan.tasks] == [("101", "101"), ("102", "102")]
        assert [f["reason"] for f in plan.failures] == ["bad_id"]
    assert "missing" in plans[0].failures[0]["detail"] and "empty" in plans[1].failures[0]["detail"]


@pytest.mark.parametrize("name, data, match", [
    ("m.csv", b"", "the manifest is empty"),
    ("m.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("m.csv", b"id,uri\na,b.png\n", r"needs columns character_id and image_uri.*found \['id', 'uri'\]"),
])
def test_unreadable_manifests_name_the_file_and_the_columns(tmp_path, name, data, match):
    _touch(tmp_path / name, data)
    with pytest.raises(ValueError, match=match) as e:
        library.plan_library(None, str(tmp_path / name))
    assert str(tmp_path / name) in str(e.value)


def test_completed_keys_reads_success_markers(tmp_path):
    run = str(tmp_path / "run")
    _touch(os.path.join(run, "characters", "a", "_SUCCESS"))
    _touch(os.path.join(run, "characters", "b", "character.glb"))
    assert library.completed_keys(run) == {"a"}
    assert library.completed_keys(str(tmp_path / "none")) == set()


def test_failures_table_rewritten_only_when_changed(tmp_path):
    uri = str(tmp_path / "f" / "c.parquet")
    fails = [{"input_uri": "/x/a.png", "stage": "decode", "reason": "empty", "detail": "0 bytes"}]
    assert writers.write_failures_if_changed(uri, "run", "c", "c", fails) is True
    mtime = os.stat(uri).st_mtime_ns
    assert writers.write_failures_if_changed(uri, "run", "c", "c", fails) is False
    assert os.stat(uri).st_mtime_ns == mtime
    t = pq.read_table(uri)
    assert t.schema.names == FAILURES_SCHEMA.names and t["reason"].to_pylist() == ["empty"]
    assert writers.write_failures_if_changed(uri, "run", "c", "c", fails + fails) is True
    assert pq.read_table(uri).num_rows == 2
    assert [p for p in os.listdir(tmp_path / "f") if p.startswith(".")] == []  # no temp files left


def test_keys_of_outputs(tmp_path):
    run = storage.resolve(str(tmp_path / "r"))
    assert writers.character_uri(run, "k", "character.glb") == f"{run}/characters/k/character.glb"
    assert writers.results_uri(run, "k") == f"{run}/results/k.parquet"
    assert writers.failures_uri(run, "k") == f"{run}/failures/k.parquet"


def _naive_results_rows(character_id, key, rec, names, au, out, s, step, num_images, timings, write_ms, glb_uri,
                        preview_uri, obj_uris, now):
    """The results rows built one dict per row (how the writer built them before the 14th
    session): the reference for writers.results_bytes."""
    import numpy as np
    import torch

    from dcnn_flame.constants import AU_COLUMNS
    from dcnn_flame.generation.schema import RESULTS_SCHEMA_VERSION

    def _au(x):
        return float(x) if np.isfinite(float(x)) else None

    base = {"schema_version": RESULTS_SCHEMA_VERSION, "run_name": s.run_name, "character_id": character_id,
            "character_key": key, "model_version": s.model_version, "checkpoint": s.checkpoint_uri,
            "checkpoint_step": step, "num_images": num_images, "shape": rec.shape.tolist(),
            "detail_code": rec.detail_code.tolist() if rec.detail_code is not None else [], "glb_uri": glb_uri,
            "preview_uri": preview_uri, "reconstruct_ms": timings[0], "retarget_ms": timings[1],
            "write_ms": write_ms, "created_at": now}
    rec_au = rec.au.float().nanmean(0) if rec.au.numel() else torch.full((17,), float("nan"))
    rows = [{**base, "expression": "reconstruction", "intensity": 1.0, "source": "reconstruction",
             **{c: _au(rec_au[i]) for i, c in enumerate(AU_COLUMNS)},
             "expression_params": rec.expression.mean(0).tolist(), "pose": rec.pose.mean(0).tolist(),
             "obj_uri": obj_uris.get("neutral_mesh")}]
    perf = set(s.performance_names)
    for k, n in enumerate(names):
        rows.append({**base, "expression": n, "intensity": float(s.intensity if n not in perf else 1.0),
                     "source": f"performance:{n[5:]}" if n in perf else "bank",
                     **{c: _au(au[k, i]) for i, c in enumerate(AU_COLUMNS)},
                     "expression_params": out.expression[k].tolist(), "pose": out.pose[k].tolist(),
                     "obj_uri": obj_uris.get(n)})
    return rows


@pytest.mark.parametrize("detail, views", [(True, 2), (False, 1)])
def test_results_table_equals_the_row_by_row_reference(detail, views):
    import datetime as dt
    import io

    import numpy as np
    import pyarrow as pa
    import torch

    from dcnn_flame.generation.predictor import ActorSettings, Reconstruction
    from dcnn_flame.generation.retarget import RetargetOutput
    from dcnn_flame.generation.schema import RESULTS_SCHEMA
    from dcnn_flame.io.storage import StorageOptions

    g = torch.Generator().manual_seed(views)
    names = ["joy", "anger", "perf_take1"]
    au = torch.rand(3, 17, generator=g)
    au[2] = float("nan")  # a performance frame has no AU profile
    rec_au = torch.rand(views, 17, generator=g)
    rec_au[0, 2] = float("nan")  # au04 of one view missing: the mean of the others (none: NULL)
    rec = Reconstruction(shape=torch.randn(20, generator=g), expression=torch.randn(views, 10, generator=g),
                         pose=torch.randn(views, 15, generator=g), albedo=torch.zeros(3, 4, 4),
                         detail_code=torch.randn(8, generator=g) if detail else None, au=rec_au)
    out = RetargetOutput(expression=torch.randn(3, 10, generator=g), pose=torch.randn(3, 15, generator=g),
                         vertices=torch.zeros(3, 5, 3), neutral=torch.zeros(5, 3), displacement=None)
    s = ActorSettings(checkpoint_uri="s3://b/ck", run_uri="/tmp/x", run_name="nightly", storage=StorageOptions(),
                      bank_names=("joy", "anger"), bank_au=((0.0,) * 17,) * 2, intensity=0.7,
                      performance_names=("perf_take1",), model_version="9.9")
    now = dt.datetime(2026, 11, 25, 3, 0, 0, 250000, tzinfo=dt.timezone.utc)
    obj_uris = {"neutral_mesh": "/o/n.obj", "joy": "/o/joy.obj"}
    args = ("hero:1", "hero_1", rec, names, au, out, s, 12, views, (3.5, 1.25), 9.0, "/o/c.glb", None, obj_uris)
    got = pq.read_table(io.BytesIO(writers.results_bytes(*args, now=now)))
    want = pa.Table.from_pylist(_naive_results_rows(*args, now), schema=RESULTS_SCHEMA)
    assert got.schema == want.schema
    assert got.equals(want), (got.to_pylist()[:1], want.to_pylist()[:1])
    rows = got.to_pylist()
    assert [r["source"] for r in rows] == ["reconstruction", "bank", "bank", "performance:take1"]
    assert rows[3]["au01"] is None and rows[1]["intensity"] == pytest.approx(0.7)
    assert rows[0]["au04"] == (pytest.approx(float(rec_au[1:, 2].mean())) if views > 1 else None)
    assert np.isfinite(rows[0]["au01"]) and rows[2]["obj_uri"] is None


def _run_info(**settings):
    from dcnn_flame.generation.pipeline import _fingerprint

    return {"run_name": "r", "fingerprint": _fingerprint(settings), "settings": settings}


def test_overwrite_with_other_settings_deletes_the_old_state_before_binding_the_run(tmp_path):
    """An overwrite with other settings deletes the run's characters, results and failures, then
    rewrites _RUN.json: nothing made with the old settings can pass for complete afterwards (a
    killed overwrite followed by a plain rerun used to skip the characters it had not reached)."""
    import json

    from dcnn_flame.generation.pipeline import guard_run

    run = str(tmp_path / "run")
    opts = storage.StorageOptions()
    old = _run_info(checkpoint="a", expressions=["joy"])
    guard_run(run, old, False, opts)
    state = ["characters/c1/_SUCCESS", "characters/c1/character.glb", "characters/c2/_SUCCESS",
             "results/c1.parquet", "failures/c3.parquet"]
    for p in state:
        _touch(os.path.join(run, p))
    guard_run(run, old, False, opts)  # same settings: goes on, nothing touched
    assert all(os.path.exists(os.path.join(run, p)) for p in state)
    new = _run_info(checkpoint="b", expressions=["joy"])
    with pytest.raises(ValueError, match=r"other settings \(checkpoint differ"):
        guard_run(run, new, False, opts)
    assert all(os.path.exists(os.path.join(run, p)) for p in state)  # refused: nothing deleted
    guard_run(run, new, True, opts)
    assert sorted(os.listdir(run)) == ["_RUN.json"] and library.completed_keys(run) == set()
    assert json.load(open(os.path.join(run, "_RUN.json")))["fingerprint"] == new["fingerprint"]
    # A newer version records more settings: the old run goes on (nothing deleted), _RUN.json gains them.
    _touch(os.path.join(run, "characters/c1/_SUCCESS"))
    newer = _run_info(checkpoint="b", expressions=["joy"], preview_size=160)
    guard_run(run, newer, False, opts)
    assert library.completed_keys(run) == {"c1"}
    assert json.load(open(os.path.join(run, "_RUN.json")))["settings"]["preview_size"] == 160
    with pytest.raises(ValueError, match=r"preview_size differ"):
        guard_run(run, _run_info(checkpoint="b", expressions=["joy"], preview_size=96), False, opts)


def _writer(run, head):
    from dcnn_flame.generation.predictor import ActorSettings

    s = ActorSettings(checkpoint_uri="ckpt", run_uri=storage.resolve(run), run_name="r",
                      storage=storage.StorageOptions(), bank_names=(), bank_au=())
    return writers.CharacterWriter(s, head, step=0)


def test_a_failed_character_is_not_complete_and_unstored_failures_are_reported(tmp_path, head, capsys):
    """A character that ran and failed loses the _SUCCESS and results an earlier run left (an
    overwrite) and gets its failures table; when storage refuses that, its status row says so."""
    from dcnn_flame.generation.write_stage import UNRECORDED, fail_character

    run = str(tmp_path / "run")
    for p in ("characters/c/_SUCCESS", "characters/c/character.glb", "results/c.parquet"):
        _touch(os.path.join(run, p))
    w = _writer(run, head)
    row = {"character_id": "c", "character_key": "c", "failures": "[]"}
    st = fail_character(w, row, 1, "reconstruct", "error", "RuntimeError: boom")
    assert st["status"] == "failed" and st["reason"] == "error"
    assert library.completed_keys(run) == set() and not os.path.exists(os.path.join(run, "results/c.parquet"))
    assert pq.read_table(os.path.join(run, "failures/c.parquet"))["stage"].to_pylist() == ["reconstruct"]

    def refuse(*a, **k):
        raise PermissionError("bucket is read-only")

    w.write_failures = refuse
    st = fail_character(w, {**row, "character_id": "d", "character_key": "d"}, 1, "write", "error", "x")
    assert st["reason"].startswith(UNRECORDED) and "bucket is read-only" in st["reason"]
    assert "could not be stored" in capsys.readouterr().err


def test_expression_names_that_would_overwrite_each_other_are_refused():
    from dcnn_flame.generation.pipeline import check_expression_names, performance_name

    root = "/p/take3"
    assert performance_name("/p/take3/frame_0001.png", root) == "perf_frame_0001"
    assert performance_name("/p/take3/cam0/frame_0001.png", root) == "perf_cam0_frame_0001"
    check_expression_names(["joy", "anger"], ["perf_frame_0001", "perf_cam0_frame_0001"])
    for bank, perf, match in [(["joy", "joy"], [], "both named 'joy'"),
                              (["joy"], ["perf_a", "perf_a"], "both named 'perf_a'"),
                              (["neutral_mesh"], [], "reserved"), (["reconstruction"], [], "reserved"),
                              (["perf_x"], [], "prefix perf_")]:
        with pytest.raises(ValueError, match=match):
            check_expression_names(bank, perf)


def test_the_au_map_is_resolved_and_checked_on_the_driver(tmp_path, head):
    """au_map_path, else the checkpoint's supervision.au_map_path (read through storage); a head
    model without a map and no file is refused before any work, naming au_map_path."""
    import dataclasses
    import types

    import numpy as np

    from dcnn_flame.generation.pipeline import resolve_au_map

    rng = np.random.default_rng(0)
    path = tmp_path / "map.npz"
    np.savez(path, au_to_expr=rng.standard_normal((17, 20)), au_to_jaw=rng.standard_normal((17, 3)))
    opts = storage.StorageOptions()
    bare = dataclasses.replace(head, extras={})
    ckpt = {"supervision": {"au_map_path": str(path)}}
    cfg = types.SimpleNamespace(au_map_path=None)
    p, digest = resolve_au_map(cfg, ckpt, bare, ["joy"], opts)
    assert p == storage.resolve(str(path)) and digest
    cfg2 = types.SimpleNamespace(au_map_path=str(path))
    assert resolve_au_map(cfg2, {}, bare, ["joy"], opts) == (p, digest)
    own = resolve_au_map(cfg, {}, head, ["joy"], opts)  # the procedural head's own map
    assert own[0] is None and own[1] not in (None, digest)
    with pytest.raises(ValueError, match="au_map_path"):
        resolve_au_map(cfg, {}, bare, ["joy"], opts)
    assert resolve_au_map(cfg, {}, bare, [], opts) == (None, None)  # no bank expression: no map needed
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a usable AU map"):
        resolve_au_map(types.SimpleNamespace(au_map_path=str(tmp_path / "bad.npz")), {}, bare, ["joy"], opts)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_au_map(types.SimpleNamespace(au_map_path=str(tmp_path / "none.npz")), {}, bare, ["joy"], opts)
