"""The head-posing demo: build the head, pose it (jaw-open smile, head turn), write meshes.

``run(cfg)`` is called by ``jobs/head_demo.py``; it returns the list of URIs written.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dcnn_flame.config import HeadDemoConfig
from dcnn_flame.constants import AU_IDS, au_index
from dcnn_flame.io import meshes, storage


def _au_vector(**intensities: float) -> torch.Tensor:
    """[1, 17] AU vector from keyword intensities, e.g. ``_au_vector(au12=1.0)``."""
    a = torch.zeros(1, len(AU_IDS))
    for key, value in intensities.items():
        a[0, au_index(int(key[2:]))] = value
    return a


#: The smile pose's jaw opening (about the x axis) when no AU map is given.
JAW_ONLY_OPEN_RAD = math.radians(12.0)


def demo_poses(n_expr: int, au_map) -> dict[str, dict[str, torch.Tensor]]:
    """Named FLAME parameter sets: neutral, a jaw-open smile, a head turn and both.

    ``au_map``: AU vectors -> (expression, jaw); None = no map (a real FLAME file without
    one): the "smile" is then a jaw opening of :data:`JAW_ONLY_OPEN_RAD` with no expression."""
    if au_map is not None:
        smile = _au_vector(au06=0.8, au12=1.0, au25=0.8, au26=0.7)
        expr, jaw = au_map(smile)
        expr = expr[:, :n_expr]
        if expr.shape[1] < n_expr:
            expr = torch.cat([expr, expr.new_zeros(1, n_expr - expr.shape[1])], 1)
    else:
        expr, jaw = torch.zeros(1, n_expr), torch.tensor([[JAW_ONLY_OPEN_RAD, 0.0, 0.0]])
    zero_pose = torch.zeros(1, 15)
    smile_pose = zero_pose.clone()
    smile_pose[:, 6:9] = jaw
    turn = zero_pose.clone()
    turn[:, 1] = math.radians(35.0)  # global yaw
    turn[:, 3] = math.radians(-10.0)  # a little neck pitch
    both = turn.clone()
    both[:, 6:9] = jaw
    zero_expr = torch.zeros(1, n_expr)
    return {
        "neutral": {"expression": zero_expr, "pose": zero_pose},
        "smile_jaw_open": {"expression": expr, "pose": smile_pose},
        "head_turn": {"expression": zero_expr, "pose": turn},
        "smile_head_turn": {"expression": expr, "pose": both},
    }


def run(cfg: HeadDemoConfig) -> list[str]:
    from dcnn_flame.flame.au_map import AUExpressionMap
    from dcnn_flame.flame.factory import build_flame_layer, load_flame_data
    from dcnn_flame.io.storage import StorageOptions

    opts = StorageOptions(cfg.storage.endpoint_url, cfg.storage.region, cfg.storage.anon)
    data = load_flame_data(cfg.flame, opts)
    layer = build_flame_layer(cfg.flame, data)
    if cfg.au_map_path:
        from dcnn_flame.model.criterion import load_au_map

        au_map = AUExpressionMap(*load_au_map(cfg.au_map_path, opts))
    elif "au_to_expr" in data.extras and "au_to_jaw" in data.extras:
        au_map = AUExpressionMap.from_model_data(data)
    else:
        au_map = None
        print(f"head model {data.source or data.edition} carries no AU -> expression map: the smile pose is a "
              f"jaw opening alone (give au_map_path=<.npz with au_to_expr, au_to_jaw> for the AU smile)")
    out = storage.resolve(cfg.out_dir)
    written = []
    texture = data.extras.get("albedo_mean")
    has_uv = data.uv_coords is not None and data.uv_faces is not None
    mtl = None
    if texture is not None and has_uv:
        from dcnn_flame.data.schema import encode_png

        # UV v points up; image rows go down.
        written.append(storage.atomic_write_bytes(storage.join(out, "albedo.png"),
                                                  encode_png(np.flipud(texture)), opts))
        written.append(storage.atomic_write_bytes(storage.join(out, "head.mtl"),
                                                  meshes.mtl_bytes("albedo.png"), opts))
        mtl = "head.mtl"
    with torch.no_grad():
        for name, params in demo_poses(layer.n_expr, au_map).items():
            result = layer(expression=params["expression"], pose=params["pose"])
            verts = result.vertices[0].numpy()
            obj = meshes.obj_bytes(verts, data.faces, data.uv_coords if has_uv else None,
                                   data.uv_faces if has_uv else None, material_file=mtl,
                                   comment=f"dcnn-flame head demo: {name} ({data.edition}, {data.source})")
            written.append(storage.atomic_write_bytes(storage.join(out, f"{name}.obj"), obj, opts))
    print(f"head model: {data.edition} from {data.source}: {data.num_vertices} vertices, "
          f"{len(data.faces)} faces")
    print("wrote:")
    for uri in written:
        print(f"  {uri}")
    return written
