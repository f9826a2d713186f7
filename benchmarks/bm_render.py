"""Renderer throughput (images/s): rasterize, and rasterize + shade, at 224x224.

Uses the procedural FLAME head when ``dcnn_flame.flame.procedural`` is available,
else a FLAME-sized UV sphere (5002 vertices, 10000 faces). Each batch holds the
mesh under random yaws (+-30 degrees), framed by an orthographic DECA camera.

    python benchmarks/bm_render.py --device cpu --batches 1 64 256 --iters 3
    python benchmarks/bm_render.py --device cuda --batches 1 64 256 1024 --iters 20
    python benchmarks/bm_render.py --device cuda --batches 256 1024 --iters 20 --compile \
        --max-candidates 67108864   # the fast path on a large GPU: fused stages, big chunks

On CPU each line also gives the process CPU time per image, which stays meaningful when
other jobs share the cores (use --threads 1: idle OpenMP threads spin and count as CPU).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

from dcnn_flame.render import Renderer, RendererConfig
from dcnn_flame.render.rasterize import rasterize
from dcnn_flame.render.primitives import uv_sphere


def load_mesh() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from dcnn_flame.flame.procedural import build_procedural_flame

        d = build_procedural_flame(seed=0)
        if d.uv_coords is None or d.uv_faces is None:
            raise ImportError("procedural head has no UVs")
        return ("procedural FLAME head", torch.as_tensor(d.v_template, dtype=torch.float32),
                torch.as_tensor(d.faces, dtype=torch.int64), torch.as_tensor(d.uv_coords, dtype=torch.float32),
                torch.as_tensor(d.uv_faces, dtype=torch.int64))
    except ImportError:
        v, f, uv, uvf = uv_sphere(51, 100)
        return "uv sphere", v, f, uv, uvf


def posed_batch(v: torch.Tensor, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies under random yaws plus a DECA camera that frames the mesh."""
    centre = (v.amax(0) + v.amin(0)) / 2
    v = v - centre
    yaw = (torch.rand(B, generator=gen) * 2 - 1) * math.radians(30)
    c, s = torch.cos(yaw), torch.sin(yaw)
    R = torch.zeros(B, 3, 3)
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = c, s, 1, -s, c
    verts = v.unsqueeze(0) @ R.transpose(1, 2)
    scale = 1.7 / float((v.amax(0) - v.amin(0))[:2].max())
    cam = torch.tensor([[scale, 0.0, 0.0]]).expand(B, 3).clone()
    return verts, cam


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, iters: int, device: torch.device, warmup: int = 1) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, last result) per call. On a shared machine the
    CPU time (all threads of this process) is the honest cost of the work: wall time
    then also counts the time other processes held the cores."""
    for _ in range(warmup):  # allocator, kernels, torch.compile
        fn()
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        out = fn()
    sync(device)
    return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 makes the CPU-time column exact on a busy machine)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--max-candidates", type=int, default=None,
                    help="rasterizer chunk budget (default: the library default)")
    ap.add_argument("--cull", action="store_true", help="cull back faces")
    ap.add_argument("--compile", action="store_true", help="torch.compile the rasterizer stages")
    ap.add_argument("--backward", action="store_true", help="also time forward + backward")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, v, f, uv, uvf = load_mesh()
    kw = {} if args.max_candidates is None else {"max_candidates": args.max_candidates}
    kw["compile"] = args.compile
    cfg = RendererConfig(image_size=args.size, cull_backfaces=args.cull, **kw)
    renderer = Renderer(f, uv, uvf, cfg).to(device)
    print(f"mesh: {name}, {v.shape[0]} vertices, {f.shape[0]} faces; {args.size}x{args.size}; "
          f"device {device}; cull={args.cull}; compile={args.compile}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    gen = torch.Generator().manual_seed(0)
    albedo = torch.rand(1, 3, 256, 256, generator=gen).to(device)
    for B in args.batches:
        verts, cam = posed_batch(v, B, gen)
        verts, cam = verts.to(device), cam.to(device)
        sh = torch.zeros(B, 9, 3, device=device)
        sh[:, 0] = 3.0
        ndc = torch.cat([verts[..., :2] * cam[:, None, :1], -verts[..., 2:]], -1)
        faces = renderer.faces

        def rast():
            with torch.no_grad():
                return rasterize(ndc, faces, args.size, cull_backfaces=args.cull, **kw)

        def full():
            with torch.no_grad():
                return renderer(verts, cam, albedo, sh)

        t_r, c_r, frag = timeit(rast, args.iters, device, args.warmup)
        t_f, c_f, _ = timeit(full, args.iters, device, args.warmup)
        cover = frag.mask.float().mean().item()
        line = (f"B={B:5d}  rasterize {B / t_r:10.1f} img/s ({t_r * 1e3:8.2f} ms)   "
                f"render {B / t_f:10.1f} img/s ({t_f * 1e3:8.2f} ms)   coverage {cover:.2f}")
        if device.type == "cpu":
            line += (f"   cpu time/img: rasterize {c_r / B * 1e3:.2f} ms, render {c_f / B * 1e3:.2f} ms"
                     f" (load {os.getloadavg()[0]:.1f})")
        if args.backward:
            vg = verts.clone().requires_grad_(True)

            def fwd_bwd():
                renderer(vg, cam, albedo, sh).image.mean().backward()

            t_b, _, _ = timeit(fwd_bwd, args.iters, device, args.warmup)
            line += f"   fwd+bwd {B / t_b:10.1f} img/s"
        if device.type == "cuda":
            line += f"   peak mem {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            torch.cuda.reset_peak_memory_stats(device)
        print(line, flush=True)


if __name__ == "__main__":
    main()
