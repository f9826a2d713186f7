"""Nightly batch expression generation on Ray Data (laptop to cluster).

    python jobs/generate.py                      # the demo: sample library + demo checkpoint
    python jobs/generate.py input_uri=/data/characters checkpoint=outputs/runs/train-v1 name=v1
    python jobs/generate.py manifest_uri=s3://b/library.parquet output_uri=s3://b/generated \
        storage=s3 ray=cluster checkpoint=s3://b/runs/train-v1 num_actors=8 num_gpus=1 bf16=true
    python jobs/generate.py ... performance_uri=/data/actor_take3 expressions=[joy,worry]

A rerun with the same name skips complete characters. Outputs under <output_uri>/<name>/:
characters/<key>/character.glb (+ .obj, preview.png), results/*.parquet, failures/*.parquet
(docs/generation.md). Exit status: 0 when the job ran (failure rows are data); 2 with
fail_on_errors=true when anything failed; 1 when the job itself broke.
"""
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.generation.pipeline import run

    summary = run(OmegaConf.to_object(cfg))
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    register_configs()
    main()
