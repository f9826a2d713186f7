"""Helpers of the generation tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import os

NUM_GOOD = 20


def tiny_model_config():
    from dcnn_flame.model.config import ModelConfig

    return ModelConfig(backbone="resnet18", image_size=64, fusion_dim=32, identity_dim=32, mapping_hidden=32,
                       detail_dim=8, uv_size=16, albedo_size=32)


def manifest_for(root: str, path: str, extra: dict[str, str]) -> str:
    """A CSV manifest of every image under ``root`` plus ``extra`` {character_id: image_uri} rows."""
    rows = ["character_id,image_uri"]
    for cid in sorted(os.listdir(root)):
        for f in sorted(os.listdir(os.path.join(root, cid))):
            rows.append(f"{cid},{cid}/{f}")
    for cid, uri in extra.items():
        rows.append(f"{cid},{uri}")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return path


def job_config(**kw):
    """A GenerateConfig for the tests (small previews, no progress bars, 5-minute stall limit: a
    hang still fails inside the 15-minute test timeout, a busy 2-core box does not)."""
    from dcnn_flame.config import GenerateConfig

    cfg = GenerateConfig(detector="center", preview_size=48, preview_max=6, progress=False, stall_timeout_s=300,
                         max_image_pixels=4_000_000, batch_size=4, decode_batch_size=4, num_actors=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg
