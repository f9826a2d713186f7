"""The per-worker training loop (Ray Train), in Ray's canonical order.

    dataset shards -> task.build(device) -> prepare_model (DDP) -> restore get_checkpoint()
    -> loop { batch -> forward -> criterion -> backward -> clip -> step }
    -> ray.train.report(metrics, checkpoint) (rank 0 writes the checkpoint, others report metrics)

Steps. ``step`` counts training steps of the run and is saved in every checkpoint: a resumed
run continues at ``checkpoint step + 1`` and never repeats a committed step. Every rank waits
after a checkpoint until Ray has committed it, so a failure after a checkpoint step always
resumes from that checkpoint (steps reported after the last checkpoint of a failed attempt are
redone, as they must be: their updates were lost with the workers). A step whose loss
(or gradient norm) is NaN/inf on any rank is skipped on every rank (no update; all ranks agree
through an all-reduce, so DDP never deadlocks) and counted; the step number still advances.
A batch in which every row of some rank failed to decode is skipped by all ranks without
advancing the step.

Cadence. Every ``log_every`` steps: metrics averaged over the window and across ranks go to
``ray.train.report`` and a progress line is printed by rank 0. Every ``val_every`` steps and at
the last step: validation over each validation shard (metrics ``<name>/<metric>``, sample-
weighted means over all ranks). Every ``checkpoint_every`` steps and at the last step: a
checkpoint (see :mod:`dcnn_flame.training.checkpoint`).

TensorBoard. Rank 0 writes event files to ``<run>/tensorboard``: directly when the run
directory is local, otherwise into a local temp directory that is uploaded there after every
checkpoint and at the end. Per-step training terms (rank 0's values), lr, throughput and
validation metrics are logged; a resumed run purges events after its start step.

Bad data. Rows that failed to decode are dropped and counted (``bad_rows``); skipped steps
are counted (``skipped_steps``). When a count exceeds its limit every rank stops at the same
step and the loop returns an ``aborted`` message (not an exception, so Ray does not retry a
run that would fail the same way); :func:`dcnn_flame.training.trainer.fit` raises
:class:`TrainingAborted` with it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from dcnn_flame.config import OptimConfig
from dcnn_flame.data.loader import batch_size_of, collate_batch, concat_batches, drop_invalid, to_device
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions
from dcnn_flame.training import checkpoint as ckpt_lib
from dcnn_flame.training.optim import build_optimizer, build_scheduler
from dcnn_flame.training.task import TrainingTask, check_parts

logger = logging.getLogger(__name__)

FAULT_MARKER = ".fault_injected"


class TrainingAborted(RuntimeError):
    """The run stopped on purpose: too much bad data or too many non-finite steps."""


@dataclass
class LoopSettings:
    """Everything a worker needs besides the task (plain and picklable; built on the driver)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    max_steps: int = 100
    """Last step of the run."""
    batch_size: int = 8
    """Source-domain samples per step per worker."""
    target_batch_size: int = 0
    """Target-domain samples per step per worker (fine-tuning; 0 = no "target" dataset)."""
    val_batch_size: int = 8
    """Samples per validation batch."""
    val_sets: tuple[str, ...] = ("val",)
    """Names of the validation datasets given to the trainer."""
    val_every: int = 50
    """Validation cadence (and the last step)."""
    log_every: int = 10
    """Report/progress cadence."""
    checkpoint_every: int = 50
    """Checkpoint cadence (and the last step)."""
    bf16: bool = True
    """bf16 autocast on CUDA."""
    seed: int = 42
    """Base seed; rank r uses seed + r."""
    max_bad_rows: int = 1000
    """Abort above this many undecodable rows (all ranks)."""
    max_skipped_steps: int = 100
    """Abort above this many non-finite steps."""
    shuffle_buffer: int = 0
    """Local shuffle buffer rows (0 = off)."""
    find_unused_parameters: bool = False
    """DDP option for models whose parameters do not all get gradients every step."""
    run_uri: str = ""
    """Resolved run directory ``<storage>/runs/<name>`` (TensorBoard, local-mode checkpoints)."""
    storage: StorageOptions = field(default_factory=StorageOptions)
    """Object-store options for run_uri and init_checkpoint."""
    filesystem: Any = field(default=None, repr=False)
    """fsspec filesystem for remote run_uri/init_checkpoint, built on the driver (it may carry
    credentials; never printed). None = build from ``storage`` in the worker."""
    init_checkpoint: Optional[str] = None
    """Weights for a new run (ignored on resume)."""
    local_mode: bool = False
    """Ray Train local mode (num_workers=0): the loop keeps checkpoints in run_uri itself."""
    keep: int = 3
    """Checkpoints kept in local mode (Ray's CheckpointConfig does it otherwise)."""
    best_metric: Optional[str] = None
    """checkpoint.best_metric: every checkpoint's report must carry it (checked at each save)."""
    config: dict = field(default_factory=dict)
    """The run's whole config as a plain dict (saved in checkpoints)."""
    fault_injection_step: Optional[int] = None
    """Testing: the last rank SIGKILLs itself at this step once per run."""


