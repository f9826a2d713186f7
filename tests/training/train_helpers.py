"""Shared helpers of the training tests: a tiny TrainConfig and a picklable toy task."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # pytest's rootdir-relative imports: make sibling modules importable
    sys.path.insert(0, HERE)

import train_shards  # noqa: E402
import toy_task  # noqa: E402

from dcnn_flame.config import TrainConfig  # noqa: E402


def ship_test_modules() -> None:
    """Pickle the test-only modules by value, so Ray workers need not import them."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(toy_task)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def tiny_config(storage_uri: str, data_uri: str, name: str, *, workers: int = 0, steps: int = 4,
                val_every: int = 2, log_every: int = 1) -> TrainConfig:
    """A TrainConfig for a few fast toy steps."""
    cfg = TrainConfig(name=name)
    cfg.storage.uri = storage_uri
    cfg.data.train_uri = data_uri
    cfg.data.batch_size = 2
    cfg.data.val_batch_size = 4
    cfg.data.shuffle_buffer = 0
    cfg.data.synthetic_if_missing = False
    cfg.trainer.num_workers = workers
    cfg.trainer.max_steps = steps
    cfg.trainer.val_every = val_every
    cfg.trainer.log_every = log_every
    cfg.trainer.max_failures = 0
    cfg.optim.lr = 1e-3
    cfg.optim.decay_steps = 1000
    return cfg



def step_recorder(path: str):
    """A Ray Train UserCallback (runs on the controller) appending every report's rank-0 step,
    start step and whether it carried a checkpoint to a JSON-lines file: the test then sees every
    report of every attempt, across worker restarts."""
    from ray.train import UserCallback

    class StepRecorder(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            import json

            m = metrics[0]
            with open(path, "a") as f:
                f.write(json.dumps({"step": m.get("step"), "resumed_from": m.get("resumed_from"),
                                    "checkpoint": checkpoint is not None}) + "\n")

    return StepRecorder()


def read_steps(path: str) -> list[dict]:
    import json

    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
