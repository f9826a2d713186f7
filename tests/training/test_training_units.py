"""Unit tests of the training infrastructure that need no Ray cluster: schedule, checkpoint
files, RNG round trip, init-from-checkpoint, the decode step and batch helpers."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pyarrow as pa
import pytest
import torch

from train_helpers import toy_task, train_shards  # noqa: F401  (sys.path set up there)

from dcnn_flame.config import OptimConfig, TrainConfig
from dcnn_flame.data import loader, schema
from dcnn_flame.training import checkpoint as ck
from dcnn_flame.training.optim import build_optimizer, build_scheduler, lr_factor
from dcnn_flame.training.trainer import check_config, split_batch


# ----------------------------------------------------------------------------- schedule


def _naive_lr(step, cfg, max_steps):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    if cfg.schedule == "step":
        lr = cfg.lr
        for k in range(1, t + 1):
            if k % cfg.decay_steps == 0:
                lr *= cfg.decay_rate
        return max(lr, cfg.min_lr)
    if cfg.schedule == "exponential":
        return max(cfg.lr * math.exp(math.log(cfg.decay_rate) * t / cfg.decay_steps), cfg.min_lr)
    if cfg.schedule == "cosine":
        span = max_steps - cfg.warmup_steps
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    return cfg.lr


@pytest.mark.parametrize("schedule", ["constant", "step", "exponential", "cosine"])
def test_schedule_matches_naive_reference_and_scheduler(schedule):
    cfg = OptimConfig(lr=0.01, schedule=schedule, decay_steps=7, decay_rate=0.5, warmup_steps=3, min_lr=1e-4)
    max_steps = 40
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, max_steps)
    seen = []
    for step in range(max_steps):
        seen.append(opt.param_groups[0]["lr"])
        assert cfg.lr * lr_factor(step, cfg, max_steps) == pytest.approx(_naive_lr(step, cfg, max_steps), rel=1e-9)
        opt.step()
        sched.step()
    assert seen == pytest.approx([_naive_lr(s, cfg, max_steps) for s in range(max_steps)], rel=1e-9)
    if schedule == "step":
        assert seen[3 + 7] == pytest.approx(0.005) and seen[3 + 6] == pytest.approx(0.01)


def test_optimizer_choices_and_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(p, OptimConfig(optimizer="adamw")), torch.optim.AdamW)
    assert isinstance(build_optimizer(p, OptimConfig()), torch.optim.Adam)
    with pytest.raises(ValueError, match="sgd"):
        build_optimizer(p, OptimConfig(optimizer="sgd"))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, OptimConfig(schedule="linear"), 10)


# ----------------------------------------------------------------------------- checkpoints


def _trained_bits(seed=0):
    torch.manual_seed(seed)
    model = toy_task.ToyNet(4)
    cfg = OptimConfig(lr=1e-2, schedule="step", decay_steps=2)
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg, 10)
    for _ in range(3):
        model(torch.rand(1, 2, 3, 224, 224)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched, cfg


def test_checkpoint_round_trip_weights_only_and_rng(tmp_path):
    model, opt, sched, cfg = _trained_bits()
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    rng = ck.rng_state()
    expect = (random.random(), np.random.rand(), torch.rand(3))
    d = str(tmp_path / "checkpoint_00000003")
    ck.save_checkpoint(d, model=model, optimizer=opt, scheduler=sched, step=3, rng=[rng, rng],
                       counters={"bad_rows": 2, "skipped_steps": 1}, config={"name": "x", "lr": 0.01},
                       metrics={"val/err": 0.5})
    assert sorted(os.listdir(d)) == sorted([ck.MODEL_FILE, ck.STATE_FILE, ck.CONFIG_FILE, ck.META_FILE])
    # Every file loads with weights_only=True (no pickled objects).
    for name in (ck.MODEL_FILE, ck.STATE_FILE):
        torch.load(os.path.join(d, name), weights_only=True)
    state = ck.load_training_state(d)
    assert state.step == 3 and state.counters == {"bad_rows": 2, "skipped_steps": 1}
    assert state.config == {"name": "x", "lr": 0.01} and state.metrics == {"val/err": 0.5}
    model2, opt2, sched2, _ = _trained_bits(seed=1)
    model2.load_state_dict(state.model)
    opt2.load_state_dict(state.optimizer)
    sched2.load_state_dict(state.scheduler)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    # Continue identically after restoring the optimizer state.
    x = torch.rand(1, 2, 3, 224, 224)
    for m, o in ((model, opt), (model2, opt2)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.allclose(a, b)
    # RNG states come back exactly.
    random.random(), np.random.rand(), torch.rand(3)
    ck.set_rng_state(state.rng[1])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def test_load_for_inference_resolves_run_dir_and_latest(tmp_path):
    model, opt, sched, _ = _trained_bits()
    run = tmp_path / "runs" / "r1"
    for step in (2, 10, 4):
        ck.save_checkpoint(str(run / ck.checkpoint_dir_name(step)), model=model, optimizer=opt, scheduler=sched,
                           step=step, rng=[], counters={}, config={"stage": "pretrain", "step": step})
    (run / "checkpoint_00000099").mkdir()  # incomplete (no meta.json): ignored
    assert [s for s, _ in ck.list_checkpoints(str(run))] == [2, 4, 10]
    state, config, step = ck.load_checkpoint_for_inference(str(run))
    assert step == 10 and config["step"] == 10
    _, _, step4 = ck.load_checkpoint_for_inference(str(run / "checkpoint_00000004"))
    assert step4 == 4
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.load_checkpoint_for_inference(str(tmp_path / "nothing"))


def test_init_weights_strict_false_for_new_layers_only(tmp_path):
    model, opt, sched, _ = _trained_bits()
    d = str(tmp_path / "c")
    ck.save_checkpoint(d, model=model, optimizer=opt, scheduler=sched, step=1, rng=[], counters={}, config={})

    class Bigger(toy_task.ToyNet):
        def __init__(self):
            super().__init__(4)
            self.new_head = torch.nn.Linear(2, 2)

    big = Bigger()
    fresh = big.new_head.weight.detach().clone()
    info = ck.load_init_weights(big, d)
    assert info["missing"] == ["new_head.weight", "new_head.bias"] and info["unexpected"] == []
    assert torch.equal(big.head.weight, model.head.weight) and torch.equal(big.new_head.weight, fresh)
    with pytest.raises(ValueError, match="different shapes"):
        ck.load_init_weights(toy_task.ToyNet(6), d)
    with pytest.raises(ValueError, match="shares no parameter"):
        ck.load_init_weights(torch.nn.Linear(2, 2), d)


def test_checkpoint_config_names():
    c = ck.ray_checkpoint_config(2, "val/vertex_error", "min")
    assert (c.num_to_keep, c.checkpoint_score_attribute, c.checkpoint_score_order) == (2, "val/vertex_error", "min")
    with pytest.raises(ValueError, match="best_mode"):
        ck.ray_checkpoint_config(2, "x", "lowest")


# ----------------------------------------------------------------------------- config checks


def test_config_checks_and_batch_split():
    cfg = TrainConfig(stage="finetune")
    with pytest.raises(ValueError, match="target_uri"):
        check_config(cfg)
    cfg.data.target_uri = "/x"
    with pytest.raises(ValueError, match="init_checkpoint"):
        check_config(cfg)
    cfg.init_checkpoint = "/y"
    check_config(cfg)
    assert split_batch(cfg) == (4, 4)
    cfg.data.target_fraction = 0.25
    assert split_batch(cfg) == (6, 2)
    cfg.checkpoint.best_metric, cfg.checkpoint.every = "val/x", 7
    with pytest.raises(ValueError, match="multiple"):
        check_config(cfg)
    with pytest.raises(ValueError, match="name"):
        check_config(TrainConfig(name="../evil"))
    assert split_batch(TrainConfig()) == (8, 0)


def test_build_trainer_wires_gpu_nccl_and_storage(tmp_path):
    # Construction only (no Ray cluster, no fit): the GPU path is configured, not measured, here.
    from dcnn_flame.training.trainer import build_trainer

    cfg = TrainConfig(name="gpu-wiring")
    cfg.storage.uri = str(tmp_path)
    cfg.trainer.num_workers, cfg.trainer.use_gpu, cfg.trainer.cpus_per_worker = 2, True, 4
    cfg.checkpoint.keep, cfg.checkpoint.best_metric = 2, "val/vertex_error_mm"
    trainer = build_trainer(cfg, toy_task.ToyTask(), datasets={"train": None, "val": None})
    sc = trainer.scaling_config
    assert (sc.num_workers, sc.use_gpu) == (2, True)
    assert sc.resources_per_worker == {"CPU": 4, "GPU": 1}
    assert trainer.backend_config.backend == "nccl"
    rc = trainer.run_config
    assert (rc.name, rc.storage_path) == ("gpu-wiring", os.path.join(str(tmp_path), "runs"))
    assert rc.checkpoint_config.checkpoint_score_attribute == "val/vertex_error_mm"
    assert rc.failure_config.max_failures == cfg.trainer.max_failures
    settings = trainer.train_loop_config["settings"]
    assert settings.bf16 and settings.val_sets == ("val",) and settings.batch_size == cfg.data.batch_size
    cfg.trainer.use_gpu = False
    assert build_trainer(cfg, toy_task.ToyTask(), datasets={"train": None}).backend_config.backend == "gloo"


# ----------------------------------------------------------------------------- decode + batches


def _table(rows):
    return pa.Table.from_pylist(rows, schema=schema.SAMPLE_SCHEMA).select(
        list(loader.BASE_COLUMNS) + list(loader.GT_COLUMNS))


def test_decode_rows_matches_per_row_reference_and_marks_bad_rows():
    rows = train_shards.sample_rows(4, num_views=4, corrupt=(2,))
    rows[1] = train_shards.sample_rows(1, num_views=1, seed=9, prefix="one")[0]  # a single-view row
    out = loader.decode_rows(_table(rows), num_views=4, domain=1)
    assert out["images"].shape == (4, 4, 3, 224, 224) and out["images"].dtype == np.uint8
    assert out["valid"].tolist() == [True, True, False, True]
    assert out["domain"].tolist() == [1, 1, 1, 1]
    assert out["view_valid"].tolist() == [[True] * 4, [True, False, False, False], [False] * 4, [True] * 4]
    assert out["gt_vertices"].shape == (4, 4, train_shards.NV, 3)
    # Naive per-row, per-view reference.
    for r in (0, 1, 3):
        n = len(rows[r]["image"])
        for j in range(4):
            i = j % n
            img = schema.decode_image(rows[r]["image"][i])
            assert np.array_equal(out["images"][r, j], img.transpose(2, 0, 1))
            assert np.allclose(out["landmarks"][r, j], np.asarray(rows[r]["landmarks"][i]).reshape(68, 2))
            assert np.allclose(out["au"][r, j], rows[r]["au"][i])
            assert out["expression_class"][r, j] == rows[r]["expression_class"][i]
            assert np.allclose(out["gt_vertices"][r, j], schema.vertices_from_bytes(rows[r]["gt_vertices"][i]))
            assert np.allclose(out["gt_shape"][r, j], rows[r]["gt_shape"][i])
    assert not out["images"][2].any()


def test_decode_rows_wrong_size_missing_values_and_real_data():
    rows = train_shards.sample_rows(2, num_views=2, image_size=100)
    out = loader.decode_rows(_table(rows), num_views=2)
    assert out["valid"].tolist() == [False, False]
    rows = train_shards.sample_rows(1, num_views=2)
    rows[0]["au"] = None
    rows[0]["expression_class"] = [3, None]
    for c in loader.GT_COLUMNS:
        rows[0][c] = None
    out = loader.decode_rows(_table(rows), num_views=2)
    assert out["valid"].tolist() == [True]
    assert np.isnan(out["au"]).all() and out["expression_class"].tolist() == [[3, -1]]
    assert not any(k.startswith("gt_") for k in out)  # real data: no ground-truth keys


def test_collate_drop_invalid_and_concat():
    rows = train_shards.sample_rows(3, num_views=2, corrupt=(1,))
    batch = loader.collate_numpy(loader.decode_rows(_table(rows), num_views=2))
    assert batch["images"].dtype == torch.float32 and float(batch["images"].max()) <= 1.0
    assert batch["expression_class"].dtype == torch.int64 and batch["valid"].dtype == torch.bool
    kept, n_bad = loader.drop_invalid(batch)
    assert n_bad == 1 and loader.batch_size_of(kept) == 2
    assert torch.equal(kept["images"][1], batch["images"][2])
    target = {k: v for k, v in loader.collate_numpy(loader.decode_rows(
        _table(train_shards.sample_rows(1, num_views=2)), num_views=2, domain=1)).items()
        if not k.startswith("gt_")}
    both = loader.concat_batches([kept, target])
    assert loader.batch_size_of(both) == 3 and both["domain"].tolist() == [0, 0, 1]
    assert torch.isnan(both["gt_vertices"][2]).all() and not torch.isnan(both["gt_vertices"][:2]).any()


def test_config_json_is_plain(tmp_path):
    from dcnn_flame.training.trainer import config_dict

    d = config_dict(TrainConfig())
    json.dumps(d)
    assert d["optim"]["lr"] == 0.01 and d["loss"]["mmd"] == 0.0 and d["data"]["batch_size"] == 8


def test_a_best_metric_the_run_does_not_report_stops_it_at_its_first_checkpoint():
    """Ray only logs a missing checkpoint_score_attribute and then ranks checkpoints by nothing."""
    from dcnn_flame.training.loop import LoopSettings, _save_and_report

    kw = dict(model=None, optimizer=None, scheduler=None, step=5, counters={}, rank=0, tb=None)
    with pytest.raises(ValueError, match=r"'val/vertex_error' is not among.*use one of val/vertex_error_mm"):
        _save_and_report(LoopSettings(best_metric="val/vertex_error"),
                         {"step": 5, "train/total": 1.0, "val/vertex_error_mm": 2.0}, **kw)
    with pytest.raises(ValueError, match="no validation metrics"):
        _save_and_report(LoopSettings(best_metric="val/vertex_error_mm"), {"step": 5, "train/total": 1.0}, **kw)


class _Shard:
    """A validation shard stand-in: yields the given batches (the batch contract, with ``valid``)."""

    def __init__(self, batches):
        self.batches = batches

    def iter_torch_batches(self, batch_size, collate_fn, drop_last):
        return iter(self.batches)


def _val_batch(x, labels, valid=None):
    b = len(x)
    return {"images": torch.tensor(x, dtype=torch.float32).reshape(b, 1, 1), "expression_class": torch.tensor(labels),
            "valid": torch.ones(b, dtype=torch.bool) if valid is None else torch.tensor(valid)}


def test_validation_means_divide_each_metric_by_its_own_samples():
    """A metric a batch does not report (no labelled view in it) is not diluted by that batch's
    samples; an evaluator with accumulate/finalize combines sums and confusion counts."""
    from contextlib import nullcontext

    from dcnn_flame.training.loop import validate

    class Net(torch.nn.Module):
        def forward(self, images):
            return images

    def plain(outputs, batch):  # "accuracy" only where a batch has labels (as the Evaluator's was)
        labelled = batch["expression_class"] >= 0
        out = {"mean_x": float(outputs.mean())}
        if labelled.any():
            out["accuracy"] = float((batch["expression_class"][labelled] == 1).float().mean())
        return out

    class Summing:
        def accumulate(self, outputs, batch):
            labelled = batch["expression_class"] >= 0
            cm = torch.zeros(2, 2, dtype=torch.int64)
            for t in batch["expression_class"][labelled].tolist():
                cm[t, 1] += 1  # always predicts class 1
            return {"mean_x": (float(outputs.sum()), float(outputs.numel())), "confusion": cm}

        def finalize(self, sums):
            cm = sums["confusion"]
            s, n = sums["mean_x"]
            return {"mean_x": s / n, "accuracy": float(cm.diagonal().sum() / cm.sum())}

    shard = _Shard([_val_batch([1.0, 1.0, 1.0], [1, -1, -1]), _val_batch([3.0, 3.0, 3.0], [-1, -1, -1]),
                    _val_batch([5.0, 7.0, 0.0], [0, 1, 1], valid=[True, True, False])])
    for evaluate, accuracy in ((plain, (1.0 * 3 + 0.5 * 2) / 5), (Summing(), 2 / 3)):
        got = validate(Net(), evaluate, {"val": shard}, 3, torch.device("cpu"), nullcontext)
        assert got["val/samples"] == 8 and got["val/bad_rows"] == 1
        assert got["val/mean_x"] == pytest.approx((3 + 9 + 12) / 8)
        # plain: batch means weighted by the batches that report the metric (dividing by all 8
        # samples gave 0.5); summed: the 3 labelled views, 2 of them right
        assert got["val/accuracy"] == pytest.approx(accuracy)
