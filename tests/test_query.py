"""SQL over results/failures tables, local and on the moto S3 server, checked against pandas."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcnn_flame import query
from dcnn_flame.config import QueryConfig, StorageConfig
from dcnn_flame.constants import AU_COLUMNS
from dcnn_flame.generation.schema import FAILURES_SCHEMA, RESULTS_SCHEMA
from dcnn_flame.io import storage
from dcnn_flame.query import ResultsDB

UTC = dt.timezone.utc
EXPRS = ["neutral", "happy", "sad", "anger"]
# Names sort opposite to time, so "last run" must come from created_at, not the name.
OLD, NEW = "zz-older", "aa-newer"
RUNS = {
    OLD: dict(t0=dt.datetime(2026, 1, 1, 2, 0, tzinfo=UTC), chars=["hero", "villain", "Mulan (2020)"],
              ckpt="s3://ckpt/a", step=100,
              fail=[("ghost", "detect", "no_face"), ("blank", "decode", "empty"), ("blurry", "detect", "no_face")]),
    NEW: dict(t0=dt.datetime(2026, 1, 2, 2, 0, tzinfo=UTC), chars=["hero", "villain", "Mulan (2020)", "mentor"],
              ckpt="s3://ckpt/b", step=200,
              fail=[("ghost", "detect", "no_face"), ("cut", "decode", "truncated"),
                    ("cut2", "decode", "truncated"), ("big", "reconstruct", "oom")]),
}


def _f32(x) -> float:
    return float(np.float32(x))


def _make_rows(seed: int = 0):
    rng = np.random.default_rng(seed)
    results, failures = {}, {}
    for run, spec in RUNS.items():
        t = spec["t0"]
        for cid in spec["chars"]:
            rows = []
            for e in EXPRS:
                t += dt.timedelta(seconds=7)
                row = dict(schema_version=1, run_name=run, character_id=cid, character_key=storage.safe_key(cid),
                           expression=e, intensity=1.0, source="bank", model_version="0.1.0",
                           checkpoint=spec["ckpt"], checkpoint_step=spec["step"], num_images=2,
                           shape=[_f32(x) for x in rng.normal(size=4)],
                           expression_params=[_f32(x) for x in rng.normal(size=3)],
                           pose=[_f32(x) for x in rng.normal(size=15)], detail_code=[0.5, -0.5],
                           glb_uri=f"out/{run}/characters/{storage.safe_key(cid)}/character.glb",
                           obj_uri=None, preview_uri=None, reconstruct_ms=12.5, retarget_ms=1.5, write_ms=3.0,
                           created_at=t)
                row.update({c: _f32(v) for c, v in zip(AU_COLUMNS, rng.uniform(size=len(AU_COLUMNS)))})
                rows.append(row)
            results[(run, storage.safe_key(cid))] = rows
        for cid, stage, reason in spec["fail"]:
            t += dt.timedelta(seconds=3)
            failures[(run, storage.safe_key(cid))] = [dict(
                schema_version=1, run_name=run, character_id=cid, character_key=storage.safe_key(cid),
                input_uri=f"in/{cid}.png", stage=stage, reason=reason, detail=f"{reason} in {cid}", created_at=t)]
    return results, failures


def _parquet(rows, schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def _write(root: str, opts, with_failures: bool = True):
    results, failures = _make_rows()
    for (run, key), rows in results.items():
        storage.atomic_write_bytes(storage.join(root, run, "results", f"{key}.parquet"),
                                   _parquet(rows, RESULTS_SCHEMA), opts)
    if with_failures:
        for (run, key), rows in failures.items():
            storage.atomic_write_bytes(storage.join(root, run, "failures", f"{key}.parquet"),
                                       _parquet(rows, FAILURES_SCHEMA), opts)
    # Things that are not tables must be ignored: meshes and a stray file at the root.
    storage.atomic_write_bytes(storage.join(root, OLD, "characters", "hero", "character.glb"), b"glTF", opts)
    storage.atomic_write_bytes(storage.join(root, "README.txt"), b"hello", opts)
    res = pd.DataFrame([r for rows in results.values() for r in rows])
    fail = pd.DataFrame([r for rows in failures.values() for r in rows])
    return res, fail


@pytest.fixture(params=["local", "s3"])
def tables(request, tmp_path):
    """(uri, StorageOptions, expected results DataFrame, expected failures DataFrame)."""
    if request.param == "local":
        root, opts = str(tmp_path / "out" / "generated"), None
    else:
        bucket, opts = request.getfixturevalue("s3_bucket")
        root = f"{bucket}/studio/out/generated"  # where jobs/generate.py writes under storage.uri
    res, fail = _write(root, opts)
    return root, opts, res, fail


def test_views_union_every_run(tables):
    root, opts, res, fail = tables
    with ResultsDB(root, opts) as db:
        assert db.runs == tuple(sorted([OLD, NEW]))
        n = db.query("SELECT run_name, count(*) AS n FROM results GROUP BY run_name ORDER BY run_name")
        expected = res.groupby("run_name").size().sort_index()
        assert n["n"].tolist() == expected.tolist() and n["run_name"].tolist() == expected.index.tolist()
        assert db.query("SELECT count(*) AS n FROM failures")["n"][0] == len(fail)
        cols = db.query("SELECT * FROM results LIMIT 1").columns.tolist()
        assert set(RESULTS_SCHEMA.names) <= set(cols)
        # Only one run when asked.
    with ResultsDB(root, opts, runs=[NEW]) as db:
        assert db.query("SELECT DISTINCT run_name FROM results")["run_name"].tolist() == [NEW]
        assert db.query("SELECT count(*) AS n FROM failures")["n"][0] == (fail.run_name == NEW).sum()


def test_au_above_matches_pandas(tables):
    root, opts, res, _ = tables
    with ResultsDB(root, opts) as db:
        got = db.named("au_above", au="au12", threshold=0.4, expression="happy")
        exp = res[(res.au12 > 0.4) & (res.expression == "happy")]
        assert len(got) == len(exp) > 0
        assert set(zip(got.run_name, got.character_id)) == set(zip(exp.run_name, exp.character_id))
        assert (np.diff(got["au12"].to_numpy()) <= 0).all()  # strongest first
        np.testing.assert_allclose(sorted(got["au12"]), sorted(exp["au12"]), rtol=1e-6)
        # Another AU, spelled differently, all expressions, one run.
        got = db.named("au_above", au="AU04", threshold=0.7, run=OLD)
        exp = res[(res.au04 > 0.7) & (res.run_name == OLD)]
        assert len(got) == len(exp) > 0 and "au04" in got.columns
        # Defaults: au12 > 0.5.
        assert len(db.named("au_above")) == int((res.au12 > 0.5).sum())


def test_failures_by_reason_last_run_and_given_run(tables):
    root, opts, _, fail = tables
    with ResultsDB(root, opts) as db:
        got = db.named("failures_by_reason")
        assert set(got.run_name) == {NEW}  # the newer run, though its name sorts first
        exp = fail[fail.run_name == NEW].groupby("reason").size()
        assert dict(zip(got.reason, got.failures)) == exp.to_dict()
        assert got.failures.tolist() == sorted(got.failures.tolist(), reverse=True)
        assert got.set_index("reason").loc["truncated", "characters"] == 2
        got = db.named("failures_by_reason", run=OLD)
        exp = fail[fail.run_name == OLD].groupby("reason").size()
        assert dict(zip(got.reason, got.failures)) == exp.to_dict() == {"no_face": 2, "empty": 1}
        assert got.set_index("reason").loc["no_face", "stages"] == "detect"


def test_by_checkpoint_and_au_means(tables):
    root, opts, res, _ = tables
    with ResultsDB(root, opts) as db:
        got = db.named("by_checkpoint", checkpoint="s3://ckpt/a")
        assert len(got) == (res.checkpoint == "s3://ckpt/a").sum() and set(got.run_name) == {OLD}
        assert len(db.named("by_checkpoint", checkpoint="s3://ckpt/b", step=100)) == 0
        assert len(db.named("by_checkpoint", checkpoint="s3://ckpt/b", step=200)) == (res.run_name == NEW).sum()
        means = db.named("au_means").set_index("expression")
        exp = res.groupby("expression")[list(AU_COLUMNS)].mean()
        assert sorted(means.index) == sorted(EXPRS)
        np.testing.assert_allclose(means.loc[exp.index, list(AU_COLUMNS)].to_numpy(), exp.to_numpy(), rtol=1e-5)
        assert means.loc["happy", "n"] == (res.expression == "happy").sum()
        one = db.named("au_means", run=OLD, expression="sad")
        sub = res[(res.run_name == OLD) & (res.expression == "sad")]
        assert len(one) == 1 and one.n[0] == len(sub)
        np.testing.assert_allclose(one["au25"][0], sub.au25.mean(), rtol=1e-5)


def test_runs_query_and_arbitrary_sql(tables):
    root, opts, res, fail = tables
    with ResultsDB(root, opts) as db:
        runs = db.named("runs")
        assert runs.run_name.tolist() == [OLD, NEW]  # by time
        assert runs.set_index("run_name").loc[NEW, "characters"] == len(RUNS[NEW]["chars"])
        assert runs.set_index("run_name").loc[OLD, "failures"] == len(RUNS[OLD]["fail"])
        got = db.query("SELECT character_id, max(au06) AS m FROM results WHERE run_name = $r GROUP BY ALL "
                       "ORDER BY character_id", {"r": NEW})
        exp = res[res.run_name == NEW].groupby("character_id").au06.max().sort_index()
        assert got.character_id.tolist() == exp.index.tolist()
        np.testing.assert_allclose(got.m, exp.to_numpy(), rtol=1e-6)
        shape = db.query("SELECT shape, pose FROM results LIMIT 1")
        assert len(shape["shape"][0]) == 4 and len(shape["pose"][0]) == 15


def test_parameters_are_bound_not_pasted(tmp_path):
    root = str(tmp_path / "out")
    _write(root, None)
    with ResultsDB(root) as db:
        assert len(db.named("au_above", expression="happy' OR '1'='1", threshold=0.0)) == 0
        assert len(db.named("by_checkpoint", checkpoint="x' OR 1=1 --")) == 0
        for bad in ("au12; DROP VIEW results", "au03", "expression", 12.5, True):
            with pytest.raises(ValueError, match="unknown AU"):
                db.named("au_above", au=bad)
        with pytest.raises(ValueError, match="threshold must be a number"):
            db.named("au_above", threshold="0.5 OR 1=1")
        with pytest.raises(ValueError, match=r"does not take \['au'\]"):
            db.named("failures_by_reason", au="au12")
        with pytest.raises(ValueError, match="unknown named query 'nope'.*au_above"):
            db.named("nope")
        with pytest.raises(ValueError, match="needs checkpoint"):
            db.named("by_checkpoint")
        assert query.au_column(12) == query.au_column("AU_12") == "au12"
        assert db.query("SELECT count(*) AS n FROM results")["n"][0] > 0  # views still there


def test_missing_failures_folder_gives_empty_typed_view(tmp_path):
    root = str(tmp_path / "out")
    _write(root, None, with_failures=False)
    with ResultsDB(root) as db:
        f = db.query("SELECT * FROM failures")
        assert len(f) == 0 and f.columns.tolist() == FAILURES_SCHEMA.names
        assert len(db.named("failures_by_reason")) == 0
        runs = db.named("runs")
        assert runs.failures.tolist() == [0, 0]


def test_no_outputs_at_all(tmp_path):
    """An existing prefix without runs gives empty typed views; a prefix that does not exist (a
    typo) or one run's own folder is refused, saying what to give."""
    with pytest.raises(FileNotFoundError, match="does not exist; give the batch job's output prefix"):
        ResultsDB(str(tmp_path / "nothing_here"))
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "_RUN.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is one run's folder.*runs=\[r1\]"):
        ResultsDB(str(tmp_path / "r1"))
    (tmp_path / "empty").mkdir()
    with ResultsDB(str(tmp_path / "empty")) as db:
        assert db.runs == ()
        r = db.query("SELECT * FROM results")
        assert len(r) == 0 and r.columns.tolist() == RESULTS_SCHEMA.names
        assert len(db.named("au_means")) == 0
    with pytest.raises(ValueError, match=r"run\(s\) \['x'\] not found"):
        ResultsDB(str(tmp_path), runs=["x"])


