"""Shared by the Tune tests and the search script they interrupt: a tiny search job on the toy task."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINING = os.path.join(os.path.dirname(HERE), "training")
for p in (HERE, TRAINING):
    if p not in sys.path:
        sys.path.insert(0, p)

from train_helpers import ship_test_modules, tiny_config, toy_task  # noqa: E402

from dcnn_flame.config import SearchConfig, TuneJobConfig  # noqa: E402

GRID = SearchConfig(name="resume", grid={"optim.lr": [1e-3, 1e-2], "loss.style": [0.1, 0.3]},
                    labels={"optim.lr": "lr", "loss.style": "beta"})


def toy_factory(train):
    """TrainConfig -> the toy task (the toy model learns the landmark centre; fast on CPU)."""
    return toy_task.ToyTask()


def ship() -> None:
    """Pickle the test-only modules by value (Ray workers cannot import tests/)."""
    import ray.cloudpickle

    ship_test_modules()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def make_job(root: str, shards: str, search: SearchConfig, *, steps: int = 2, name: str) -> TuneJobConfig:
    """A search of tiny one-worker trials scored by the toy validation vertex error."""
    job = TuneJobConfig(name=name, search=search)
    job.storage.uri = os.path.join(root, "store")
    job.train = tiny_config(os.path.join(root, "unused"), shards, "base", workers=1, steps=steps,
                            val_every=steps // 2 or 1)
    job.score = {"val/vertex_error": 1.0}
    job.score_offset = 0.0
    job.table_metrics = ["val/vertex_error", "val/mean_face_error"]
    job.max_concurrent_trials = 1
    return job
