"""Throughput of FlameLayer forward+backward (samples/s) at several batch sizes.

Uses the procedural FLAME head when ``dcnn_flame.flame.procedural`` is available, else a
random model of real FLAME's size (5023 vertices, 9976 faces, 300 shape + 100
expression components, 68-landmark embedding with dynamic contour).

    python benchmarks/bm_flame.py                        # CPU, batches 1,64,1024
    python benchmarks/bm_flame.py --device cuda --iters 50
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dcnn_flame.flame.data import FlameModelData, LandmarkEmbedding
from dcnn_flame.flame.layer import FlameLayer


def random_flame_sized(seed: int = 0) -> FlameModelData:
    """Random arrays with the shapes of the real FLAME 2020 model."""
    rng = np.random.default_rng(seed)
    nv, nf = 5023, 9976
    weights = rng.uniform(0.0, 1.0, (nv, 5))
    weights /= weights.sum(1, keepdims=True)
    j_regressor = rng.uniform(0.0, 1.0, (5, nv))
    j_regressor /= j_regressor.sum(1, keepdims=True)

    def bary(*lead: int) -> np.ndarray:
        b = rng.uniform(0.05, 1.0, lead + (3,))
        return b / b.sum(-1, keepdims=True)

    return FlameModelData(
        v_template=rng.normal(size=(nv, 3)) * 0.1,
        faces=rng.integers(0, nv, (nf, 3)),
        shapedirs=rng.normal(size=(nv, 3, 300)) * 1e-3,
        exprdirs=rng.normal(size=(nv, 3, 100)) * 1e-3,
        posedirs=rng.normal(size=(nv, 3, 36)) * 1e-3,
        j_regressor=j_regressor,
        lbs_weights=weights,
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        landmarks=LandmarkEmbedding(
            static_faces=rng.integers(0, nf, 51), static_bary=bary(51),
            full_faces=rng.integers(0, nf, 68), full_bary=bary(68),
            dynamic_faces=rng.integers(0, nf, (79, 17)), dynamic_bary=bary(79, 17),
        ),
        edition="random-flame-sized",
        source="random(seed=0)",
    )


def load_model() -> FlameModelData:
    try:
        from dcnn_flame.flame.procedural import build_procedural_flame
    except ImportError:
        return random_flame_sized()
    return build_procedural_flame(seed=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(layer: FlameLayer, batch: int, device: torch.device, iters: int,
              warmup: int) -> tuple[float, float]:
    """Median seconds per forward-only and per forward+backward step."""
    gen = torch.Generator().manual_seed(0)

    def make(width: int, scale: float) -> torch.Tensor:
        return (torch.randn(batch, width, generator=gen) * scale).to(device).requires_grad_()

    params = dict(shape=make(layer.n_shape, 1.0), expression=make(layer.n_expr, 1.0),
                  pose=make(15, 0.2), translation=make(3, 0.01))
    fwd, fwdbwd = [], []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            layer(**params)
        _sync(device)
        t1 = time.perf_counter()
        out = layer(**params)
        loss = out.vertices.square().sum() + out.landmarks.square().sum()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        for p in params.values():
            p.grad = None
        if i >= warmup:
            fwd.append(t1 - t0)
            fwdbwd.append(t2 - t1)
    return float(np.median(fwd)), float(np.median(fwdbwd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batches", default="1,64,1024", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--n-shape", type=int, default=100)
    parser.add_argument("--n-expr", type=int, default=50)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    data = load_model()
    layer = FlameLayer(data, n_shape=args.n_shape, n_expr=args.n_expr).to(device)
    print(f"model: {data.edition} ({data.num_vertices} vertices, {len(data.faces)} faces), "
          f"n_shape={args.n_shape}, n_expr={args.n_expr}, device={device}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"{'batch':>6} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd samples/s':>14} "
          f"{'fwd+bwd samples/s':>18}")
    for batch in (int(b) for b in args.batches.split(",")):
        fwd, step = time_step(layer, batch, device, args.iters, args.warmup)
        print(f"{batch:>6} {fwd * 1e3:>10.2f} {step * 1e3:>11.2f} {batch / fwd:>14.0f} "
              f"{batch / step:>18.0f}")


if __name__ == "__main__":
    main()
