"""Run the 2 x 2 toy grid search in its own process (the test interrupts it with SIGINT).

    python tune_script.py <root> <shards> <ray address>
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tune_helpers import GRID, make_job, ship, toy_factory  # noqa: E402

if __name__ == "__main__":
    from dcnn_flame.tuning.driver import run

    root, shards = sys.argv[1], sys.argv[2]
    job = make_job(root, shards, GRID, name="resume")
    job.ray.address = sys.argv[3]
    ship()
    run(job, toy_factory)
