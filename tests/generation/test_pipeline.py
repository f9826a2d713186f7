"""End-to-end batch generation on a local Ray: 20 characters + bad inputs, local and S3 outputs,
GLB/Parquet read back, exactly-once under a killed worker, reruns that rewrite nothing, and
queries over the tables the job wrote (issue 9)."""
from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_helpers import NUM_GOOD, job_config, manifest_for  # noqa: E402
from dcnn_flame.constants import AU_COLUMNS
from dcnn_flame.generation import emotions
from dcnn_flame.generation.schema import FAILURES_SCHEMA, RESULTS_SCHEMA
from dcnn_flame.io import storage

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BANK = list(emotions.default_bank().names)
CHAR_FILES = {"character.glb", "albedo.png", "preview.png", "_SUCCESS"}


def _snapshot(root: str) -> dict[str, int]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.stat(p).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def local_run(ray_local, library, tiny_ckpt, tmp_path_factory):
    """The job once over the library (via a manifest that adds the id ``../x``) to a local prefix."""
    from dcnn_flame.generation.pipeline import run

    root, good, bad = library
    base = tmp_path_factory.mktemp("gen_local")
    manifest = manifest_for(root, str(base / "manifest.csv"), {"../x": "hero_00/portrait.png"})
    out = base / "sub" / "out"
    cfg = job_config(input_uri=root, manifest_uri=manifest, checkpoint=tiny_ckpt, output_uri=str(out), name="e2e")
    t0 = time.time()
    summary = run(cfg)
    return {"out": str(out), "run": str(out / "e2e"), "base": str(base), "summary": summary, "cfg": cfg,
            "good": good, "bad": bad, "seconds": time.time() - t0}


def test_summary_counts_and_exit_status(local_run):
    s = local_run["summary"]
    assert (s.characters, s.completed, s.skipped) == (NUM_GOOD + len(local_run["bad"]), NUM_GOOD, 0)
    assert s.failed == len(local_run["bad"]) and sorted(s.failed_ids) == sorted(local_run["bad"])
    assert s.plan_failures == 1  # ../x
    assert s.image_failures == len(local_run["bad"]) + 1  # one per bad character + mixed/zz_broken.png
    assert s.exit_code == 0 and s.expressions == len(BANK)  # failure rows are data


def test_nothing_escapes_the_prefix(local_run):
    base = local_run["base"]
    for d, _, files in os.walk(base):
        for f in files:
            p = os.path.join(d, f)
            assert p.startswith(local_run["run"] + os.sep) or p == os.path.join(base, "manifest.csv"), p
    assert not os.path.exists(os.path.join(base, "sub", "x"))
    assert not os.path.exists(os.path.join(base, "x"))


def test_glb_outputs_load_with_pygltflib(local_run, head):
    import pandas as pd
    import pygltflib
    from PIL import Image

    from dcnn_flame.io.gltf import split_seams

    n_split = len(split_seams(head.faces, head.uv_faces)[0])
    chars = os.path.join(local_run["run"], "characters")
    keys = sorted(os.listdir(chars))
    assert keys == sorted(local_run["good"])
    for key in keys:
        assert set(os.listdir(os.path.join(chars, key))) == CHAR_FILES
        g = pygltflib.GLTF2().load(os.path.join(chars, key, "character.glb"))
        prim = g.meshes[0].primitives[0]
        assert g.accessors[prim.attributes.POSITION].count == n_split
        assert g.accessors[prim.indices].count == 3 * len(head.faces)
        assert len(prim.targets) == len(BANK) and g.meshes[0].extras["targetNames"] == BANK
        assert prim.attributes.TEXCOORD_0 is not None and len(g.images) == 1
        with Image.open(os.path.join(chars, key, "preview.png")) as im:
            assert im.size[0] > 48 and im.size[1] > 48
    # Neutral + morph target reproduces the retargeted mesh of that expression: the GLB's happy
    # target moves the mouth corners (AU12) but not the skull.
    from dcnn_flame.io.gltf import parse_glb

    with open(os.path.join(chars, "hero_00", "character.glb"), "rb") as f:
        glb = parse_glb(f.read())
    d_happy = np.linalg.norm(glb["morph_targets"]["happy"] - glb["vertices"], axis=1)
    d_neutral = np.linalg.norm(glb["morph_targets"]["neutral"] - glb["vertices"], axis=1)
    assert d_happy.max() > 1e-3 and d_neutral.max() < 2e-4  # neutral target = detail only
    df = pd.read_parquet(os.path.join(local_run["run"], "results", "hero_00.parquet"))
    assert glb["extras"]["character_id"] == "hero_00" and glb["extras"]["expressions"] == BANK
    assert df["glb_uri"].iloc[0].endswith("characters/hero_00/character.glb")


