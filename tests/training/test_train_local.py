"""The training loop in Ray Train's local mode (num_workers=0, in-process) with the toy task:
checkpoints and resume, bad data and NaN handling, the fine-tuning stage."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from train_helpers import ship_test_modules, tiny_config, toy_task, train_shards

from dcnn_flame.training import checkpoint as ck
from dcnn_flame.training.loop import TrainingAborted
from dcnn_flame.training.trainer import build_trainer, fit, run_uri

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {
        "clean": train_shards.make_dataset(str(root / "clean"), n_train=16, n_val=4),
        # Rows 0,1 (one batch of 2) and 8 of the 16 training rows cannot be decoded.
        "corrupt": train_shards.make_dataset(str(root / "corrupt"), n_train=16, n_val=4, corrupt=(0, 1, 8)),
        "chars": train_shards.make_dataset(str(root / "chars"), n_train=8, n_val=4, num_views=1,
                                           source="characters", seed=3),
    }


def _fit(cfg, task=None):
    ship_test_modules()
    return fit(build_trainer(cfg, task or toy_task.ToyTask()))


@pytest.mark.slow
def test_local_mode_checkpoints_reload_and_resume(ray_local, tmp_path, shards):
    cfg = tiny_config(str(tmp_path / "out"), shards["clean"], "local-resume", steps=4, val_every=2)
    cfg.checkpoint.keep = 1
    result = _fit(cfg)
    assert result.metrics["step"] == 4 and result.metrics["updates"] == 4 and result.metrics["resumed_from"] == 0
    assert 0 < result.metrics["val/vertex_error"] < 1 and result.metrics["val/samples"] == 4
    run = run_uri(cfg)
    assert [s for s, _ in ck.list_checkpoints(run)] == [4]  # keep=1: step 2 was pruned
    assert result.checkpoint.path == os.path.join(run, "checkpoint_00000004")
    state, config, step = ck.load_checkpoint_for_inference(run)
    assert step == 4 and config["name"] == "local-resume" and config["trainer"]["max_steps"] == 4
    net = toy_task.ToyNet()
    net.load_state_dict(state)
    assert glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))

    # The same command with a later max_steps resumes: steps 5..6, counters continue.
    cfg.trainer.max_steps = 6
    result = _fit(cfg)
    assert result.metrics["resumed_from"] == 4 and result.metrics["step"] == 6 and result.metrics["updates"] == 6
    assert ck.load_checkpoint_for_inference(run)[2] == 6
    # The optimizer continued from the checkpoint: Adam's step count is 6, not 2.
    opt_state = ck.load_training_state(ck.resolve_checkpoint(run)).optimizer
    assert int(next(iter(opt_state["state"].values()))["step"]) == 6


def test_nan_loss_steps_are_skipped_and_counted(ray_local, tmp_path, shards):
    cfg = tiny_config(str(tmp_path / "out"), shards["clean"], "nan-skip", steps=4, val_every=4)
    result = _fit(cfg, toy_task.ToyTask(nan_calls=(2, 3)))
    m = result.metrics
    assert (m["step"], m["skipped_steps"], m["updates"]) == (4, 2, 2)
    state = ck.load_training_state(ck.resolve_checkpoint(run_uri(cfg)))
    assert all(torch.isfinite(v).all() for v in state.model.values())


def test_too_many_nan_steps_abort_with_a_clear_message(ray_local, tmp_path, shards):
    cfg = tiny_config(str(tmp_path / "out"), shards["clean"], "nan-abort", steps=6, val_every=6)
    cfg.trainer.max_skipped_steps = 1
    with pytest.raises(TrainingAborted, match=r"2 steps had a NaN/inf loss.*max_skipped_steps=1.*rerun"):
        _fit(cfg, toy_task.ToyTask(nan_calls=(2, 3, 4)))


@pytest.mark.slow
def test_corrupt_rows_are_skipped_counted_and_limited(ray_local, tmp_path, shards):
    # One epoch = 8 batches of 2; the all-corrupt batch is skipped without using a step.
    cfg = tiny_config(str(tmp_path / "out"), shards["corrupt"], "bad-rows", steps=7, val_every=7)
    result = _fit(cfg)
    m = result.metrics
    assert (m["step"], m["bad_rows"], m["empty_batches"], m["updates"]) == (7, 3, 1, 7)
    cfg = tiny_config(str(tmp_path / "out"), shards["corrupt"], "bad-rows-abort", steps=7, val_every=7)
    cfg.trainer.max_bad_rows = 2
    with pytest.raises(TrainingAborted, match=r"3 rows could not be decoded.*max_bad_rows=2"):
        _fit(cfg)


@pytest.mark.slow
def test_finetune_mixes_domains_and_starts_from_stage1(ray_local, tmp_path, shards):
    pre = tiny_config(str(tmp_path / "out"), shards["clean"], "stage1", steps=2, val_every=2)
    _fit(pre)
    stage1_state, _, _ = ck.load_checkpoint_for_inference(run_uri(pre))

    ft = tiny_config(str(tmp_path / "out"), shards["clean"], "stage2", steps=2, val_every=2)
    ft.stage = "finetune"
    ft.init_checkpoint = run_uri(pre)
    ft.data.target_uri = shards["chars"]
    ft.data.target_val_uri = shards["chars"]
    ft.loss.mmd = ft.loss.style_consistency = 0.1
    ft.optim.lr = 0.0  # weights stay at their initial values: they must be stage 1's
    result = _fit(ft)
    m = result.metrics
    assert m["train/domain_mean"] == pytest.approx(0.5)  # 1 source + 1 target sample per step
    assert m["val_target/samples"] == 12 and m["val/samples"] == 4  # single-view characters repeat views
    state, config, step = ck.load_checkpoint_for_inference(run_uri(ft))
    assert config["stage"] == "finetune" and config["loss"]["mmd"] == 0.1 and step == 2
    for k, v in stage1_state.items():
        assert torch.equal(v, state[k]), k
