"""SQL over the batch job's results and failures tables, wherever they are (DuckDB).

The batch job writes ``<out>/<run>/results/*.parquet`` and ``<out>/<run>/failures/*.parquet``
(schemas in :mod:`dcnn_flame.generation.schema`). :class:`ResultsDB` exposes them as two
DuckDB views, ``results`` and ``failures``, each the union over every run (or the runs
asked for). ``<out>`` may be a local path or any fsspec URI: for object stores the fsspec
filesystem (s3fs for ``s3://``) is registered with DuckDB, since DuckDB's own S3 extension
is not needed or downloaded. A run without a failures folder, or no runs at all, gives an
empty view with the full schema, so queries never fail for lack of files (but a ``uri`` that
does not exist, or that is one run's folder, is refused: a typo must not look like "no
results"). Both views also always carry every column of the current schema (older files give
NULLs).

Named queries answer the common questions (see :data:`NAMED_QUERIES`); their parameters are
bound by DuckDB (prepared ``$name`` parameters) and AU columns are checked against
``constants.AU_COLUMNS``, so no user string is ever pasted into SQL. Arbitrary SQL
(``ResultsDB.query``) runs with the caller's own file access: do not expose it to
untrusted users.

    db = ResultsDB("s3://studio/out", StorageOptions(endpoint_url=...))
    db.named("au_above", au="au12", threshold=0.6, expression="happy")
    db.query("SELECT expression, count(*) FROM results GROUP BY ALL")

Runs are discovered when the database is opened; files added later to known runs are seen
by the next query (each query lists the runs' folders again).
Cost: every file of a view is one Parquet footer read per query (``union_by_name`` reads all
footers to unify older schemas), so queries over very many per-character files on an object
store take a while; copy the tables into one file (``out=...parquet``) for repeated analysis.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import pyarrow as pa

from dcnn_flame.constants import AU_COLUMNS, AU_IDS
from dcnn_flame.generation.schema import FAILURES_SCHEMA, RESULTS_SCHEMA
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

if TYPE_CHECKING:
    import pandas as pd

    from dcnn_flame.config import QueryConfig

TABLES: dict[str, pa.Schema] = {"results": RESULTS_SCHEMA, "failures": FAILURES_SCHEMA}
# Characters that DuckDB/fsspec globbing would interpret; such run folders are skipped.
_GLOB_CHARS = re.compile(r"[*?\[\]{}]")
_AU_RE = re.compile(r"^(?:au)?_?0*(\d+)$", re.IGNORECASE)


def au_column(value: Any) -> str:
    """The AU column for ``value`` ("au12", "AU12", "12" or 12 -> "au12"); raises otherwise.

    The returned string is the member of ``constants.AU_COLUMNS``, never the user's string.
    """
    m = _AU_RE.match(str(value).strip()) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    au = int(m.group(1)) if m else None
    if au not in AU_IDS:
        raise ValueError(f"unknown AU {value!r}: use one of {', '.join(AU_COLUMNS)}")
    return AU_COLUMNS[AU_IDS.index(au)]


def _sql_str(s: str) -> str:
    """A SQL string literal (only used for paths found by listing storage, never user input)."""
    return "'" + s.replace("'", "''") + "'"


def _own_fs(uri: str, options: StorageOptions):
    """(filesystem, path) with a private instance, so clearing its listing cache before each
    query (new files must be seen) does not touch the instance the rest of the process uses."""
    import fsspec

    proto = storage.protocol_of(uri)
    if proto == "file":
        return storage.get_fs(uri, options)
    fs = fsspec.filesystem(proto, skip_instance_cache=True, **options.for_protocol(proto))
    return fs, fs._strip_protocol(uri)


class ResultsDB:
    """DuckDB views ``results`` and ``failures`` over the batch outputs under ``uri``.

    Args:
        uri: the batch job's output prefix ``<out>`` (local path, file://, s3://, gs://).
        storage_options: object-store settings (endpoint, region, anon).
        runs: only these run folders (None = every run under ``uri``).
    """

    def __init__(self, uri: str, storage_options: Optional[StorageOptions] = None,
                 runs: Optional[Sequence[str]] = None) -> None:
        import duckdb

        self.uri = storage.resolve(uri)
        if _GLOB_CHARS.search(self.uri.split("://", 1)[-1]):
            raise ValueError(f"uri {self.uri!r} contains one of * ? [ ] {{ }}, which DuckDB would read as a "
                             f"file pattern; move or link the outputs to a path without them")
        self._options = storage_options or StorageOptions()
        self._con = duckdb.connect(":memory:")
        # Never try to download extensions (clusters and CI are often offline).
        self._con.execute("SET autoinstall_known_extensions = false")
        self._fs, root = _own_fs(self.uri, self._options)
        self._proto = storage.protocol_of(self.uri)
        if not storage.is_local(self.uri):
            self._con.register_filesystem(self._fs)
        self._root = root.rstrip("/")
        self._tmp = tempfile.TemporaryDirectory(prefix="dcnn_flame_query_")
        self.runs: tuple[str, ...] = self._discover_runs(runs)
        for table, schema in TABLES.items():
            self._create_view(table, schema)

    # -- setup ---------------------------------------------------------------------------
    def _uri_of(self, path: str) -> str:
        return path if self._proto == "file" else f"{self._proto}://{path}"

    def _discover_runs(self, wanted: Optional[Sequence[str]]) -> tuple[str, ...]:
        from dcnn_flame.generation.pipeline import RUN_FILE

        if not self._fs.isdir(self._root):
            raise FileNotFoundError(
                f"uri {self.uri!r} does not exist; give the batch job's output prefix, the folder holding "
                f"one folder per run (jobs/generate.py writes to <storage.uri>/generated by default)")
        if self._fs.exists(f"{self._root}/{RUN_FILE}"):
            parent, name = self.uri.rstrip("/").rsplit("/", 1)
            raise ValueError(f"uri {self.uri!r} is one run's folder; give the folder holding the runs: "
                             f"uri={parent} runs=[{name}]")
        found = []
        for entry in self._fs.ls(self._root, detail=True):
            if entry.get("type") == "directory":
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if name.startswith(".") or _GLOB_CHARS.search(name):
                    continue  # temp folders; names DuckDB would read as patterns
                if name.startswith("_") and not self._fs.exists(f"{self._root}/{name}/{RUN_FILE}"):
                    continue  # e.g. _temporary folders of other tools; a run named _x has its _RUN.json
                found.append(name)
        found.sort()
        if wanted is None:
            return tuple(found)
        missing = [r for r in wanted if r not in found]
        if missing:
            raise ValueError(f"run(s) {missing} not found under {self.uri}; available runs: {found or 'none'}")
        return tuple(dict.fromkeys(wanted))

    def _create_view(self, table: str, schema: pa.Schema) -> None:
        # The empty table of the current schema (written as Parquet, so its types are the
        # ones DuckDB reads from Parquet) is always part of the union: the view has every
        # column even with no files, or with files of an older schema.
        empty = os.path.join(self._tmp.name, f"{table}_empty.parquet")
        import pyarrow.parquet as pq

        pq.write_table(schema.empty_table(), empty)
        sources = [_sql_str(empty)]
        for run in self.runs:
            pattern = f"{self._root}/{run}/{table}/*.parquet"
            if self._fs.glob(pattern):
                sources.append(_sql_str(self._uri_of(pattern)))
        self._con.execute(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{', '.join(sources)}], "
            "union_by_name = true)")

    def close(self) -> None:
        self._con.close()
        self._tmp.cleanup()

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries -------------------------------------------------------------------------
    def _relation(self, sql: str, params: Optional[Mapping[str, Any]]):
        # One statement: DuckDB would run them all and return only the last one's result.
        statements = self._con.extract_statements(sql)
        if len(statements) > 1:
            raise ValueError(f"the SQL holds {len(statements)} statements; give one (a query returns one table)")
        # Listings are cached within a query (one LIST per run folder, then HEADs come from
        # the cache) but not across queries.
        self._fs.invalidate_cache()
        return self._con.sql(sql, params=dict(params) if params else None)

    def query_arrow(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> pa.Table:
        """Run ``sql`` (named ``$param`` values from ``params``) and return an Arrow table."""
        rel = self._relation(sql, params)
        if rel is None:  # a statement without a result (DDL)
            return pa.table({})
        to_arrow = getattr(rel, "to_arrow_table", None) or rel.arrow
        return to_arrow()

    def query(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> "pd.DataFrame":
        """Run ``sql`` and return a pandas DataFrame."""
        import pandas as pd

        rel = self._relation(sql, params)
        return pd.DataFrame() if rel is None else rel.df()

    def last_run(self) -> Optional[str]:
        """The run that wrote the most recent row (results or failures), as ``failures_by_reason``
        picks it without ``run``; None when no run has rows."""
        t = self.query_arrow(_LAST_RUN)
        return t.column(0)[0].as_py() if t.num_rows else None

    def named_arrow(self, name: str, **params: Any) -> pa.Table:
        """A named query (:data:`NAMED_QUERIES`) as an Arrow table."""
        sql, bound = build_named(name, **params)
        return self.query_arrow(sql, bound)

    def named(self, name: str, **params: Any) -> "pd.DataFrame":
        """A named query (:data:`NAMED_QUERIES`) as a pandas DataFrame."""
        sql, bound = build_named(name, **params)
        return self.query(sql, bound)


# -- named queries -----------------------------------------------------------------------
def _opt_str(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _q_runs() -> tuple[str, dict]:
    return ("""
