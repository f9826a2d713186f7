"""Ray Tune searches over DCNN-FLAME training runs (configs/tune.yaml, configs/search/*.yaml).

    python jobs/tune.py                      # the paper's alpha x beta grid
    python jobs/tune.py search=ablation      # the paper's Figure 9 ablation, 3 seeds
    python jobs/tune.py search=ablation name=abl-v2 asha=true train.trainer.max_steps=5000

Rerunning with the same name resumes an interrupted search. Results: <storage.uri>/tune/<name>/
(trials.parquet, summary.parquet, summary.md, plot.png); see docs/tuning.md.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="tune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.tuning.driver import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
