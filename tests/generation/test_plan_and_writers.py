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