def test_older_files_without_new_columns_read_as_null(tmp_path):
    root = tmp_path / "out"
    rows = _make_rows()[0][(OLD, "hero")]
    table = pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA).drop_columns(["write_ms", "preview_uri"])
    (root / OLD / "results").mkdir(parents=True)
    pq.write_table(table, root / OLD / "results" / "hero.parquet")
    with ResultsDB(str(root)) as db:
        got = db.query("SELECT count(*) AS n, count(write_ms) AS w FROM results")
        assert got.n[0] == len(rows) and got.w[0] == 0


def test_write_csv_and_parquet(tables, tmp_path):
    root, opts, res, _ = tables
    with ResultsDB(root, opts) as db:
        table = db.named_arrow("au_means")
        full = db.query_arrow("SELECT character_id, expression, shape, created_at FROM results ORDER BY ALL")
    base = root if opts is not None else str(tmp_path)
    pq_uri = query.write_table(table, storage.join(base, "reports", "means.parquet"), storage_options=opts)
    back = pq.read_table(io.BytesIO(storage.read_bytes(pq_uri, opts)))
    assert back.equals(table)
    csv_uri = query.write_table(full, storage.join(base, "reports", "rows.data"), fmt="csv", storage_options=opts)
    df = pd.read_csv(io.BytesIO(storage.read_bytes(csv_uri, opts)))
    assert len(df) == len(res) and df.columns.tolist() == ["character_id", "expression", "shape", "created_at"]
    shapes = [json.loads(s) for s in df["shape"]]
    np.testing.assert_allclose(shapes[0], full.column("shape")[0].as_py(), rtol=1e-6)
    with pytest.raises(ValueError, match="end it with .csv or .parquet"):
        query.write_table(table, str(tmp_path / "x.txt"))


