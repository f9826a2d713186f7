"""Pose the head model (procedural by default) and write OBJ meshes.

    python jobs/head_demo.py                       # procedural head -> demo_out/
    python jobs/head_demo.py flame=flame2020 flame.model_path=/data/generic_model.pkl
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="head_demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.head_demo import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
