"""Assemble and run a training stage on Ray Train (the driver side of jobs/train.py).

    run(cfg)  =  init_ray -> default data if needed -> build_trainer(cfg, task) -> fit -> summary

Storage layout (``storage_path = <storage.uri>/runs``, run name = ``cfg.name``)::

    <storage.uri>/runs/<name>/checkpoint_<step>/   model.pt, train_state.pt, config.json, meta.json
    <storage.uri>/runs/<name>/tensorboard/         event files (rank 0)
    <storage.uri>/runs/<name>/...                  Ray's own run state (resume bookkeeping)

Rerunning with the same ``name`` resumes from the run's latest checkpoint (Ray restores it
through ``get_checkpoint()``); a worker that dies is replaced and the group resumes from the
last checkpoint up to ``trainer.max_failures`` times.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from dcnn_flame.config import TrainConfig
from dcnn_flame.data import loader
from dcnn_flame.io import storage
from dcnn_flame.io.arrow_fs import arrow_filesystem, fsspec_filesystem, strip_protocol
from dcnn_flame.io.storage import StorageOptions
from dcnn_flame.training.checkpoint import ray_checkpoint_config
from dcnn_flame.training.loop import LoopSettings, TrainingAborted, train_loop_per_worker
from dcnn_flame.training.task import TrainingTask

logger = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune")
#: Default location of the embedded synthetic dataset (TrainDataConfig.train_uri; the default
#: output of ``jobs/prepare.py source=synthetic``).
DEFAULT_SYNTHETIC_URI = "outputs/prepared/synthetic"


def storage_options(cfg: TrainConfig) -> StorageOptions:
    """Object-store options of the run."""
    return StorageOptions(cfg.storage.endpoint_url, cfg.storage.region, cfg.storage.anon)


def runs_uri(cfg: TrainConfig) -> str:
    """Resolved ``<storage.uri>/runs`` (Ray's storage_path)."""
    return storage.join(storage.resolve(cfg.storage.root()), "runs")


def run_uri(cfg: TrainConfig) -> str:
    """Resolved ``<storage.uri>/runs/<name>``: where this run's checkpoints and logs live."""
    return storage.join(runs_uri(cfg), storage.safe_key(cfg.name))


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the field when the config cannot make a sensible run."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage={cfg.stage!r} is not one of {STAGES}")
    if not cfg.name or storage.safe_key(cfg.name) != cfg.name:
        raise ValueError(f"name={cfg.name!r} must be a non-empty [A-Za-z0-9._-] key (it names the run directory)")
    if cfg.stage == "finetune":
        if not cfg.data.target_uri:
            raise ValueError("stage=finetune needs data.target_uri (the character shards)")
        if not cfg.init_checkpoint:
            raise ValueError("stage=finetune starts from stage 1: set init_checkpoint to the pre-training "
                             "run directory or one of its checkpoints")
        if not 0.0 < cfg.data.target_fraction < 1.0:
            raise ValueError(f"data.target_fraction={cfg.data.target_fraction} must be in (0, 1)")
    t = cfg.trainer
    for name in ("max_steps", "val_every", "log_every"):
        if getattr(t, name) < 1:
            raise ValueError(f"trainer.{name}={getattr(t, name)} must be >= 1")
    if cfg.data.batch_size < 1:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be >= 1")
    ck = cfg.checkpoint
    if ck.every is not None and ck.every < 1:
        raise ValueError(f"checkpoint.every={ck.every} must be >= 1 or null")
    if ck.best_metric and ck.every is not None and ck.every % t.val_every:
        raise ValueError(f"checkpoint.every={ck.every} must be a multiple of trainer.val_every={t.val_every} "
                         f"when checkpoint.best_metric is set (every checkpoint must carry the metric)")


def split_batch(cfg: TrainConfig) -> tuple[int, int]:
    """(source, target) samples per step per worker."""
    if cfg.stage != "finetune":
        return cfg.data.batch_size, 0
    target = min(max(1, round(cfg.data.batch_size * cfg.data.target_fraction)), cfg.data.batch_size - 1)
    if target < 1 or cfg.data.batch_size - target < 1:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is too small to hold both domains; use >= 2")
    return cfg.data.batch_size - target, target


def config_dict(cfg: TrainConfig) -> dict:
    """The whole config as a plain dict (saved in every checkpoint)."""
    return dataclasses.asdict(cfg)