def test_results_tables_read_with_pyarrow_and_pandas(local_run):
    import pandas as pd

    run = local_run["run"]
    table = pads.dataset(os.path.join(run, "results"), format="parquet").to_table()
    assert table.schema.names == RESULTS_SCHEMA.names
    assert table.num_rows == NUM_GOOD * (len(BANK) + 1)
    df = pd.read_parquet(os.path.join(run, "results"))
    assert len(df) == table.num_rows
    assert not df.duplicated(["character_id", "expression"]).any()
    for cid, g in df.groupby("character_id"):
        assert set(g["expression"]) == set(BANK) | {"reconstruction"}
        shapes = np.stack(g["shape"].to_numpy())
        assert np.allclose(shapes, shapes[0])  # one identity for every expression
        assert (g["num_images"] == (1 if cid != "mixed" else 1)).all()
    bank = emotions.default_bank()
    happy = df[df["expression"] == "happy"].iloc[0]
    assert np.allclose([happy[c] for c in AU_COLUMNS], bank.vector("happy"), atol=1e-6)
    rec = df[df["expression"] == "reconstruction"]
    assert rec[list(AU_COLUMNS)].isna().all().all()  # no AU detector in this checkpoint
    assert (df["checkpoint"] == local_run["summary"].checkpoint).all() and (df["checkpoint_step"] == 0).all()
    assert (df["reconstruct_ms"] > 0).all() and (df["write_ms"] > 0).all()
    assert {len(p) for p in df["pose"]} == {15} and {len(e) for e in df["expression_params"]} == {50}


def test_bad_inputs_become_failure_rows(local_run):
    import pandas as pd

    run = local_run["run"]
    t = pq.read_table(os.path.join(run, "failures"))
    assert t.schema.names == FAILURES_SCHEMA.names
    f = t.to_pandas()
    bad = local_run["bad"]
    for cid, reason in bad.items():
        rows = f[f["character_id"] == cid]
        image_rows = rows[rows["input_uri"].notna()]
        assert len(image_rows) == 1, (cid, rows)
        if reason is None:
            assert image_rows["reason"].iloc[0] in ("truncated", "corrupt")
        else:
            assert image_rows["reason"].iloc[0] == reason, image_rows["detail"].iloc[0]
        assert rows["detail"].str.len().min() > 5
        assert "no_usable_image" in set(rows["reason"])
        assert not os.path.exists(os.path.join(run, "characters", cid, "_SUCCESS"))
    x = f[f["character_id"] == "../x"]
    assert list(x["reason"]) == ["bad_id"] and list(x["stage"]) == ["plan"] and x["character_key"].isna().all()
    mixed = f[f["character_id"] == "mixed"]
    assert len(mixed) == 1 and mixed["input_uri"].iloc[0].endswith("zz_broken.png")
    assert os.path.exists(os.path.join(run, "characters", "mixed", "_SUCCESS"))
    assert isinstance(pd.read_parquet(os.path.join(run, "failures")), pd.DataFrame)


def test_query_over_job_tables_local(local_run):
    from dcnn_flame.query import ResultsDB

    with ResultsDB(local_run["out"]) as db:
        runs = db.named("runs")
        assert list(runs["run_name"]) == ["e2e"] and int(runs["characters"].iloc[0]) == NUM_GOOD
        above = db.named("au_above", au="au12", threshold=0.5, run="e2e")
        assert set(above["expression"]) == {"happy", "joy", "excitement"}
        assert len(above) == 3 * NUM_GOOD
        reasons = db.named("failures_by_reason", run="e2e").set_index("reason")["failures"].to_dict()
        assert reasons["bad_id"] == 1 and reasons["no_usable_image"] == len(local_run["bad"])
        means = db.named("au_means", run="e2e").set_index("expression")
        assert means.loc["surprise", "au26"] == pytest.approx(0.8)


