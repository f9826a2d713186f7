"""Turn image collections into aligned 224x224 Parquet shards (Ray Data; laptop to cluster).

    python jobs/prepare.py source=vggface2 input_uri=/data/vggface2 output_uri=/data/prepared/vggface2
    python jobs/prepare.py source=characters input_uri=s3://bucket/characters \
        output_uri=s3://bucket/prepared/characters storage=s3 storage.uri=s3://bucket
    python jobs/prepare.py source=vggface2 input_uri=... max_identities=20   # a quick look

A rerun of the same command skips the shards already written. Outputs: <output_uri>/shards/
(train from here), manifest.json, failures.parquet, contact_sheet.png.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.data.ingest import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