def test_format_table_is_aligned():
    df = pd.DataFrame({"expression": ["happy", "sad", "anger"], "n": [10, 2, 300], "au12": [0.5, 0.123456, 1.0]})
    text = query.format_table(df)
    lines = text.splitlines()
    assert lines[-1] == "(3 rows)"
    assert len({len(line) for line in lines[:-1]}) == 1  # every line has the same width
    assert "0.1235" in text and "expression" in lines[0]
    short = query.format_table(df, max_rows=2).splitlines()
    assert len(short) == 4 and short[-1] == "(3 rows, showing the first 2)"
    assert query.format_table(df.iloc[:0]).endswith("(0 rows)")


def test_run_with_config(tables, tmp_path, capsys):
    root, opts, res, fail = tables
    # No uri: <storage.uri>/generated, where the batch job writes by default.
    st = StorageConfig(uri=root.rsplit("/", 1)[0], endpoint_url=opts.endpoint_url if opts else None)
    df = query.run(QueryConfig(storage=st, named="au_above", au="au12", threshold=0.5, expression="happy"))
    assert len(df) == int(((res.au12 > 0.5) & (res.expression == "happy")).sum())
    printed = capsys.readouterr().out
    assert "character_id" in printed and f"({len(df)} rows" in printed
    out = str(tmp_path / "fail.csv")
    df = query.run(QueryConfig(uri=root, storage=st, named="failures_by_reason", out=out))
    assert "wrote" in capsys.readouterr().out
    assert pd.read_csv(out).failures.sum() == (fail.run_name == NEW).sum()
    df = query.run(QueryConfig(storage=st, sql="SELECT count(*) AS n FROM results"))
    assert df.n[0] == len(res)
    default = query.run(QueryConfig(storage=st))  # no query given: the runs overview
    assert default.run_name.tolist() == [OLD, NEW]
    with pytest.raises(ValueError, match="not both"):
        query.run(QueryConfig(storage=st, named="runs", sql="SELECT 1"))
    with pytest.raises(ValueError, match="would be ignored"):
        query.run(QueryConfig(storage=st, sql="SELECT 1", threshold=0.3))