def loop_settings(cfg: TrainConfig, val_sets: tuple[str, ...]) -> LoopSettings:
    """The worker-side settings of ``cfg`` (paths resolved here: workers run elsewhere)."""
    source_bs, target_bs = split_batch(cfg)
    t, ck = cfg.trainer, cfg.checkpoint
    opts = storage_options(cfg)
    uri = run_uri(cfg)
    init = storage.resolve(cfg.init_checkpoint) if cfg.init_checkpoint else None
    remote = [u for u in (uri, init) if u and not storage.is_local(u)]
    return LoopSettings(
        optim=cfg.optim, max_steps=t.max_steps, batch_size=source_bs, target_batch_size=target_bs,
        val_batch_size=cfg.data.val_batch_size, val_sets=val_sets, val_every=t.val_every, log_every=t.log_every,
        checkpoint_every=ck.every or t.val_every, bf16=t.bf16, seed=t.seed, max_bad_rows=t.max_bad_rows,
        max_skipped_steps=t.max_skipped_steps, shuffle_buffer=cfg.data.shuffle_buffer,
        find_unused_parameters=t.ddp_find_unused_parameters, run_uri=uri, storage=opts,
        filesystem=fsspec_filesystem(remote[0], opts) if remote else None, init_checkpoint=init,
        local_mode=t.num_workers == 0, keep=ck.keep, best_metric=ck.best_metric, config=config_dict(cfg),
        fault_injection_step=t.fault_injection_step)


def build_datasets(cfg: TrainConfig) -> dict[str, Any]:
    """Ray Datasets by name: "train", "val", and for fine-tuning "target" (+ "val_target").

    Validation sets are decoded once here when ``data.materialize_val`` (validation then reads
    the object store). Each dataset keeps the DataContext it was built with (progress bars
    per ``data.progress_bars``); the process-global context is restored afterwards.
    """
    from ray.data import DataContext

    opts = storage_options(cfg)
    d = cfg.data

    def make(uri: str, split: Optional[str], domain: int, validation: bool = False):
        ds = loader.read_shards(uri, opts, split=split)
        ds = loader.decode_dataset(ds, num_views=d.num_views, domain=domain, image_size=cfg.model.image_size,
                                   batch_size=d.decode_batch_size)
        return ds.materialize() if validation and d.materialize_val else ds

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = d.progress_bars
    try:
        out = {"train": make(d.train_uri, d.train_split, loader.SOURCE_DOMAIN),
               "val": make(d.val_uri or d.train_uri, d.val_split, loader.SOURCE_DOMAIN, validation=True)}
        if cfg.stage == "finetune":
            out["target"] = make(d.target_uri, d.target_split, loader.TARGET_DOMAIN)
            if d.target_val_uri:
                out["val_target"] = make(d.target_val_uri, None, loader.TARGET_DOMAIN, validation=True)
    finally:
        ctx.enable_progress_bars = saved
    return out


def build_trainer(cfg: TrainConfig, task: TrainingTask, *, datasets: Optional[dict] = None,
                  callbacks: Optional[list] = None):
    """A TorchTrainer for ``cfg`` training ``task``.

    Args:
        cfg: the stage config (validated here).
        task: picklable :class:`TrainingTask` sent to every worker.
        datasets: Ray Datasets by name (default: :func:`build_datasets`).
        callbacks: extra ``ray.train.UserCallback`` objects (run on the controller).
    """
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    check_config(cfg)
    datasets = datasets if datasets is not None else build_datasets(cfg)
    val_sets = tuple(k for k in datasets if k.startswith("val"))
    settings = loop_settings(cfg, val_sets)
    t = cfg.trainer
    resources = {"CPU": t.cpus_per_worker, **t.resources_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    scaling = ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)
    opts = storage_options(cfg)
    storage_path = runs_uri(cfg)
    fs = arrow_filesystem(storage_path, opts)
    run_config = RunConfig(
        name=storage.safe_key(cfg.name),
        storage_path=strip_protocol(storage_path) if fs is not None else storage_path,
        storage_filesystem=fs,
        checkpoint_config=ray_checkpoint_config(cfg.checkpoint.keep, cfg.checkpoint.best_metric,
                                                cfg.checkpoint.best_mode),
        failure_config=FailureConfig(max_failures=t.max_failures),
        callbacks=callbacks,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "settings": settings},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        # Every dataset is split across workers (each rank validates its part; metrics are
        # all-reduced), equal sizes so the ranks stay in step.
        dataset_config=DataConfig(datasets_to_split="all"),
    )


