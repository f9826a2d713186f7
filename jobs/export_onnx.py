"""Export the inference graph (image -> FLAME parameters, AUs [, vertices]) to ONNX.

    python jobs/export_onnx.py checkpoint=outputs/runs/dcnn_flame output_uri=exported/dcnn_flame.onnx
    python jobs/export_onnx.py checkpoint=outputs/runs/ft teachers_path=outputs/teachers.pt with_vertices=true
    python jobs/export_onnx.py random_init=true model.backbone=resnet18 output_uri=/tmp/untrained.onnx

Writes <stem>.onnx (dynamic batch axis) and <stem>.json (input normalisation, output layout,
FLAME edition, checkpoint, onnxruntime-vs-PyTorch max abs difference). Exits non-zero when
onnxruntime disagrees with PyTorch beyond atol/rtol. Docs: docs/export.md.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dcnn_flame.config import register_configs


@hydra.main(config_path="../configs", config_name="export_onnx", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dcnn_flame.export.onnx import run

    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    register_configs()
    main()
