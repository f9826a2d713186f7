"""Build the head model a job asked for: a real FLAME file or the procedural head."""
from __future__ import annotations

from dcnn_flame.config import FlameConfig
from dcnn_flame.flame.data import FlameModelData


def load_flame_data(cfg: FlameConfig, storage_options=None) -> FlameModelData:
    """FlameModelData for ``cfg``: the user's FLAME file when ``model_path`` is set,
    otherwise the procedural FLAME-format head (seeded); with ``uv_path``, the UV layout from
    that file. File paths may be URIs (s3://...): each is downloaded once per machine into
    the local cache (:func:`dcnn_flame.io.storage.local_copy`, with ``storage_options``; None =
    the environment's credentials and ``AWS_ENDPOINT_URL``)."""
    from dcnn_flame.io import storage

    def fetch(uri, what):
        return storage.local_copy(uri, storage_options, what) if uri else uri

    if cfg.model_path:
        from dcnn_flame.flame.assets import load_flame_model

        data = load_flame_model(fetch(cfg.model_path, "flame.model_path"),
                                landmark_path=fetch(cfg.landmark_path, "flame.landmark_path"),
                                dynamic_landmark_path=fetch(cfg.dynamic_landmark_path, "flame.dynamic_landmark_path"),
                                eyelids_path=fetch(cfg.eyelids_path, "flame.eyelids_path"))
        if not storage.is_local(cfg.model_path):
            data.source = cfg.model_path  # messages name the object, not the cache file
    else:
        from dcnn_flame.flame.procedural import build_procedural_flame

        data = build_procedural_flame(seed=cfg.procedural_seed)
    if cfg.uv_path:
        from dcnn_flame.flame.uv import load_uv_layout

        data.uv_coords, data.uv_faces = load_uv_layout(fetch(cfg.uv_path, "flame.uv_path"), data.faces)
    return data


def build_flame_layer(cfg: FlameConfig, data: FlameModelData | None = None):
    """A FlameLayer for ``cfg`` (loads the data when not given)."""
    from dcnn_flame.flame.layer import FlameLayer

    data = data if data is not None else load_flame_data(cfg)
    return FlameLayer(data, n_shape=cfg.n_shape, n_expr=cfg.n_expr,
                      use_eyelids=cfg.use_eyelids, dynamic_contour=cfg.dynamic_contour)