def fit(trainer):
    """``trainer.fit()``; raises :class:`TrainingAborted` when the loop stopped on bad data."""
    result = trainer.fit()
    ret = result.return_value if isinstance(result.return_value, dict) else {}
    if ret.get("aborted"):
        raise TrainingAborted(ret["aborted"])
    return result


def make_task(cfg: TrainConfig) -> TrainingTask:
    """The real DCNN-FLAME task for ``cfg`` (model, criterion with its teachers, evaluator)."""
    from dcnn_flame.model.build import DCNNFlameTask

    return DCNNFlameTask(flame=cfg.flame, model=cfg.model, loss=cfg.loss, supervision=cfg.supervision)


def ensure_default_data(cfg: TrainConfig) -> None:
    """The embedded default: when ``data.train_uri`` is the default synthetic location and holds
    no shard yet, generate ``data.synthetic_samples`` synthetic identities there (a fifth of
    them "val"). Any other location is never written: it must hold shards already."""
    d = cfg.data
    if not d.synthetic_if_missing or storage.resolve(d.train_uri) != storage.resolve(DEFAULT_SYNTHETIC_URI):
        return
    opts = storage_options(cfg)
    if storage.list_files(storage.resolve(d.train_uri), opts, suffixes=(".parquet",)):
        return
    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.data.synthetic import write_synthetic_shards

    out = storage.resolve(d.train_uri)
    print(f"[train] no shards at {out}: generating {d.synthetic_samples} synthetic identities x {d.num_views} "
          f"views there first (data.synthetic_if_missing; `jobs/prepare.py source=synthetic` makes bigger sets)",
          flush=True)
    world = SyntheticConfig(num_identities=d.synthetic_samples, image_size=cfg.model.image_size,
                            procedural_seed=cfg.flame.procedural_seed)
    write_synthetic_shards(out, num_identities=d.synthetic_samples, rows_per_shard=16, seed=cfg.trainer.seed,
                           num_views=d.num_views, val_fraction=0.2, storage_options=opts, world=world,
                           progress=False, contact_sheet_samples=0)


def summary(cfg: TrainConfig, result) -> str:
    """Human summary: where the checkpoints are and the final metrics."""
    metrics = result.metrics or {}
    lines = [f"[train] run {cfg.name!r} (stage {cfg.stage}) finished at step {metrics.get('step', '?')}",
             f"[train] run directory: {run_uri(cfg)}"]
    if result.checkpoint is not None:
        lines.append(f"[train] latest checkpoint: {result.checkpoint.path}")
    if cfg.checkpoint.best_metric and result.best_checkpoints:
        sign = 1 if cfg.checkpoint.best_mode == "min" else -1
        scored = [(m.get(cfg.checkpoint.best_metric), c) for c, m in result.best_checkpoints
                  if m.get(cfg.checkpoint.best_metric) is not None]
        if scored:
            best_value, best = min(scored, key=lambda x: sign * x[0])
            lines.append(f"[train] best checkpoint ({cfg.checkpoint.best_metric}={best_value:.5g}): {best.path}")
    shown = {k: v for k, v in metrics.items() if k.startswith(("val", "train/total")) or k in (
        "bad_rows", "skipped_steps", "images_per_s")}
    if shown:
        lines.append("[train] final metrics: " + ", ".join(
            f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(shown.items())))
    lines.append(f"[train] TensorBoard: tensorboard --logdir {storage.join(run_uri(cfg), 'tensorboard')}")
    return "\n".join(lines)


def run(cfg: TrainConfig, task: Optional[TrainingTask] = None):
    """Train one stage: init Ray, ensure data, build, fit, print the summary; returns the Result."""
    from dcnn_flame.ray_utils import init_ray

    check_config(cfg)
    init_ray(cfg.ray)
    ensure_default_data(cfg)
    task = task if task is not None else make_task(cfg)
    print(f"[train] run {cfg.name!r}: stage {cfg.stage}, {cfg.trainer.num_workers} worker(s), "
          f"{'GPU/NCCL' if cfg.trainer.use_gpu else 'CPU/gloo'}, storage {run_uri(cfg)}", flush=True)
    result = fit(build_trainer(cfg, task))
    print(summary(cfg, result), flush=True)
    return result