def test_rerun_rewrites_nothing(local_run):
    from dcnn_flame.generation.pipeline import run

    before = _snapshot(local_run["run"])
    cfg = local_run["cfg"]
    cfg.fail_on_errors = True
    try:
        s = run(cfg)
    finally:
        cfg.fail_on_errors = False
    assert _snapshot(local_run["run"]) == before  # same objects, same modification times
    assert (s.skipped, s.completed, s.failed) == (NUM_GOOD, 0, len(local_run["bad"]))
    assert s.exit_code == 2  # fail_on_errors: failures make the exit status non-zero


def test_rerun_with_another_checkpoint_is_refused(local_run, tmp_path):
    import shutil

    from dcnn_flame.generation.pipeline import run

    other = tmp_path / "other_ckpt"
    shutil.copytree(local_run["cfg"].checkpoint, other)
    cfg = job_config(input_uri=local_run["cfg"].input_uri, manifest_uri=local_run["cfg"].manifest_uri,
                     checkpoint=str(other), output_uri=local_run["out"], name="e2e")
    with pytest.raises(ValueError, match="other settings.*checkpoint"):
        run(cfg)


def test_overwrite_redoes_a_character(ray_local, library, tiny_ckpt, tmp_path, capsys):
    """overwrite=true rewrites complete characters; a partial one (no _SUCCESS) is redone; OBJ
    output and retargeting from a performance; ray_stats prints Ray Data's operator statistics."""
    import shutil

    import pandas as pd

    from dcnn_flame.generation.pipeline import run

    root, good, _ = library
    lib = tmp_path / "lib"
    for cid in good[:2]:
        shutil.copytree(os.path.join(root, cid), lib / cid)
    actor = tmp_path / "actor"
    actor.mkdir()
    shutil.copy(os.path.join(root, good[5], "portrait.png"), actor / "take1.png")
    (actor / "take2.png").write_bytes(b"not an image")  # skipped, with a warning
    cfg = job_config(input_uri=str(lib), checkpoint=tiny_ckpt, output_uri=str(tmp_path / "out"), name="ow",
                     write_obj=True, expressions=["joy", "worry"], performance_uri=str(actor), ray_stats=True)
    assert run(cfg).completed == 2
    printed = capsys.readouterr().out
    assert "performance frame" in printed and "take2.png skipped" in printed
    stats = printed[printed.index("generate: Ray Data statistics of the run"):]
    assert "preprocess_batch" in stats and "Reconstructor" in stats
    run_dir = tmp_path / "out" / "ow"
    assert {f for f in os.listdir(run_dir / "characters" / good[0]) if f.endswith(".obj")} == {
        "neutral_mesh.obj", "joy.obj", "worry.obj", "perf_take1.obj"}
    # Performance retargeting: the actor's frame is an extra morph target on each character.
    from dcnn_flame.io.gltf import parse_glb

    with open(run_dir / "characters" / good[0] / "character.glb", "rb") as f:
        assert list(parse_glb(f.read())["morph_targets"]) == ["joy", "worry", "perf_take1"]
    df = pd.read_parquet(run_dir / "results" / f"{good[0]}.parquet").set_index("expression")
    assert df.loc["perf_take1", "source"] == "performance:take1" and pd.isna(df.loc["perf_take1", "au12"])
    os.remove(run_dir / "characters" / good[1] / "_SUCCESS")  # a character cut off mid-write
    snap = _snapshot(str(run_dir))
    s = run(cfg)
    assert (s.skipped, s.completed) == (1, 1)
    after = _snapshot(str(run_dir))
    assert all(after[k] == v for k, v in snap.items() if k.startswith(f"characters/{good[0]}/"))
    assert after[f"results/{good[1]}.parquet"] != snap[f"results/{good[1]}.parquet"]
    cfg.overwrite = True
    s = run(cfg)
    assert (s.skipped, s.completed) == (0, 2)
    assert _snapshot(str(run_dir))[f"results/{good[0]}.parquet"] != snap[f"results/{good[0]}.parquet"]


