"""SQL over the batch job's results and failures tables (local or object store).

    python jobs/query.py                                   # runs under outputs/generated, with counts
    python jobs/query.py named=au_above au=au12 threshold=0.6 expression=happy
    python jobs/query.py named=failures_by_reason out=failures.csv
    python jobs/query.py named=by_checkpoint checkpoint=s3://studio/ckpt/step_10000 out=s3://studio/q.parquet
    python jobs/query.py 'sql="SELECT expression, avg(au12) FROM results GROUP BY expression"'

Named queries, parameters and views: docs/generation.md ("Querying the results"), dcnn_flame/query.py.
Config: dcnn_flame.config.QueryConfig (uri defaults to <storage.uri>/generated, where jobs/generate.py writes).
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="query", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.query import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