WITH r AS (SELECT run_name, count(DISTINCT character_id) AS characters, count(*) AS results,
                  min(created_at) AS first_at, max(created_at) AS last_at
           FROM results GROUP BY run_name),
     f AS (SELECT run_name, count(*) AS failures, min(created_at) AS first_at, max(created_at) AS last_at
           FROM failures GROUP BY run_name)
SELECT run_name, coalesce(r.characters, 0) AS characters, coalesce(r.results, 0) AS results,
       coalesce(f.failures, 0) AS failures, least(r.first_at, f.first_at) AS first_at,
       greatest(r.last_at, f.last_at) AS last_at
FROM r FULL OUTER JOIN f USING (run_name)
ORDER BY last_at, run_name""", {})


def _q_au_above(au: Any = "au12", threshold: Any = 0.5, expression: Any = None, run: Any = None) -> tuple[str, dict]:
    col = au_column(au)  # a constant from AU_COLUMNS, safe to name in SQL
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    params: dict[str, Any] = {"threshold": float(threshold)}
    clauses = [f"{col} > $threshold"]
    if _opt_str("expression", expression) is not None:
        clauses.append("expression = $expression")
        params["expression"] = expression
    if _opt_str("run", run) is not None:
        clauses.append("run_name = $run")
        params["run"] = run
    return (f"""