def test_s3_output_and_query(ray_local, library, tiny_ckpt, s3_bucket):
    import boto3
    import pandas as pd
    import pygltflib

    from dcnn_flame.generation.pipeline import run
    from dcnn_flame.query import ResultsDB

    root, good, bad = library
    bucket, opts = s3_bucket
    out = f"{bucket}/generated"
    cfg = job_config(input_uri=root, checkpoint=tiny_ckpt, output_uri=out, name="nightly")
    cfg.storage.endpoint_url = opts.endpoint_url
    s = run(cfg)
    assert (s.completed, s.failed, s.plan_failures) == (NUM_GOOD, len(bad), 0)

    client = boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1")
    name = bucket[len("s3://"):]

    def listing():
        objs = client.list_objects_v2(Bucket=name, Prefix="generated/")["Contents"]
        return {o["Key"]: (o["LastModified"], o["ETag"]) for o in objs}

    objs = listing()
    keys = set(objs)
    expected = {"generated/nightly/_RUN.json"}
    for cid in good:
        expected |= {f"generated/nightly/characters/{cid}/{f}" for f in CHAR_FILES}
        expected.add(f"generated/nightly/results/{cid}.parquet")
    expected |= {f"generated/nightly/failures/{cid}.parquet" for cid in list(bad) + ["mixed"]}
    assert keys == expected
    body = client.get_object(Bucket=name, Key="generated/nightly/characters/hero_03/character.glb")["Body"].read()
    g = pygltflib.GLTF2.load_from_bytes(body)
    assert len(g.meshes[0].primitives[0].targets) == len(BANK)

    fs, path = storage.get_fs(f"{out}/nightly/results", opts)
    df = pd.read_parquet(path, filesystem=fs)
    assert len(df) == NUM_GOOD * (len(BANK) + 1)
    assert pq.read_table(io.BytesIO(client.get_object(
        Bucket=name, Key="generated/nightly/failures/bad_blank.parquet")["Body"].read()))["reason"].to_pylist() \
        == ["no_face", "no_usable_image"]
    with ResultsDB(out, opts) as db:
        above = db.named("au_above", au="au26", threshold=0.5)
        assert set(above["expression"]) == {"surprise"} and len(above) == NUM_GOOD
        assert above["glb_uri"].str.startswith(f"{out}/nightly/characters/").all()
        assert dict(db.query("SELECT reason, count(*) AS n FROM failures GROUP BY reason").values)["no_face"] == 1

    s2 = run(cfg)  # rerun: nothing rewritten
    assert (s2.skipped, s2.completed) == (NUM_GOOD, 0)
    assert listing() == objs