# ----------------------------------------------------------------------------- collectives


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (identity when not distributed)."""
    if not _distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, by rank (``[obj]`` when not distributed)."""
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _add_sums(into: dict, part: dict) -> None:
    """Add one batch's (or rank's) metric sums into ``into``: ``(sum, count)`` pairs add up,
    a ``"confusion"`` count matrix adds up elementwise."""
    for k, v in part.items():
        if k == "confusion":
            v = torch.as_tensor(v)
            into[k] = v.clone() if k not in into else into[k] + v
        else:
            s, c = into.get(k, (0.0, 0.0))
            into[k] = (s + float(v[0]), c + float(v[1]))


def _merge_means(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Weighted means from per-rank (sums, weight) pairs."""
    sums: dict[str, float] = {}
    total = 0.0
    for s, w in parts:
        total += w
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / total for k, v in sums.items()} if total > 0 else {}


# ----------------------------------------------------------------------------- data


class BatchStream:
    """Endless batches from a Ray dataset shard, epoch after epoch (bad rows dropped, counted)."""

    def __init__(self, shard, name: str, batch_size: int, shuffle_buffer: int, seed: int):
        self.shard = shard
        self.name = name
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self._it = None
        self._yielded = 0

    def _start_epoch(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.shuffle_buffer > 0:
            kwargs.update(local_shuffle_buffer_size=self.shuffle_buffer, local_shuffle_seed=self.seed + self.epoch)
        # drop_last: every rank then sees the same number of equal batches per epoch, which keeps
        # the ranks' epochs (and Ray's split coordinator) in step.
        self._it = iter(self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate_batch(),
                                                      drop_last=True, **kwargs))
        self.epoch += 1
        self._yielded = 0

    def next(self) -> tuple[dict[str, Any], int]:
        """(batch with only valid rows, number of rows dropped)."""
        while True:
            if self._it is None:
                self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                if self._yielded == 0:
                    raise ValueError(
                        f"dataset {self.name!r} gives this worker no full batch of {self.batch_size} samples; "
                        f"add rows or lower data.batch_size / trainer.num_workers") from None
                self._it = None
                continue
            self._yielded += 1
            return drop_invalid(batch)


# ----------------------------------------------------------------------------- logging


class _TensorBoard:
    """Rank 0's SummaryWriter (see the module docstring for where files go)."""

    def __init__(self, run_uri: str, options: StorageOptions, fs: Any, purge_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter

        self.options = options
        self.fs = fs
        self.remote = None
        if storage.is_local(run_uri):
            self.local = os.path.join(storage.resolve(run_uri), "tensorboard")
        else:
            self.local = tempfile.mkdtemp(prefix="dcnn_tb_")
            self.remote = storage.join(run_uri, "tensorboard")
        os.makedirs(self.local, exist_ok=True)
        self.writer = SummaryWriter(self.local, purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def sync(self) -> None:
        self.writer.flush()
        if self.remote:
            ckpt_lib.upload_directory(self.local, self.remote, self.options, self.fs)

    def close(self) -> None:
        self.sync()
        self.writer.close()


def _to_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def progress_line(step: int, max_steps: int, terms: dict[str, float], images_per_s: float, lr: float,
                  counters: dict[str, int]) -> str:
    """The human progress line printed by rank 0 (also the format tests and users grep)."""
    order = ["total"] + sorted(k for k in terms if k != "total")
    loss = " ".join(f"{k} {terms[k]:.4g}" for k in order if k in terms)
    return (f"[train] step {step}/{max_steps} | {loss} | {images_per_s:.1f} img/s | lr {lr:.3e} | "
            f"bad_rows {counters.get('bad_rows', 0)} skipped_steps {counters.get('skipped_steps', 0)}")


# ----------------------------------------------------------------------------- validation


def validate(model: torch.nn.Module, evaluate, shards: dict[str, Any], batch_size: int, device: torch.device,
             autocast) -> dict[str, float]:
    """Metrics over every validation shard, combined over batches and ranks.

    An evaluator with ``accumulate``/``finalize`` (:class:`~dcnn_flame.model.evaluation.Evaluator`)
    gives each metric as a sum over the samples that have it, and confusion counts: each mean
    divides by its own count, and accuracy and macro-F1 come from the whole set's confusion
    matrix (a mean of per-batch F1 scores is not the set's F1). A plain callable returning
    ``{metric: value}`` is weighted by the batch's samples, over the batches that report it.

    Returns ``{"<shard>/<metric>": value, "<shard>/samples": n, "<shard>/bad_rows": k}``.
    Runs the unwrapped module (no DDP collectives inside), in eval mode, without gradients.
    """
    net = ckpt_lib.unwrap(model)
    was_training = net.training
    net.eval()
    out: dict[str, float] = {}
    try:
        sums_of = getattr(evaluate, "accumulate", None)
        for name, shard in shards.items():
            sums: dict = {}
            n = 0
            bad = 0
            with torch.no_grad(), autocast():
                for batch in shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_batch(),
                                                      drop_last=False):
                    batch, nb = drop_invalid(batch)
                    bad += nb
                    b = batch_size_of(batch)
                    if b == 0:
                        continue
                    batch = to_device(batch, device)
                    outputs = net(batch["images"])
                    if sums_of is not None:
                        _add_sums(sums, sums_of(outputs, batch))
                    else:
                        _add_sums(sums, {k: (_to_float(v) * b, float(b)) for k, v in evaluate(outputs, batch).items()})
                    n += b
            parts = _gather((sums, n, bad))
            total: dict = {}
            for s, _, _ in parts:
                _add_sums(total, s)
            finalize = getattr(evaluate, "finalize", None)
            merged = finalize(total) if finalize is not None else {
                k: s / c for k, (s, c) in total.items() if c > 0}
            out.update({f"{name}/{k}": v for k, v in merged.items()})
            out[f"{name}/samples"] = float(sum(w for _, w, _ in parts))
            out[f"{name}/bad_rows"] = float(sum(x for _, _, x in parts))
    finally:
        net.train(was_training)
    return out


# ----------------------------------------------------------------------------- the loop


def _autocast_factory(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _maybe_inject_fault(settings: LoopSettings, step: int, rank: int, world: int) -> None:
    if settings.fault_injection_step != step or settings.local_mode or rank != world - 1:
        return
    marker = storage.join(settings.run_uri, FAULT_MARKER)
    if ckpt_lib.exists(marker, settings.storage, settings.filesystem):
        return
    ckpt_lib.write_bytes(marker, f"killed pid {os.getpid()} at step {step}\n".encode(), settings.storage,
                         settings.filesystem)
    print(f"[train] fault injection: SIGKILL rank {rank} (pid {os.getpid()}) at step {step}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _restore(settings: LoopSettings) -> Optional[ckpt_lib.TrainingState]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return ckpt_lib.load_training_state(d)
    if settings.local_mode and settings.run_uri:
        found = ckpt_lib.list_checkpoints(settings.run_uri, settings.storage, settings.filesystem)
        if found:
            return ckpt_lib.load_training_state(found[-1][1], settings.storage, settings.filesystem)
    return None


def _save_and_report(settings: LoopSettings, metrics: dict, *, model, optimizer, scheduler, step: int,
                     counters: dict, rank: int, tb: Optional[_TensorBoard]) -> None:
    import ray.train
    from ray.train import Checkpoint

    if settings.best_metric and settings.best_metric not in metrics:
        # Ray would only log it and rank checkpoints by nothing (the best ones could be deleted).
        reported = sorted(k for k in metrics if "/" in k and not k.startswith("train/"))
        raise ValueError(f"checkpoint.best_metric={settings.best_metric!r} is not among the run's reported "
                         f"metrics: " + (f"use one of {', '.join(reported)}" if reported else
                                         "it reports no validation metrics (no validation set?)"))
    rngs = _gather(ckpt_lib.rng_state())
    if rank != 0:
        ray.train.report(metrics)
        _wait_committed()
        return
    name = ckpt_lib.checkpoint_dir_name(step)
    with tempfile.TemporaryDirectory(prefix="dcnn_ckpt_") as d:
        ckpt_lib.save_checkpoint(d, model=model, optimizer=optimizer, scheduler=scheduler, step=step, rng=rngs,
                                 counters=counters, config=settings.config, metrics=metrics)
        if settings.local_mode:
            # Local mode has no storage of its own: keep the checkpoint in the run directory.
            dest = storage.join(settings.run_uri, name)
            ckpt_lib.upload_directory(d, dest, settings.storage, settings.filesystem)
            for _, old in ckpt_lib.list_checkpoints(settings.run_uri, settings.storage,
                                                    settings.filesystem)[:-settings.keep]:
                ckpt_lib.remove_directory(old, settings.storage, settings.filesystem)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(dest) if storage.is_local(dest) else None)
        else:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d), checkpoint_dir_name=name)
    _wait_committed()
    if tb is not None:
        tb.sync()


def _wait_committed() -> None:
    """Block until the controller has registered this report's checkpoint.

    Without it a rank that dies right after a checkpoint can take the not-yet-registered report
    down with it, and the group would resume from the checkpoint before (redoing steps).
    """
    import ray.train
    from ray.train import CheckpointConsistencyMode

    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point. ``config`` = ``{"task": TrainingTask, "settings": LoopSettings}``.

    Returns (rank 0's value is the run's ``Result.return_value``)
    ``{"step": last step, "aborted": message or None, **counters}``.
    """
    import ray.train
    import ray.train.torch

    task: TrainingTask = config["task"]
    settings: LoopSettings = config["settings"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    ckpt_lib.seed_everything(settings.seed + rank)
    if device.type == "cuda":
        # Fixed input sizes: cuDNN may pick its fastest kernels; TF32 for what runs outside autocast.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # 1. dataset shards
    train_stream = BatchStream(ray.train.get_dataset_shard("train"), "train", settings.batch_size,
                               settings.shuffle_buffer, settings.seed + 7919 * rank)
    target_stream = None
    if settings.target_batch_size > 0:
        target_stream = BatchStream(ray.train.get_dataset_shard("target"), "target", settings.target_batch_size,
                                    settings.shuffle_buffer, settings.seed + 7919 * rank + 1)
    val_shards = {name: ray.train.get_dataset_shard(name) for name in settings.val_sets}

    # 2. model, 3. DDP
    parts = task.build(device)
    check_parts(parts)
    ddp_kwargs = {"find_unused_parameters": True} if settings.find_unused_parameters else None
    model = ray.train.torch.prepare_model(parts.model, parallel_strategy_kwargs=ddp_kwargs)
    params = parts.param_groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, settings.optim)
    scheduler = build_scheduler(optimizer, settings.optim, settings.max_steps)
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]

    # 4. restore
    counters = {"bad_rows": 0, "skipped_steps": 0, "updates": 0, "empty_batches": 0}
    step = 0
    state = _restore(settings)
    if state is not None:
        ckpt_lib.unwrap(model).load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        step = state.step
        counters.update({k: int(v) for k, v in state.counters.items() if k in counters})
        if len(state.rng) == world:
            ckpt_lib.set_rng_state(state.rng[rank])
        else:  # different world size: fresh but deterministic streams
            ckpt_lib.seed_everything(settings.seed + rank + 1_000_003 * step)
        if rank == 0:
            print(f"[train] resumed from checkpoint at step {step} ({counters})", flush=True)
    elif settings.init_checkpoint:
        info = ckpt_lib.load_init_weights(model, settings.init_checkpoint, settings.storage, settings.filesystem)
        if rank == 0:
            print(f"[train] initialised weights from {settings.init_checkpoint}: {len(info['missing'])} new "
                  f"keys kept fresh {info['missing'][:5]}, {len(info['unexpected'])} unused keys "
                  f"{info['unexpected'][:5]}", flush=True)
    start_step = step

    tb = _TensorBoard(settings.run_uri, settings.storage, settings.filesystem,
                      purge_step=start_step + 1 if start_step else None) \
        if rank == 0 and settings.run_uri else None
    autocast = _autocast_factory(device, settings.bf16)
    window_sums: dict[str, float] = {}
    window_steps = 0
    window_images = 0
    per_step: list[tuple[int, dict[str, torch.Tensor]]] = []
    t_window = time.perf_counter()
    aborted: Optional[str] = None
    model.train()

    while step < settings.max_steps:
        # --- a batch every rank can train on
        batch, n_bad = train_stream.next()
        empty = batch_size_of(batch) == 0
        if target_stream is not None:
            target, t_bad = target_stream.next()
            n_bad += t_bad
            empty = empty or batch_size_of(target) == 0
            if not empty:
                batch = concat_batches([batch, target])
        bad_sum, empty_sum = _sum_across_ranks([float(n_bad), float(empty)], device)
        counters["bad_rows"] += int(bad_sum)
        if counters["bad_rows"] > settings.max_bad_rows:
            aborted = (f"{counters['bad_rows']} rows could not be decoded (limit trainer.max_bad_rows="
                       f"{settings.max_bad_rows}); check the shards (jobs/prepare.py failures table) or raise "
                       f"the limit, then rerun the same command to resume from the last checkpoint")
            break
        if empty_sum > 0:
            counters["empty_batches"] += 1
            continue

        step += 1
        _maybe_inject_fault(settings, step, rank, world)
        batch = to_device(batch, device)

        # --- forward, loss, agreement on finiteness, update
        with autocast():
            outputs = model(batch["images"])
            terms = parts.criterion(outputs, batch)
        loss = terms["total"]
        nonfinite = _sum_across_ranks([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device)[0]
        skipped = nonfinite > 0
        grad_norm = None
        if not skipped:
            loss.backward()
            max_norm = settings.optim.grad_clip if settings.optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
            # Gradients are identical on every rank after DDP's all-reduce, so this agrees too.
            if bool(torch.isfinite(grad_norm)):
                optimizer.step()
                counters["updates"] += 1
            else:
                skipped = True
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if skipped:
            counters["skipped_steps"] += 1
            if rank == 0:
                print(f"[train] step {step}: non-finite loss/gradient, update skipped "
                      f"({counters['skipped_steps']} so far)", flush=True)
            if counters["skipped_steps"] > settings.max_skipped_steps:
                aborted = (f"{counters['skipped_steps']} steps had a NaN/inf loss or gradient (limit "
                           f"trainer.max_skipped_steps={settings.max_skipped_steps}); lower optim.lr, keep "
                           f"optim.grad_clip on, or check the data, then rerun to resume from the last checkpoint")
                break
        else:
            logged = {k: v.detach().float() for k, v in terms.items() if isinstance(v, torch.Tensor)}
            if grad_norm is not None:
                logged["grad_norm"] = grad_norm.detach().float()
            per_step.append((step, logged))
            window_steps += 1
        window_images += int(batch["images"].shape[0] * batch["images"].shape[1])

        # --- report / validate / checkpoint
        last = step == settings.max_steps
        do_val = step % settings.val_every == 0 or last
        do_ckpt = step % settings.checkpoint_every == 0 or last
        if not (do_val or do_ckpt or step % settings.log_every == 0):
            continue
        # One host sync per window, not per step.
        step_values = [(s, {k: float(v.item()) for k, v in d.items()}) for s, d in per_step]
        for _, d in step_values:
            for k, v in d.items():
                window_sums[k] = window_sums.get(k, 0.0) + v
        elapsed = time.perf_counter() - t_window
        merged = _merge_means(_gather((window_sums, float(window_steps))))
        total_images = _sum_across_ranks([float(window_images)], device)[0]
        images_per_s = total_images / elapsed if elapsed > 0 else 0.0
        lr = optimizer.param_groups[0]["lr"]
        metrics: dict[str, Any] = {"step": step, "resumed_from": start_step, "lr": lr, "images_per_s": images_per_s,
                                   **{f"train/{k}": v for k, v in merged.items()}, **counters}
        if rank == 0:
            print(progress_line(step, settings.max_steps, merged, images_per_s, lr, counters), flush=True)
            if tb is not None:
                for s, d in step_values:
                    tb.scalars(s, {f"train/{k}": v for k, v in d.items()})
                tb.scalars(step, {"lr": lr, "images_per_s": images_per_s,
                                  **{f"counters/{k}": float(v) for k, v in counters.items()}})
        if do_val and val_shards:
            val_metrics = validate(model, parts.evaluate, val_shards, settings.val_batch_size, device, autocast)
            metrics.update(val_metrics)
            if rank == 0:
                shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(val_metrics.items()) if not k.endswith("samples"))
                print(f"[val] step {step} | {shown}", flush=True)
                if tb is not None:
                    tb.scalars(step, val_metrics)
        if do_ckpt:
            _save_and_report(settings, metrics, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                             counters=counters, rank=rank, tb=tb)
        else:
            ray.train.report(metrics)
            if tb is not None:
                tb.writer.flush()
        window_sums, window_steps, window_images, per_step = {}, 0, 0, []
        t_window = time.perf_counter()

    if tb is not None:
        tb.close()
    if aborted and rank == 0:
        print(f"[train] ABORTED at step {step}: {aborted}", flush=True)
    return {"step": step, "aborted": aborted, **counters}