SELECT run_name, character_id, expression, intensity, {col}, glb_uri
FROM results {_where(clauses)}
ORDER BY {col} DESC, run_name, character_id, expression""", params)


#: The last run = the one that wrote the most recent row (results or failures), so a resumed run
#: counts as the latest; ties go to the greater run name.
_LAST_RUN = """
    SELECT run_name FROM (SELECT run_name, created_at FROM results
                          UNION ALL SELECT run_name, created_at FROM failures)
    GROUP BY run_name ORDER BY max(created_at) DESC NULLS LAST, run_name DESC LIMIT 1"""


def _q_failures_by_reason(run: Any = None) -> tuple[str, dict]:
    if _opt_str("run", run) is not None:
        target, params = "$run", {"run": run}
    else:
        target, params = f"({_LAST_RUN})", {}
    return (f"""
SELECT run_name, reason, count(*) AS failures, count(DISTINCT character_id) AS characters,
       string_agg(DISTINCT stage, ',' ORDER BY stage) AS stages, min(detail) AS example_detail
FROM failures
WHERE run_name = {target}
GROUP BY run_name, reason
ORDER BY failures DESC, reason""", params)


def _q_by_checkpoint(checkpoint: Any = None, step: Any = None, run: Any = None) -> tuple[str, dict]:
    if _opt_str("checkpoint", checkpoint) is None:
        raise ValueError("by_checkpoint needs checkpoint=<checkpoint URI as stored in results.checkpoint>")
    params: dict[str, Any] = {"checkpoint": checkpoint}
    clauses = ["checkpoint = $checkpoint"]
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an integer, got {step!r}")
        clauses.append("checkpoint_step = $step")
        params["step"] = step
    if _opt_str("run", run) is not None:
        clauses.append("run_name = $run")
        params["run"] = run
    return (f"""
SELECT run_name, character_id, expression, intensity, checkpoint, checkpoint_step,
       glb_uri, obj_uri, preview_uri, created_at
FROM results {_where(clauses)}
ORDER BY run_name, character_id, expression""", params)


def _q_au_means(run: Any = None, expression: Any = None) -> tuple[str, dict]:
    params: dict[str, Any] = {}
    clauses = []
    if _opt_str("run", run) is not None:
        clauses.append("run_name = $run")
        params["run"] = run
    if _opt_str("expression", expression) is not None:
        clauses.append("expression = $expression")
        params["expression"] = expression
    means = ", ".join(f"avg({c}) AS {c}" for c in AU_COLUMNS)
    return (f"""