@pytest.mark.slow  # a fresh interpreter importing hydra, duckdb and pyarrow
def test_cli_subprocess(tmp_path):
    root = str(tmp_path / "out")
    _, fail = _write(root, None)
    repo = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "by_reason.parquet"
    env = dict(os.environ, DCNN_FLAME_HYDRA_DIR=str(tmp_path / "hydra"))
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "query.py"), f"uri={root}",
                           "named=failures_by_reason", f"run={OLD}", f"out={out}"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = pq.read_table(out).to_pandas()
    assert dict(zip(got.reason, got.failures)) == fail[fail.run_name == OLD].groupby("reason").size().to_dict()


def test_files_written_after_open_are_seen(tables):
    root, opts, res, _ = tables
    rows = _make_rows()[0][(NEW, "hero")]
    for r in rows:
        r["character_id"], r["character_key"] = "late", "late"
    with ResultsDB(root, opts) as db:
        before = db.query("SELECT count(*) AS n FROM results")["n"][0]
        storage.atomic_write_bytes(storage.join(root, NEW, "results", "late.parquet"),
                                   _parquet(rows, RESULTS_SCHEMA), opts)
        after = db.query("SELECT count(*) AS n FROM results")["n"][0]
    assert before == len(res) and after == len(res) + len(rows)


def test_run_folders_named_with_underscore_glob_roots_and_several_statements(tmp_path, capsys):
    """A run named _backfill (it has its _RUN.json) is a run, another tool's _temporary is not; a
    root with glob characters and SQL with several statements are refused instead of silently
    giving nothing / the last statement's table; failures_by_reason says which run it picked."""
    root = tmp_path / "out"
    _write(str(root), None)
    for name in ("_backfill", "_temporary"):
        (root / name / "results").mkdir(parents=True)
    (root / "_backfill" / "_RUN.json").write_text("{}")
    with ResultsDB(str(root)) as db:
        assert db.runs == tuple(sorted(["_backfill", OLD, NEW]))
        with pytest.raises(ValueError, match="2 statements"):
            db.query("SELECT count(*) FROM results; SELECT count(*) FROM failures")
        assert db.last_run() == NEW
    odd = tmp_path / "o[1]"
    odd.mkdir()
    with pytest.raises(ValueError, match="file pattern"):
        ResultsDB(str(odd))
    query.run(QueryConfig(uri=str(root), named="failures_by_reason"))
    assert f"failures of run '{NEW}', the last one written" in capsys.readouterr().out
