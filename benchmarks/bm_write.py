"""The CPU cost of writing one character's outputs, part by part and as a whole.

    python benchmarks/bm_write.py                        # paper model topology, 9 expressions, 32 characters
    python benchmarks/bm_write.py --rounds 5 --characters 64

A GPU actor's own CPU time and the write tasks' cores are what the whole job spends per
character besides the device (docs/generation.md, "The write path"). This benchmark builds
``--characters`` characters once (one untrained actor on the CPU, ``write_stage=tasks``, so the
payloads are what the write tasks get), then times, in ms per character, CPU time of this
process (user + system) and wall time:

- glb: :func:`~dcnn_flame.io.gltf.glb_bytes` (neutral + 9 morph targets, UVs, texture);
- texture png / sheet png: the albedo texture and the preview contact sheet
  (:func:`~dcnn_flame.io.png.encode_png`; the sheet includes composing it from the tiles);
- results: the character's results table as Parquet bytes
  (:func:`~dcnn_flame.generation.writers.results_bytes`);
- obj (with ``--obj``): the OBJ text of the neutral and every expression (the writer's
  topology lines formatted once, :func:`~dcnn_flame.io.meshes.obj_topology`);
- write: everything of a character, files included (``write_payloads`` on tasks of 8
  characters, one thread): unpacking, the four parts above, the atomic writes (temp file, fsync,
  rename) and ``_SUCCESS``, into ``--workdir``; ``--write-threads 1,2`` times it with each number
  of threads (the write tasks' and the actors' ``write_threads``).

Nothing is asserted: numbers are printed. Run old and new code in alternation (e.g. a
``git worktree`` of the old commit, ``cd`` there, same interpreter) for side-by-side ratios;
glibc's heap trimming adds page faults to large temporary buffers that vary from process to
process (MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ set high remove them, 14th session).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _timed(fn: Callable[[dict], object], items: list, reps: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per item of ``fn`` over ``items``, ``reps`` times (after one warm-up call)."""
    fn(items[0])
    t0, c0 = time.perf_counter(), os.times()
    for _ in range(reps):
        for it in items:
            fn(it)
    c1, n = os.times(), reps * len(items)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return 1e3 * cpu / n, 1e3 * (time.perf_counter() - t0) / n


def main(argv: Optional[list[str]] = None) -> None:
    import pyarrow as pa

    from bm_generate import build_actor, make_checkpoint, make_inputs
    from dcnn_flame.config import GenerateConfig, RayConfig
    from dcnn_flame.generation.emotions import FIGURE8_EXPRESSIONS
    from dcnn_flame.generation.handoff import unpack_character
    from dcnn_flame.generation.preprocess import OUTPUT_SCHEMA
    from dcnn_flame.generation.write_stage import MeshTopology, _writer, write_payloads
    from dcnn_flame.generation.writers import png_bytes, results_bytes
    from dcnn_flame.io.gltf import glb_bytes
    from dcnn_flame.io.meshes import obj_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("demo", "paper"), default="paper", help="the head/texture sizes follow it")
    ap.add_argument("--characters", type=int, default=32)
    ap.add_argument("--task-size", type=int, default=8, help="characters per write task")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10, help="repetitions of each part per round")
    ap.add_argument("--obj", action="store_true", help="also OBJ files (timed as a part and in the whole write)")
    ap.add_argument("--write-threads", default="1", help="threads of the whole write (comma-separated: each timed, "
                    "side by side; on >= that many cores the wall-time ratio bounds the part that holds the GIL)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bm_write_")
    manifest, ids = make_inputs(workdir, min(16, args.characters), args.characters, 1, 256)
    checkpoint = make_checkpoint(workdir, args.arch)
    cfg = GenerateConfig(manifest_uri=manifest, checkpoint=checkpoint, output_uri=os.path.join(workdir, "out"),
                         name="bm-write", overwrite=True, device="cpu", detector="center", progress=False,
                         ray=RayConfig(), expressions=list(FIGURE8_EXPRESSIONS), write_stage="tasks",
                         write_obj=args.obj)
    actor, rows, settings = build_actor(cfg, checkpoint, ids, manifest, args.characters, workdir)
    n = args.task_size
    payloads = [actor(pa.Table.from_pylist(rows[i:i + n], schema=OUTPUT_SCHEMA)) for i in range(0, len(rows), n)]
    topology, step = MeshTopology.of(actor.loaded.flame_data), actor.loaded.step
    writer = _writer(settings, topology, step)
    chars = [unpack_character(r) for p in payloads for r in p.to_pylist()]
    for c in chars:  # the GLB embeds the texture's PNG, timed apart below
        c["texture_png"] = png_bytes(c["rec"].texture)
    now = dt.datetime.now(dt.timezone.utc)
    print(f"arch={args.arch} characters={len(chars)} expressions={len(chars[0]['names'])} "
          f"vertices={chars[0]['out'].neutral.shape[0]} texture={chars[0]['rec'].texture.shape} "
          f"tiles={None if chars[0]['tiles'] is None else chars[0]['tiles'].shape} workdir={workdir}", flush=True)

    def glb(c):
        o = c["out"]
        return glb_bytes(o.neutral.numpy(), topology.faces, topology.uv_coords, topology.uv_faces,
                         morph_targets={x: o.vertices[k].numpy() for k, x in enumerate(c["names"])},
                         texture_png=c["texture_png"], seams=writer.seams)

    def results(c):
        return results_bytes("bm", "bm", c["rec"], c["names"], c["au"], c["out"], settings, step, 1, (1.0, 1.0),
                             1.0, "glb", "preview", {}, now=now)

    parts = {
        "glb": (glb, chars),
        "texture png": (lambda c: png_bytes(c["rec"].texture), chars),
        "sheet png": (lambda c: writer._sheet_png(c["tiles"], c["names"]), chars),
        "results": (results, chars),
    }
    if args.obj:
        def objs(c):
            o = c["out"]
            for v in [o.neutral.numpy(), *o.vertices.numpy()]:
                obj_bytes(v, topology.faces, topology.uv_coords, topology.uv_faces, material_file="character.mtl",
                          comment="bm", topology=writer.obj_topology(len(v)))

        parts["obj"] = (objs, chars)
    threads = [int(t) for t in args.write_threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        raise SystemExit(f"--write-threads must be integers >= 1, got {args.write_threads!r}")
    for r in range(args.rounds):
        out = [f"{name} {cpu:.2f} ({wall:.2f})" for name, (fn, items) in parts.items()
               for cpu, wall in [_timed(fn, items, args.reps)]]
        for t in threads:
            run_settings = dataclasses.replace(settings, write_threads=t)

            def write(p):
                status = write_payloads(p, run_settings, topology, step).column("status").to_pylist()
                if set(status) != {"ok"}:
                    raise SystemExit(f"a character was not written: {status}")

            cpu, wall = _timed(write, payloads, 1)
            out.append(f"write{'' if len(threads) == 1 else f' x{t} threads'} {cpu / n:.2f} ({wall / n:.2f})")
        print(f"round {r}: CPU (wall) ms per character: " + ", ".join(out), flush=True)


if __name__ == "__main__":
    main()