SELECT expression, count(*) AS n, {means}
FROM results {_where(clauses)}
GROUP BY expression ORDER BY expression""", params)


@dataclass(frozen=True)
class NamedQuery:
    """A parameterised query: ``build(**params) -> (sql, bound parameters)``."""

    description: str
    params: tuple[str, ...]
    build: Callable[..., tuple[str, dict]]


NAMED_QUERIES: dict[str, NamedQuery] = {
    "runs": NamedQuery("runs with characters, result and failure counts and time span", (), _q_runs),
    "au_above": NamedQuery("rows whose AU column `au` (default au12) is above `threshold` (default 0.5), "
                           "optionally for one `expression` and `run`",
                           ("au", "threshold", "expression", "run"), _q_au_above),
    "failures_by_reason": NamedQuery("failures of the last run (latest created_at) or of `run`, grouped by "
                                     "reason with counts", ("run",), _q_failures_by_reason),
    "by_checkpoint": NamedQuery("outputs made with `checkpoint` (optionally `step`, `run`)",
                                ("checkpoint", "step", "run"), _q_by_checkpoint),
    "au_means": NamedQuery("per-expression mean of every AU column (optionally one `run`/`expression`)",
                           ("run", "expression"), _q_au_means),
}


def build_named(name: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """SQL and bound parameters of named query ``name``; unknown names or parameters raise."""
    if name not in NAMED_QUERIES:
        raise ValueError(f"unknown named query {name!r}; available: {', '.join(NAMED_QUERIES)}")
    q = NAMED_QUERIES[name]
    extra = sorted(set(params) - set(q.params))
    if extra:
        raise ValueError(f"{name} does not take {extra}; its parameters: {list(q.params) or 'none'}")
    return q.build(**params)


# -- output ------------------------------------------------------------------------------
def format_table(df: "pd.DataFrame", max_rows: int = 50, max_colwidth: int = 48) -> str:
    """An aligned text table of ``df`` for the terminal (first ``max_rows`` rows)."""
    if df.shape[1] == 0:
        return "(no columns)"
    if len(df) == 0:
        return "  ".join(map(str, df.columns)) + "\n(0 rows)"
    shown = df.head(max_rows) if max_rows > 0 else df
    text = shown.to_string(index=False, max_colwidth=max_colwidth,
                           float_format=lambda x: f"{x:.4g}")
    more = f", showing the first {len(shown)}" if len(shown) < len(df) else ""
    return f"{text}\n({len(df)} rows{more})"


def _csv_ready(table: pa.Table) -> "pd.DataFrame":
    """Nested columns (lists, e.g. shape) become JSON text so CSV cells stay one value each."""
    df = table.to_pandas()
    for f in table.schema:
        if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type) or pa.types.is_large_list(f.type) \
                or pa.types.is_struct(f.type) or pa.types.is_map(f.type):
            df[f.name] = [None if v is None else json.dumps(v) for v in table.column(f.name).to_pylist()]
    return df


def output_format(out: str, fmt: Optional[str] = None) -> str:
    """"csv" or "parquet": ``fmt`` if given, else from the suffix of ``out``."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', got {fmt!r}")
        return fmt
    low = out.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"cannot tell the output format of {out!r}: end it with .csv or .parquet, or set format")


def write_table(table: pa.Table, out: str, fmt: Optional[str] = None,
                storage_options: Optional[StorageOptions] = None) -> str:
    """Write ``table`` as CSV or Parquet to a path or URI (atomically); returns the URI."""
    fmt = output_format(out, fmt)
    if fmt == "csv":
        data = _csv_ready(table).to_csv(index=False).encode("utf-8")
    else:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
    return storage.atomic_write_bytes(out, data, storage_options)


def _named_params(cfg: "QueryConfig") -> dict[str, Any]:
    values = {"au": cfg.au, "threshold": cfg.threshold, "expression": cfg.expression, "run": cfg.run,
              "checkpoint": cfg.checkpoint, "step": cfg.step}
    return {k: v for k, v in values.items() if v is not None}


def run(cfg: "QueryConfig") -> "pd.DataFrame":
    """The query job: open the tables, run one named query or SQL, print or write the result."""
    opts = StorageOptions(cfg.storage.endpoint_url, cfg.storage.region, cfg.storage.anon)
    uri = cfg.uri or storage.join(cfg.storage.root(), "generated")  # where jobs/generate.py writes by default
    if cfg.sql and cfg.sql_file:
        raise ValueError("give sql or sql_file, not both")
    sql = cfg.sql or (storage.read_bytes(cfg.sql_file, opts).decode("utf-8") if cfg.sql_file else None)
    if sql and cfg.named:
        raise ValueError(f"give either named={cfg.named} or sql, not both")
    if sql and _named_params(cfg):
        raise ValueError(f"{sorted(_named_params(cfg))} are parameters of named queries; with sql they "
                         "would be ignored: write the values into the SQL instead")
    with ResultsDB(uri, opts, runs=cfg.runs) as db:
        if sql:
            table = db.query_arrow(sql)
        else:
            params = _named_params(cfg)
            if cfg.named == "failures_by_reason" and params.get("run") is None:
                last = db.last_run()
                print(f"query: failures of run {last!r}, the last one written (run=<name> for another)"
                      if last else "query: no run has written rows yet")
            table = db.named_arrow(cfg.named or "runs", **params)
    if cfg.out:
        written = write_table(table, cfg.out, cfg.format, opts)
        print(f"wrote {table.num_rows} rows to {written}")
    df = table.to_pandas()
    if not cfg.out:
        print(format_table(df, cfg.max_rows))
    return df
