"""The Ray Tune driver of jobs/tune.py: one Ray Train run per trial, then a table and a plot.

    run(cfg) = init Ray -> default data if needed -> Tuner(trial function, grid) .fit() or
               Tuner.restore(...) -> trials.parquet, summary.parquet, summary.md, plot.png

The Ray 2.60 way of combining Tune and Train (../shared/RAY.md): the Tune trainable is a plain
function that builds and fits a TorchTrainer; a Train callback (:class:`ScoreReporter`, a
``TuneReportCallback``) forwards the workers' validation reports to Tune with the trial's score
added, so ASHA can stop bad trials. Each trial is a training run named by its trial id under
``<storage.uri>/tune/<name>/trials/runs/<trial_id>``: a restored search resumes an unfinished
trial from that run's last checkpoint, exactly like rerunning jobs/train.py.

Trials need ``train.trainer.num_workers >= 1``: Train's in-process local mode (0 workers) has no
callbacks and its ``ray.train`` calls are refused inside a Tune function. Leave CPUs free for Ray
Data (reading the shards): with every CPU taken by trial functions and workers the data stage
cannot run and the trials stall; ``max_concurrent_trials`` bounds this.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import pandas as pd

from dcnn_flame.config import TrainConfig, TuneJobConfig
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions
from dcnn_flame.tuning import report, spaces
from dcnn_flame.tuning.overrides import apply_overrides

__all__ = ["SCORE", "TuneSummary", "experiment_name", "experiment_uri", "trial_train_config", "score_of",
           "run"]

SCORE = "score"
TaskFactory = Callable[[TrainConfig], Any]


@dataclass
class TuneSummary:
    """What a search produced."""

    experiment_uri: str
    """<storage.uri>/tune/<name>."""
    trials: pd.DataFrame
    """One row per trial: point, trial_id, status, config values, final metrics, score."""
    summary: pd.DataFrame
    """One row per grid point / variant: n, <metric>_mean, <metric>_std."""
    best_point: Optional[str]
    """The point with the lowest mean score (None when no trial has one)."""
    files: dict[str, str]
    """Written files by kind: trials, summary, markdown, plot."""
    markdown: str
    """The printed Markdown table."""
    seconds: float
    """Wall time of the search (this invocation)."""


def experiment_name(cfg: TuneJobConfig) -> str:
    """The experiment's name: ``cfg.name`` or the search's name (a safe key)."""
    name = cfg.name or cfg.search.name
    if not name or storage.safe_key(name) != name:
        raise ValueError(f"experiment name {name!r} must be a non-empty [A-Za-z0-9._-] key")
    return name


def experiment_uri(cfg: TuneJobConfig) -> str:
    """Resolved ``<storage.uri>/tune/<name>``."""
    return storage.join(storage.resolve(cfg.storage.root()), "tune", experiment_name(cfg))


def _options(cfg: TuneJobConfig) -> StorageOptions:
    return StorageOptions(cfg.storage.endpoint_url, cfg.storage.region, cfg.storage.anon)


def trial_train_config(cfg: TuneJobConfig, trial_config: Mapping[str, Any], trial_id: str) -> TrainConfig:
    """The TrainConfig of one trial: the base run with the trial's overrides, named by its id,
    stored under the experiment (``trials/runs/<trial_id>``)."""
    train = apply_overrides(cfg.train, spaces.trial_overrides(cfg.search, dict(trial_config)))
    train.name = storage.safe_key(trial_id)
    train.storage = dataclasses.replace(cfg.storage, uri=storage.join(experiment_uri(cfg), "trials"))
    train.ray = copy.deepcopy(cfg.ray)
    return train


def score_of(metrics: Mapping[str, Any], weights: Mapping[str, float], offset: float) -> Optional[float]:
    """``offset + sum(w * metrics[k])``; None when a weighted metric is missing or not finite."""
    total = float(offset)
    for key, w in weights.items():
        v = metrics.get(key)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return None
        total += float(w) * float(v)
    return total


def _score_reporter(weights: dict[str, float], offset: float):
    """A ``TuneReportCallback`` forwarding only reports that carry every score metric (the
    validation reports), with ``score`` added. Built inside the trial (it needs the Tune session)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ScoreReporter(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            score = score_of(metrics[0], weights, offset)
            if score is None:
                return
            metrics = [{**metrics[0], SCORE: score}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ScoreReporter()


def _trial(config: dict, *, job: TuneJobConfig, task_factory: Optional[TaskFactory]) -> None:
    """The Tune trainable: build this trial's TorchTrainer and fit it."""
    from ray import tune

    from dcnn_flame.training.trainer import build_trainer, fit, make_task

    train = trial_train_config(job, config, tune.get_context().get_trial_id())
    task = (task_factory or make_task)(train)
    fit(build_trainer(train, task, callbacks=[_score_reporter(dict(job.score), job.score_offset)]))


def _tune_objects(cfg: TuneJobConfig, task_factory: Optional[TaskFactory], stopper=None):
    from ray import tune

    from dcnn_flame.io.arrow_fs import arrow_filesystem, strip_protocol

    trainable = tune.with_parameters(_trial, job=cfg, task_factory=task_factory)
    scheduler = None
    if cfg.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="step", grace_period=cfg.asha_grace_period,
                                  reduction_factor=cfg.asha_reduction_factor,
                                  max_t=max(cfg.train.trainer.max_steps, cfg.asha_grace_period))
    tune_config = tune.TuneConfig(metric=SCORE, mode="min", scheduler=scheduler,
                                  max_concurrent_trials=cfg.max_concurrent_trials)
    root = storage.join(storage.resolve(cfg.storage.root()), "tune")
    fs = arrow_filesystem(root, _options(cfg))
    run_config = tune.RunConfig(name=experiment_name(cfg),
                                storage_path=strip_protocol(root) if fs is not None else root,
                                storage_filesystem=fs, stop=stopper)
    return trainable, tune_config, run_config, fs


def _can_restore(uri: str, fs) -> bool:
    from ray import tune

    path = uri
    if fs is not None:
        from dcnn_flame.io.arrow_fs import strip_protocol

        return tune.Tuner.can_restore(strip_protocol(path), storage_filesystem=fs)
    return tune.Tuner.can_restore(path)


def _rows(cfg: TuneJobConfig, grid) -> pd.DataFrame:
    rows = []
    for r in grid:
        config = dict(r.config or {})
        metrics = dict(r.metrics or {})
        row: dict[str, Any] = {
            report.POINT: spaces.point_label(cfg.search, config),
            "trial_id": str(metrics.get("trial_id") or (r.path or "").rstrip("/").rsplit("/", 1)[-1]),
            "status": "error" if r.error is not None else "ok",
            "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:500],
        }
        for key in cfg.search.grid:
            row[key] = config.get(key)
        if cfg.search.variants:
            row[spaces.VARIANT] = config.get(spaces.VARIANT)
        row[spaces.SEED] = config.get(spaces.SEED)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    key.startswith(("val", "train/")) or key in (SCORE, "step")):
                row[key] = float(value)
        if SCORE not in row or row[SCORE] is None:
            row[SCORE] = score_of(row, cfg.score, cfg.score_offset)
        rows.append(row)
    df = pd.DataFrame(rows)
    if SCORE in df.columns:
        df[SCORE] = pd.to_numeric(df[SCORE], errors="coerce")
    return df