@pytest.mark.parametrize("write_stage, actor_calls", [("actor", 1), ("tasks", 1), ("actor", 2)])
def test_killed_worker_outputs_exactly_once(ray_local, library, tiny_ckpt, tmp_path, write_stage, actor_calls):
    """SIGKILL the process writing a character after it wrote the character's files but before
    its _SUCCESS (write_stage=actor: the reconstruction actor, which Ray restarts, retrying the
    batch; tasks: a write task, which Ray retries): every output exists exactly once. With two
    write threads: the batch's other character is being written meanwhile; with actor_calls=2
    the actor may hold a second batch as well (on the device or writing), retried with it."""
    import shutil

    import pandas as pd

    from dcnn_flame.generation.pipeline import run

    root, good, _ = library
    lib = tmp_path / "lib"
    chars = good[:6]
    for cid in chars:
        shutil.copytree(os.path.join(root, cid), lib / cid)
    fault = tmp_path / "fault"
    fault.mkdir()
    cfg = job_config(input_uri=str(lib), checkpoint=tiny_ckpt, output_uri=str(tmp_path / "out"), name="kill",
                     fault_injection=str(fault), batch_size=2, decode_batch_size=2, write_threads=2,
                     write_stage=write_stage, write_batch_size=2, actor_calls=actor_calls)
    result: dict = {}

    def target():
        try:
            result["summary"] = run(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    pid_file = fault / "actor_pid"
    deadline = time.time() + 150
    while not pid_file.exists() and time.time() < deadline and th.is_alive():
        time.sleep(0.1)
    assert pid_file.exists(), result.get("error")
    time.sleep(0.2)
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    (fault / "release").write_text("go")
    th.join(timeout=240)
    assert not th.is_alive(), "the job did not finish after the worker was killed"
    if "error" in result:
        raise result["error"]
    s = result["summary"]
    assert (s.completed, s.failed) == (len(chars), 0)
    run_dir = tmp_path / "out" / "kill"
    for cid in chars:
        assert set(os.listdir(run_dir / "characters" / cid)) == CHAR_FILES  # no temp files, no duplicates
    assert sorted(os.listdir(run_dir / "results")) == sorted(f"{c}.parquet" for c in chars)
    df = pd.read_parquet(run_dir / "results")
    assert len(df) == len(chars) * (len(BANK) + 1) and not df.duplicated(["character_id", "expression"]).any()


def test_write_tasks_to_s3_then_a_rerun_with_the_actor_stage_skips(ray_local, library, tiny_ckpt, s3_bucket,
                                                                   tmp_path):
    """write_stage=tasks writing to the S3 server (the tasks get the driver's filesystem); the
    write stage is not part of the run's identity: a rerun with write_stage=actor skips all."""
    import shutil

    import boto3
    import pandas as pd

    from dcnn_flame.generation.pipeline import run

    root, good, _ = library
    lib = tmp_path / "lib"
    chars = good[:5]
    for cid in chars:
        shutil.copytree(os.path.join(root, cid), lib / cid)
    bucket, opts = s3_bucket
    out = f"{bucket}/tasks"
    cfg = job_config(input_uri=str(lib), checkpoint=tiny_ckpt, output_uri=out, name="t", write_stage="tasks",
                     write_batch_size=2, batch_size=4)
    cfg.storage.endpoint_url = opts.endpoint_url
    s = run(cfg)
    assert (s.completed, s.failed) == (len(chars), 0)
    client = boto3.client("s3", endpoint_url=opts.endpoint_url, region_name="us-east-1")
    objs = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket[len("s3://"):],
                                                                 Prefix="tasks/")["Contents"]}
    expected = {"tasks/t/_RUN.json"} | {f"tasks/t/results/{c}.parquet" for c in chars}
    expected |= {f"tasks/t/characters/{c}/{f}" for c in chars for f in CHAR_FILES}
    assert set(objs) == expected
    fs, path = storage.get_fs(f"{out}/t/results", opts)
    assert len(pd.read_parquet(path, filesystem=fs)) == len(chars) * (len(BANK) + 1)
    cfg.write_stage = "actor"
    s2 = run(cfg)
    assert (s2.skipped, s2.completed) == (len(chars), 0)


@pytest.mark.parametrize("calls", [1, 2])
def test_actor_pool_runs_that_many_calls_of_one_actor_at_once(ray_local, calls):
    """actor_calls is Ray Data's max_concurrent_calls_per_actor with true multi-threading: one
    actor's calls overlap in time with 2 and never with 1 (Ray Data otherwise runs a callable
    class's calls one at a time, whatever max_concurrency its actor has)."""
    import ray

    from dcnn_flame.generation.pipeline import actor_pool

    class Span:  # defined here so that Ray pickles it by value (the test module is not importable there)
        """Records when each call ran, and in which process."""

        def __call__(self, batch):
            t0 = time.time()
            time.sleep(0.4)
            n = len(batch["id"])
            return {"start": [t0] * n, "end": [time.time()] * n, "pid": [os.getpid()] * n}

    ds = ray.data.range(6, override_num_blocks=6).map_batches(Span, batch_size=1, compute=actor_pool(1, calls))
    rows = sorted(ds.take_all(), key=lambda r: r["start"])
    assert len(rows) == 6 and len({r["pid"] for r in rows}) == 1
    overlaps = sum(b["start"] < a["end"] for a, b in zip(rows, rows[1:]))
    if calls == 1:
        assert overlaps == 0
    else:
        assert overlaps >= 2, rows
