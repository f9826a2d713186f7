"""Where a generation actor's time goes, phase by phase, and how much of it the device computes.

    python benchmarks/bm_actor_phases.py                                   # CPU, demo model
    python benchmarks/bm_actor_phases.py --arch paper --device cuda --bf16 --batch-size 128 --profile --micro

One :class:`~dcnn_flame.generation.predictor.Reconstructor` without Ray, on ``--batch-size``
preprocessed characters (the actor's steps replayed one by one, the device synchronised after
each so that each line is that step's own wall time), in ms per character:

- crops to the device: the raw 8-bit crops joined, copied to the device and converted to float
  there (:func:`~dcnn_flame.generation.predictor.decode_crops`; before the 14th session two
  lines: "decode crops" on the CPU, then "h2d" of the float tensors);
- reconstruct: the network forward and the batch's outputs copied to the host
  (:func:`~dcnn_flame.generation.predictor.reconstruct`);
- retarget: every expression's mesh on the device (head model + detail decoder + baking);
  retarget to host: the meshes copied to the host;
- preview tiles: the contact sheet's tiles rendered on the device and copied back;
- handoff: what ``write_stage=tasks`` adds (packing, the payload table);
- whole call: the actor's own ``__call__`` on the same batch (``--write-stage``; with
  ``actor`` it includes writing the files).

``--profile``: the same call under ``torch.profiler``: the device's kernel and copy time per
character (on one GPU shared by several actors this is what they queue for; the 10th/13th
session notes in docs/generation.md) and the costliest operators.
``--micro`` (CUDA): side by side, a device -> host copy of one batch's meshes pageable vs pinned
(:func:`~dcnn_flame.generation.transfer.to_host`), and the detail decoder on B x (K + 1) codes
with NCHW against channels-last activations (what :class:`~dcnn_flame.model.detail.DetailDecoder`
does on CUDA). Nothing is asserted: numbers are printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _timed(device: torch.device, fn: Callable, reps: int = 1) -> tuple[float, object]:
    """(seconds per call, last result) with the device synchronised around the calls."""
    from bm_generate import _sync

    _sync(device)
    t = time.perf_counter()
    out = None
    for _ in range(reps):
        out = fn()
    _sync(device)
    return (time.perf_counter() - t) / reps, out


def phases(actor, batch, device: torch.device) -> dict[str, float]:
    """The actor's steps on ``batch`` (a preprocess OUTPUT_SCHEMA table) -> seconds per step."""
    from dcnn_flame.generation.handoff import pack_character, payload_table
    from dcnn_flame.generation.predictor import _split_outputs, _to_cpu, decode_crops, reconstruct

    T: dict[str, float] = {}
    rows = batch.to_pylist()
    n, size = len(rows[0]["images"]), actor.image_size  # the benchmark's characters have as many images each
    T["crops to the device"], imgs = _timed(device, lambda: decode_crops(
        [c for r in rows for c in r["images"]], size, device).view(len(rows), n, 3, size, size))
    T["reconstruct"], recs = _timed(device, lambda: reconstruct(actor.loaded, imgs, actor.settings.bf16))
    T["retarget"], (names, au, out) = _timed(device, lambda: actor._retarget_many(recs))
    T["retarget to host"], outs = _timed(device, lambda: _split_outputs(_to_cpu(out), len(recs)))
    T["preview tiles"], tiles = _timed(device, lambda: actor.writer.preview_tiles(
        _split_outputs(out, len(recs)), [r.albedo for r in recs], names))
    T["handoff"], _ = _timed(device, lambda: payload_table([
        pack_character(rows[k], recs[k], names, au, outs[k], None if tiles is None else tiles[k], 0.0, 0.0, 0.0)
        for k in range(len(recs))]))
    T["whole call"], _ = _timed(device, lambda: actor(batch))
    return T


def device_time(actor, batch, top: int) -> None:
    """torch.profiler over one actor call: device time per character and the costliest operators."""
    from torch.profiler import ProfilerActivity, profile

    from bm_generate import _sync

    n = batch.num_rows
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        actor(batch)
        _sync(actor.device)
    events = prof.key_averages()

    def dev_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    on_device = [e for e in events if str(e.device_type).endswith("CUDA")]
    ops = [e for e in events if not str(e.device_type).endswith("CUDA")]
    total = sum(dev_us(e) for e in on_device) or sum(dev_us(e) for e in ops)
    print(f"device time (kernels and copies): {total / 1000 / n:.3f} ms per character "
          f"({total / 1000:.1f} ms for {n})", flush=True)
    for e in sorted(ops, key=dev_us, reverse=True)[:top]:
        if dev_us(e) > 0:
            print(f"  {dev_us(e) / 1000 / n:8.4f} ms/char  {e.count:6d} calls  {e.key}")


def micro(device: torch.device, batch: int, expressions: int) -> None:
    """Side-by-side CUDA microbenchmarks (see the module docstring)."""
    import torch.nn.functional as F

    from dcnn_flame.generation.transfer import to_host
    from dcnn_flame.model.config import ModelConfig
    from dcnn_flame.model.detail import DetailDecoder

    meshes = torch.randn(batch, expressions + 1, 5023, 3, device=device)
    mb = meshes.numel() * 4 / 1e6
    page, _ = _timed(device, lambda: meshes.cpu(), 5)
    pinned, _ = _timed(device, lambda: to_host(meshes), 5)
    print(f"device -> host, {mb:.0f} MB of meshes: pageable {page * 1e3:.1f} ms ({mb / 1e3 / page:.1f} GB/s), "
          f"pinned {pinned * 1e3:.1f} ms ({mb / 1e3 / pinned:.1f} GB/s)", flush=True)
    mc = ModelConfig()
    dec = DetailDecoder(mc.detail_dim, 50, mc.uv_size, mc.displacement_scale).to(device).eval()
    n = batch * (expressions + 1)
    g = torch.Generator(device=device).manual_seed(0)
    args = [torch.randn(n, d, device=device, generator=g) for d in (mc.detail_dim, 50, 3)]

    def nchw():
        x = F.leaky_relu(dec.fc(torch.cat(args, 1)), 0.2).view(-1, dec.width, 4, 4)
        return dec.max_displacement * torch.tanh(dec.out(dec.blocks(x)))

    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        t_nchw, ref = _timed(device, nchw, 3)
        t_last, new = _timed(device, lambda: dec(*args), 3)
    print(f"detail decoder, {n} maps of {mc.uv_size} px, bf16: NCHW {t_nchw * 1e3:.1f} ms, channels-last "
          f"{t_last * 1e3:.1f} ms (x{t_nchw / t_last:.1f}; max |difference| {(ref - new).abs().max().item():.2g} m)",
          flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also parsed by tests/test_gpu_check.py, for benchmarks/gpu_check.sh's commands)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA), as the job's bf16=true")
    ap.add_argument("--arch", choices=("demo", "paper"), default="demo")
    ap.add_argument("--batch-size", type=int, default=None, help="characters per call (default 128 on CUDA, 8 on CPU)")
    ap.add_argument("--unique", type=int, default=16, help="distinct portraits the characters cycle")
    ap.add_argument("--write-stage", choices=("actor", "tasks"), default="tasks",
                    help="the whole call's write stage (tasks: device work + handoff; actor: + writing)")
    ap.add_argument("--no-preview", action="store_true")
    ap.add_argument("--reps", type=int, default=2, help="rounds of the phases (the first after one warm-up call)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler: device time per character")
    ap.add_argument("--top", type=int, default=12, help="operators listed with --profile")
    ap.add_argument("--micro", action="store_true", help="pageable vs pinned copies, NCHW vs channels-last (CUDA)")
    ap.add_argument("--workdir", default=None)
    return ap


def main(argv: Optional[list[str]] = None) -> None:
    import pyarrow as pa

    from bm_generate import build_actor, make_checkpoint, make_inputs
    from dcnn_flame.config import GenerateConfig, RayConfig
    from dcnn_flame.generation.emotions import FIGURE8_EXPRESSIONS
    from dcnn_flame.generation.preprocess import OUTPUT_SCHEMA

    args = build_parser().parse_args(argv)

    device = torch.device(args.device)
    batch = args.batch_size or (128 if device.type == "cuda" else 8)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bm_actor_phases_")
    manifest, ids = make_inputs(workdir, args.unique, batch, 1, 256)
    checkpoint = make_checkpoint(workdir, args.arch)
    cfg = GenerateConfig(manifest_uri=manifest, checkpoint=checkpoint, output_uri=os.path.join(workdir, "out"),
                         name="phases", overwrite=True, preview=not args.no_preview, device=args.device,
                         bf16=args.bf16, detector="center", progress=False, ray=RayConfig(),
                         expressions=list(FIGURE8_EXPRESSIONS), write_stage=args.write_stage)
    actor, rows, _ = build_actor(cfg, checkpoint, ids, manifest, batch, workdir)
    table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    print(f"device={device} bf16={args.bf16} arch={args.arch} batch={batch} write_stage={args.write_stage} "
          f"preview={not args.no_preview} threads={torch.get_num_threads()}", flush=True)
    actor(table)  # warm-up: lazy initialisation, cuDNN autotuning, the host allocator's first blocks
    for rep in range(args.reps):
        T = phases(actor, table, device)
        steps = sum(v for k, v in T.items() if k != "whole call")
        print(f"round {rep}: " + ", ".join(f"{k} {1e3 * v / batch:.3f}" for k, v in T.items())
              + f" ms per character (steps {1e3 * steps / batch:.2f}; {batch / T['whole call']:.1f} characters/s "
              f"for the whole call)", flush=True)
    if args.profile:
        if device.type != "cuda":
            print("--profile: device time needs --device cuda; skipped")
        else:
            device_time(actor, table, args.top)
    if args.micro:
        if device.type != "cuda":
            print("--micro: needs --device cuda; skipped")
        else:
            micro(device, batch, len(FIGURE8_EXPRESSIONS))


if __name__ == "__main__":
    main()
