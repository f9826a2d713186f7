"""Train the supervision teachers: the AU detector and the expression classifier (paper Sec. 3.4).

    python jobs/train_supervision.py                                   # synthetic shards -> outputs/teachers/teachers.pt
    python jobs/train_supervision.py data_uri=/data/prepared/characters/shards output_uri=/data/teachers.pt
    python jobs/train_supervision.py epochs=3 max_images=400 input_size=64 num_threads=2   # a quick look

Reads any shards with the training schema (each view = one labelled image; NaN AUs and class -1
are masked), splits identities 80/10/10 (seed 42), trains both networks (Adam 1e-4, batch 16,
60 epochs), keeps the best validation epoch and writes one teachers file plus
``<stem>.metrics.json``. Config: dcnn_flame.config.SupervisionTrainConfig.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="train_supervision", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.supervision.train import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
