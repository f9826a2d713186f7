"""Ray Train with 2 CPU workers (gloo, DDP): checkpoints on local disk and on an S3-compatible
server, and recovery from a worker killed with SIGKILL mid-run."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest
import torch

from train_helpers import read_steps, ship_test_modules, step_recorder, tiny_config, toy_task, train_shards

from dcnn_flame.io.arrow_fs import fsspec_filesystem
from dcnn_flame.training import checkpoint as ck
from dcnn_flame.training.loop import FAULT_MARKER
from dcnn_flame.training.trainer import build_trainer, fit, run_uri

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory):
    return train_shards.make_dataset(str(tmp_path_factory.mktemp("dshards") / "clean"), n_train=16, n_val=4)


def _assert_loads(run, options=None, step=None):
    state, config, got_step = ck.load_checkpoint_for_inference(run, options)
    net = toy_task.ToyNet()
    net.load_state_dict(state)  # strict: the exact model
    assert all(torch.isfinite(v).all() for v in state.values())
    if step is not None:
        assert got_step == step
    return config


def test_two_gloo_workers_s3_storage_and_shards(ray_local, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    fs = fsspec_filesystem(bucket, options)
    shards = train_shards.make_dataset(f"{bucket[5:]}/shards", n_train=16, n_val=4,
                                       fs=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    cfg = tiny_config(f"{bucket}/exp", f"s3://{shards}", "ddp-s3", workers=2, steps=4, val_every=2)
    cfg.storage.endpoint_url = options.endpoint_url
    cfg.checkpoint.keep = 1
    cfg.checkpoint.best_metric = "val/vertex_error"
    ship_test_modules()
    result = fit(build_trainer(cfg, toy_task.ToyTask()))
    assert result.metrics["step"] == 4 and result.metrics["val/samples"] == 4
    run = run_uri(cfg)
    assert run == f"{bucket}/exp/runs/ddp-s3"
    kept = [s for s, _ in ck.list_checkpoints(run, options)]
    assert 4 in kept and set(kept) <= {2, 4}  # the best by val/vertex_error + the latest
    _assert_loads(run, options, step=4)
    assert fs.glob(f"{run[5:]}/tensorboard/events.out.tfevents.*")  # uploaded by rank 0


def test_two_gloo_workers_survive_a_sigkill_and_resume_from_last_checkpoint(ray_local, tmp_path, clean_shards):
    # Also the plain 2-worker DDP run on local storage (one fit serves both, to save CI time).
    cfg = tiny_config(str(tmp_path / "out"), clean_shards, "ddp-fault", workers=2, steps=6, val_every=2)
    cfg.checkpoint.keep = 1
    cfg.trainer.max_failures = 1
    cfg.trainer.fault_injection_step = 5  # rank 1 SIGKILLs itself at step 5 (after checkpoint 4)
    log = str(tmp_path / "reports.jsonl")
    ship_test_modules()
    result = fit(build_trainer(cfg, toy_task.ToyTask(), callbacks=[step_recorder(log)]))
    run = run_uri(cfg)
    assert os.path.exists(os.path.join(run, FAULT_MARKER))  # the kill happened
    reports = read_steps(log)
    steps = [r["step"] for r in reports]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # continuous, no step reported twice
    assert [r["resumed_from"] for r in reports] == [0, 0, 0, 0, 4, 4]
    m = result.metrics
    assert (m["step"], m["resumed_from"], m["updates"]) == (6, 4, 6)  # 4 before + 2 after the kill
    assert (m["skipped_steps"], m["bad_rows"]) == (0, 0)
    assert m["val/samples"] == 4  # both ranks' halves of the val split, all-reduced
    assert result.checkpoint.path == os.path.join(run, "checkpoint_00000006")
    assert [s for s, _ in ck.list_checkpoints(run)] == [6]  # Ray kept the last 1
    config = _assert_loads(run, step=6)
    assert config["trainer"]["num_workers"] == 2
    state = ck.load_training_state(ck.resolve_checkpoint(run))
    assert len(state.rng) == 2  # RNG state of every rank
    assert not torch.equal(state.rng[0]["torch"], state.rng[1]["torch"])
    assert int(next(iter(state.optimizer["state"].values()))["step"]) == 6  # Adam continued, no step twice
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(run, "tensorboard")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_gpu_worker_nccl_bf16_reports_throughput(ray_local, tmp_path, clean_shards):
    cfg = tiny_config(str(tmp_path / "out"), clean_shards, "gpu-1", workers=1, steps=4, val_every=4)
    cfg.trainer.use_gpu = True
    cfg.trainer.bf16 = True
    ship_test_modules()
    trainer = build_trainer(cfg, toy_task.ToyTask())
    assert trainer.scaling_config.use_gpu and trainer.scaling_config.num_workers == 1
    result = fit(trainer)
    m = result.metrics
    assert m["step"] == 4 and m["updates"] == 4 and m["images_per_s"] > 0
    _assert_loads(run_uri(cfg), step=4)
