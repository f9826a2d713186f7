"""Train one stage of DCNN-FLAME on Ray Train.

    python jobs/train.py                                   # local Ray, synthetic data (generated once)
    python jobs/train.py name=pre1 trainer.num_workers=2 trainer.max_steps=2000
    python jobs/train.py stage=finetune name=ft1 init_checkpoint=outputs/runs/pre1 \
        data.target_uri=outputs/prepared/characters/shards
    ray job submit --working-dir . -- python jobs/train.py ray=cluster storage=s3 storage.uri=s3://bucket/dcnn

Rerunning the same command (same name) resumes from the run's last checkpoint.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.training.trainer import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
