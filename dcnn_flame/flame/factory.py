"""Build the head model a job asked for: a real FLAME file or the procedural head."""
from __future__ import annotations

from dcnn_flame.config import FlameConfig
from dcnn_flame.flame.data import FlameModelData


def load_flame_data(cfg: FlameConfig) -> FlameModelData:
    """FlameModelData for ``cfg``: the user's FLAME file when ``model_path`` is set,
    otherwise the procedural FLAME-format head (seeded)."""
    if cfg.model_path:
        from dcnn_flame.flame.assets import load_flame_model

        return load_flame_model(cfg.model_path, landmark_path=cfg.landmark_path,
                                dynamic_landmark_path=cfg.dynamic_landmark_path,
                                eyelids_path=cfg.eyelids_path)
    from dcnn_flame.flame.procedural import build_procedural_flame

    return build_procedural_flame(seed=cfg.procedural_seed)


def build_flame_layer(cfg: FlameConfig, data: FlameModelData | None = None):
    """A FlameLayer for ``cfg`` (loads the data when not given)."""
    from dcnn_flame.flame.layer import FlameLayer

    data = data if data is not None else load_flame_data(cfg)
    return FlameLayer(data, n_shape=cfg.n_shape, n_expr=cfg.n_expr,
                      use_eyelids=cfg.use_eyelids, dynamic_contour=cfg.dynamic_contour)