def _write(cfg: TuneJobConfig, uri: str, trials: pd.DataFrame, seconds: float) -> TuneSummary:
    opts = _options(cfg)
    metrics = [SCORE, *[m for m in cfg.table_metrics if m != SCORE]]
    summary = report.summarise(trials, metrics)
    best = None
    if f"{SCORE}_mean" in summary.columns and summary[f"{SCORE}_mean"].notna().any():
        best = str(summary.loc[summary[f"{SCORE}_mean"].idxmin(), report.POINT])
    md = report.markdown_table(summary, metrics, best=best)
    files = {}

    def parquet(df: pd.DataFrame) -> bytes:
        import io

        buf = io.BytesIO()
        # Mixed-type config columns (e.g. a grid over strings and numbers) are stored as text.
        safe = df.copy()
        for col in safe.columns:
            if safe[col].dtype == object:
                safe[col] = safe[col].map(lambda v: None if v is None else str(v))
        safe.to_parquet(buf, index=False)
        return buf.getvalue()

    files["trials"] = storage.atomic_write_bytes(storage.join(uri, "trials.parquet"), parquet(trials), opts)
    files["summary"] = storage.atomic_write_bytes(storage.join(uri, "summary.parquet"), parquet(summary), opts)
    files["markdown"] = storage.atomic_write_bytes(storage.join(uri, "summary.md"), md.encode(), opts)
    plot_metric = cfg.plot_metric or SCORE
    if f"{plot_metric}_mean" in summary.columns and summary[f"{plot_metric}_mean"].notna().any():
        png = report.plot_png(cfg.search, trials, summary, plot_metric,
                              f"{experiment_name(cfg)}: {plot_metric} (mean over {len(cfg.search.seeds)} seed(s))")
        files["plot"] = storage.atomic_write_bytes(storage.join(uri, "plot.png"), png, opts)
    return TuneSummary(experiment_uri=uri, trials=trials, summary=summary, best_point=best, files=files,
                       markdown=md, seconds=seconds)


def run(cfg: TuneJobConfig, task_factory: Optional[TaskFactory] = None, *, stopper=None) -> TuneSummary:
    """Run (or resume) the search of ``cfg``; print and write the table and plot.

    Args:
        cfg: the job config.
        task_factory: TrainConfig -> TrainingTask for each trial (default: the DCNN-FLAME task).
        stopper: an optional ``ray.tune.Stopper`` (tests use one to interrupt a search).
    """
    from ray import tune

    from dcnn_flame.ray_utils import init_ray
    from dcnn_flame.training.trainer import check_config, ensure_default_data

    spaces.check_search(cfg.search)
    if cfg.train.trainer.num_workers < 1:
        raise ValueError(f"train.trainer.num_workers={cfg.train.trainer.num_workers}: a Tune trial runs Ray Train "
                         f"workers (local mode cannot report to Tune); use num_workers >= 1")
    uri = experiment_uri(cfg)
    # Every trial's config must be valid before anything starts.
    probe = {k: v[0] for k, v in cfg.search.grid.items()}
    for variant in (cfg.search.variants or {None: None}):
        trial = dict(probe, **({spaces.VARIANT: variant} if variant is not None else {}),
                     **{spaces.SEED: cfg.search.seeds[0]})
        check_config(trial_train_config(cfg, trial, "probe"))
    init_ray(cfg.ray)
    ensure_default_data(cfg.train)
    trainable, tune_config, run_config, fs = _tune_objects(cfg, task_factory, stopper)
    start = time.monotonic()
    if _can_restore(uri, fs):
        if not cfg.resume:
            raise ValueError(f"{uri} already holds a search named {experiment_name(cfg)!r}; use another name "
                             f"or resume=true")
        print(f"[tune] resuming the search at {uri}", flush=True)
        from dcnn_flame.io.arrow_fs import strip_protocol

        restore_path = strip_protocol(uri) if fs is not None else uri
        tuner = tune.Tuner.restore(restore_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    else:
        print(f"[tune] search {experiment_name(cfg)!r} at {uri}: {spaces.trial_count(cfg.search)} trials",
              flush=True)
        tuner = tune.Tuner(trainable, param_space=spaces.param_space(cfg.search), tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    trials = _rows(cfg, grid)
    out = _write(cfg, uri, trials, time.monotonic() - start)
    print(out.markdown, flush=True)
    failed = int((trials["status"] == "error").sum()) if len(trials) else 0
    print(f"[tune] {len(trials)} trials ({failed} failed) in {out.seconds:.0f} s; best: {out.best_point}", flush=True)
    for kind, path in out.files.items():
        print(f"[tune] {kind}: {path}", flush=True)
    return out
