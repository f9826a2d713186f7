"""Batch-generation throughput (jobs/generate.py): model stage, actor stage and whole job.

    python benchmarks/bm_generate.py                # CPU: 24 characters, the demo architecture
    python benchmarks/bm_generate.py --arch paper --device cuda --bf16 --characters 20000 --unique 64 \
        --batch-size 64 --decode-batch-size 64 --num-actors 4 --num-gpus 0.25 --num-cpus-per-actor 2

Target on one H200 machine: >= 500 characters/s for the whole job with 9 expressions each (the
paper's Figure 8 set, the default here). Prints one line per measurement:

- decode: the CPU decode stage alone in this process (read, decode, find the face, align, the
  raw crop the actors get) over the portraits: images/s per process (one core's share).
- model:  the network forward of the actor (DCNN-FLAME + the AU detector when ``--teachers`` is
  given) on a batch of crops already on the device: images/s.
- actor:  one reconstruction actor without Ray (:class:`~dcnn_flame.generation.predictor.Reconstructor`
  called on batches of preprocessed characters): decode the crops, reconstruct, retarget every
  expression, write the GLB, the preview and the Parquet rows. Characters/s and images/s, with
  the split of its time (reconstruct / retarget+write) from the actor's own status rows.
  ``--write-threads 1,4`` measures it once per value, side by side (threads per actor that
  write the characters of a batch in parallel); ``--actor-calls 1,2`` likewise (batches an
  actor works on at once: the actor stage feeds it from that many threads, as Ray Data does).
  ``--write-stage actor,tasks`` runs the actor and job stages once per write stage (with
  ``tasks`` the actor stage times the actor handing the characters over, then writing them in
  this process as one write task would; the job runs the write tasks after the actors). ``--profile 40`` prints the actor stage's 40
  costliest functions (cProfile; how the H200 actor's write path was found, docs/generation.md).
- job:    the whole Ray Data job (:func:`dcnn_flame.generation.pipeline.run`: read, detect,
  align, actor pool, writes) over a manifest of ``--characters`` characters: characters/s and
  images/s of its Ray stage (the summary's own numbers), the wall time with set-up, the steady
  rate (characters/s between the 10th and 90th percentile of the characters' completion times,
  i.e. without the actors' start and the final drain) and how busy the machine's cores were.

The library is ``--unique`` rendered portraits (the demo's sample library) that the manifest
cycles through under distinct character ids, so every character is decoded, detected,
reconstructed and written on its own. The checkpoint is untrained unless ``--checkpoint`` is
given (throughput does not depend on the weights); ``--arch paper`` is the paper's ResNet-50 at
224 px, ``--arch demo`` the demo's small model. Nothing is asserted: numbers are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Optional

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_inputs(workdir: str, unique: int, characters: int, images_per_character: int,
                image_size: int) -> tuple[str, list[str]]:
    """Portraits under ``<workdir>/library`` and a manifest CSV of ``characters`` ids -> its path, ids."""
    import pandas as pd

    from dcnn_flame.generation.demo import make_sample_library

    lib = os.path.join(workdir, "library")
    uids = make_sample_library(lib, count=unique, image_size=image_size)
    portraits = [os.path.join(lib, u, "portrait.png") for u in uids]
    rows = []
    ids = [f"bm_{i:06d}" for i in range(characters)]
    for i, cid in enumerate(ids):
        for j in range(images_per_character):
            rows.append({"character_id": cid, "image_uri": portraits[(i + j) % unique]})
    manifest = os.path.join(workdir, f"manifest_{characters}x{images_per_character}.csv")
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, ids


def make_checkpoint(workdir: str, arch: str) -> str:
    """An untrained checkpoint of the chosen architecture (cached in ``workdir``)."""
    from dcnn_flame.generation.demo import demo_model_config, train_demo_checkpoint
    from dcnn_flame.model.config import ModelConfig

    path = os.path.join(workdir, f"checkpoint_{arch}")
    if not os.path.exists(os.path.join(path, "model.pt")):
        cfg = demo_model_config() if arch == "demo" else ModelConfig()
        train_demo_checkpoint(path, steps=0, model_cfg=cfg)
    return path


def bench_model(loaded, device: torch.device, batch: int, iters: int, bf16: bool) -> float:
    """images/s of the actor's network forward (reconstruct()) on [batch, 1, 3, S, S] crops on the device."""
    from dcnn_flame.generation.predictor import reconstruct

    size = int(loaded.model.cfg.image_size)
    x = torch.rand(batch, 1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    reconstruct(loaded, x, bf16)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        reconstruct(loaded, x, bf16)
    _sync(device)
    return batch * iters / (time.perf_counter() - t)


def bench_decode(cfg, manifest: str, images: int) -> dict:
    """Stage 1 (preprocess_character) on ``images`` images of the manifest, one after the other."""
    import pandas as pd

    from dcnn_flame.generation.pipeline import decode_settings, storage_options
    from dcnn_flame.generation.preprocess import _tools, preprocess_character

    dsettings, _ = decode_settings(cfg, storage_options(cfg), cfg.detector)
    uris = pd.read_csv(manifest)["image_uri"].tolist()[:images]
    _tools(dsettings)  # detector/landmarker loading is not per image
    preprocess_character("warm", "warm", uris[:1], [-1], dsettings)
    t = time.perf_counter()
    ok = 0
    for i, u in enumerate(uris):
        ok += len(preprocess_character(f"c{i}", f"c{i}", [u], [-1], dsettings)["images"])
    return {"images": len(uris), "ok": ok, "wall_s": time.perf_counter() - t}


def build_actor(cfg, checkpoint: str, manifest_ids: list[str], manifest: str, characters: int, workdir: str):
    """A Reconstructor (no Ray) and ``characters`` preprocessed rows (decode/align done here,
    once per distinct image list) -> (actor, rows, settings)."""
    import pandas as pd

    import dcnn_flame
    from dcnn_flame.generation.pipeline import decode_settings, resolve_bank, storage_options
    from dcnn_flame.generation.predictor import ActorSettings, Reconstructor
    from dcnn_flame.generation.preprocess import preprocess_character
    from dcnn_flame.io import storage

    options = storage_options(cfg)
    names, bank_au = resolve_bank(cfg, options)
    dsettings, _ = decode_settings(cfg, options, cfg.detector)
    table = pd.read_csv(manifest)
    by_id = table.groupby("character_id", sort=False)["image_uri"].apply(list)
    rows, cache = [], {}
    for cid in manifest_ids[:characters]:
        uris = by_id[cid]
        key = tuple(uris)
        if key not in cache:
            cache[key] = preprocess_character(cid, cid, uris, [-1] * len(uris), dsettings)
        rows.append(dict(cache[key], character_id=cid, character_key=storage.safe_key(cid)))
    run_uri = os.path.join(workdir, "actor_out")
    shutil.rmtree(run_uri, ignore_errors=True)
    settings = ActorSettings(
        checkpoint_uri=checkpoint, run_uri=run_uri, run_name="bm-actor", storage=options, bank_names=tuple(names),
        bank_au=tuple(tuple(float(x) for x in r) for r in bank_au), teachers_path=cfg.teachers_path,
        device=cfg.device, bf16=cfg.bf16, cuda_wait=cfg.cuda_wait, write_obj=cfg.write_obj, preview=cfg.preview,
        preview_size=cfg.preview_size, bake_detail=cfg.bake_detail, model_version=dcnn_flame.__version__,
        write_threads=cfg.write_threads, write_stage=cfg.write_stage)
    return Reconstructor(settings), rows, settings


def bench_actor(cfg, checkpoint: str, manifest_ids: list[str], manifest: str, characters: int, batch: int,
                workdir: str) -> dict:
    """One Reconstructor on preprocessed rows (decode/align done beforehand, untimed); with
    ``cfg.actor_calls > 1`` its batches are fed from that many threads at once, as Ray Data does."""
    import pyarrow as pa

    from dcnn_flame.generation.preprocess import OUTPUT_SCHEMA

    actor, rows, settings = build_actor(cfg, checkpoint, manifest_ids, manifest, characters, workdir)
    batches = [pa.Table.from_pylist(rows[i:i + batch], schema=OUTPUT_SCHEMA) for i in range(0, len(rows), batch)]
    actor(batches[0])  # warm-up (lazy initialisation, cuDNN autotuning), untimed
    t = time.perf_counter()
    if int(cfg.actor_calls) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(int(cfg.actor_calls)) as calls:
            status = list(calls.map(actor, batches))
    else:
        status = [actor(b) for b in batches]
    _sync(actor.device)
    wall = time.perf_counter() - t
    write_s = 0.0
    if cfg.write_stage == "tasks":  # the actor handed the characters over: write them as one task would
        from dcnn_flame.generation.write_stage import MeshTopology, write_payloads

        topology = MeshTopology.of(actor.loaded.flame_data)
        t = time.perf_counter()
        status = [write_payloads(b, settings, topology, actor.loaded.step) for b in status]
        write_s = time.perf_counter() - t
    st = pa.concat_tables(status).to_pandas()
    ok = int((st["status"] == "ok").sum())
    return {"characters": len(rows), "ok": ok, "images": int(st["num_images"].sum()), "wall_s": wall,
            "write_s": write_s, "reconstruct_ms": float(st["reconstruct_ms"].mean()),
            "write_ms": float(st["write_ms"].mean()), "expressions": len(settings.bank_names), "load_s": actor.load_s}


_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _cpu_times() -> Optional[tuple[float, float]]:
    """(busy, total) jiffies of all cores from /proc/stat (Linux), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)  # idle + iowait
    return sum(v) - idle, sum(v)


def completion_times(run_uri: str):
    """The characters' completion times (their results rows' ``created_at``), sorted, in
    ``time.time()`` seconds: a float64 array."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as pds

    table = pds.dataset(os.path.join(run_uri, "results"), format="parquet").to_table(
        columns=["created_at"], filter=pds.field("expression") == "reconstruction")
    ts = table.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.sort(ts.to_numpy()) / 1e6


def steady_rate(run_uri: str) -> tuple[float, int]:
    """Characters/s between the 10th and the 90th percentile of the characters' completion
    times: the job's rate once every actor has started and before the last batches drain.
    Returns (rate, characters)."""
    t = completion_times(run_uri)
    if len(t) < 20:
        return float("nan"), len(t)
    lo, hi = int(0.1 * len(t)), int(0.9 * len(t))
    return (hi - lo) / max(t[hi] - t[lo], 1e-9), len(t)


#: Shares of the characters complete around which ``--memory`` reads the actors' memory.
MEMORY_POINTS = (0.2, 0.5, 0.9)
#: Each reading is the median over the samples while this share of the characters completed
#: on either side of its point.
MEMORY_WINDOW = 0.05


def actor_memory(procs, run_uri: str) -> Optional[dict]:
    """The reconstruction actors' private memory (mean per actor) around 20 / 50 / 90 % of the
    characters complete, and its growth per 1,000 characters from the first reading to the last
    (a pipeline whose memory stays flat grows by ~0), or None without enough characters."""
    import numpy as np

    groups = {k: v for k, v in procs.memory_by_label().items() if "Reconstructor" in k}
    t = completion_times(run_uri)
    if not groups or len(t) < 20:
        return None
    group = max(groups, key=lambda g: groups[g]["private"])
    n = len(t) - 1

    def at(f: float) -> float:
        return float(t[min(max(int(round(f * n)), 0), n)])

    levels = procs.private_in(group, [(at(f - MEMORY_WINDOW), at(f + MEMORY_WINDOW)) for f in MEMORY_POINTS])
    span = (MEMORY_POINTS[-1] - MEMORY_POINTS[0]) * len(t)
    growth = (levels[-1] - levels[0]) / span * 1000.0
    return {"group": group, "points": list(zip(MEMORY_POINTS, levels)),
            "growth_per_1000": growth if np.isfinite(growth) else float("nan")}


def bench_job(cfg, by_process: bool = False, memory: bool = False) -> dict:
    """The whole job through pipeline.run (a fresh run name, so every character runs). With
    ``by_process`` also the CPU seconds of every process of this user, grouped (``by_process``
    key; :mod:`proc_cpu`; the Ray start-up and shutdown inside ``run`` are included); with
    ``memory`` the groups' peak memory (``memory`` key) and the actors' over the run
    (``actor_memory`` key, :func:`actor_memory`)."""
    import contextlib

    from dcnn_flame.generation.pipeline import run

    procs = None
    if by_process or memory:
        from proc_cpu import ProcessCpu

        procs = ProcessCpu()
    c0 = _cpu_times()
    with procs if procs is not None else contextlib.nullcontext():
        summary = run(cfg)
    c1 = _cpu_times()
    steady, _ = steady_rate(summary.run_uri) if summary.completed else (float("nan"), 0)
    busy = (c1[0] - c0[0]) / max(c1[1] - c0[1], 1.0) if c0 and c1 else float("nan")
    return {"characters": summary.completed + summary.failed, "ok": summary.completed,
            "failed": summary.failed, "images": summary.images, "stage_s": summary.stage_s,
            "elapsed_s": summary.elapsed_s, "cps": summary.characters_per_s, "ips": summary.images_per_s,
            "expressions": summary.expressions, "steady": steady, "cpu_busy": busy,
            "cpu_s": (c1[0] - c0[0]) / _TICKS if c0 and c1 else float("nan"),
            "by_process": procs.by_label() if by_process else None,
            "memory": procs.memory_by_label() if memory else None,
            "actor_memory": actor_memory(procs, summary.run_uri) if memory and summary.completed else None}


def print_memory(groups: dict, actors: Optional[dict]) -> None:
    """The lines of ``--memory`` (MB = 10^6 bytes)."""
    mb = 1e6
    total = groups.get("all processes", {}).get("resident", 0)
    print(f"  memory, peak per process resident / private MB (the group's private at one time), "
          f"{total / mb:.0f} MB resident in all processes at the most:", flush=True)
    for name, g in groups.items():
        if name != "all processes" and g["private"] >= 1e6:
            print(f"    {g['resident'] / mb:8.0f} / {g['private'] / mb:6.0f}  ({g['private_sum'] / mb:.0f})  {name} "
                  f"({g['processes']} process{'es' if g['processes'] > 1 else ''})", flush=True)
    if actors is not None:
        pts = ", ".join(f"{100 * f:.0f} % {v / mb:.0f}" for f, v in actors["points"])
        print(f"  memory of the reconstruction actors (private MB, mean per actor; median while the share "
              f"+-{100 * MEMORY_WINDOW:.0f} % of the characters completed): {pts}; growth "
              f"{actors['growth_per_1000'] / mb:+.1f} MB per 1,000 characters", flush=True)


def _counts(text: str, flag: str) -> list[int]:
    """A comma-separated list of integers >= 1 (each value run side by side)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} must be integers separated by commas, got {text!r}")
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} values must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line (:func:`parse_args` checks what argparse cannot)."""
    from dcnn_flame.generation.emotions import FIGURE8_EXPRESSIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast of the network forward (CUDA)")
    ap.add_argument("--arch", choices=("demo", "paper"), default="demo",
                    help="untrained checkpoint: the demo's small model or the paper's ResNet-50 at 224 px")
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint instead (directory or run)")
    ap.add_argument("--teachers", default=None, help="AU detector file (adds its forward to the model stage)")
    ap.add_argument("--characters", type=int, default=24, help="characters of the whole-job run")
    ap.add_argument("--actor-characters", type=int, default=None,
                    help="characters of the actor-stage run (default: --characters, at most 512)")
    ap.add_argument("--unique", type=int, default=8, help="distinct rendered portraits the manifest cycles")
    ap.add_argument("--images-per-character", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=256, help="side of the rendered portraits")
    ap.add_argument("--expressions", default=",".join(FIGURE8_EXPRESSIONS),
                    help="comma-separated bank names (default: the paper's 9 Figure 8 expressions)")
    ap.add_argument("--batch-size", type=int, default=4, help="characters per actor batch")
    ap.add_argument("--decode-batch-size", type=int, default=4)
    ap.add_argument("--num-actors", type=int, default=1)
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (e.g. 0.25: 4 actors per GPU)")
    ap.add_argument("--num-cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--write-threads", default="1", help="threads per actor that retarget and write; a "
                    "comma-separated list (e.g. 1,4) runs the actor and job stages once per value, side by side")
    ap.add_argument("--write-stage", default="actor", help="actor, tasks, or both comma-separated (actor,tasks: "
                    "the actor and job stages run once per value, side by side); with tasks the actor stage "
                    "times the actor handing characters over, then the writing as one write task would")
    ap.add_argument("--write-batch-size", type=int, default=8, help="characters per write task (write_stage=tasks)")
    ap.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the local Ray (default: all cores)")
    ap.add_argument("--model-batch", type=int, default=None, help="images per forward of the model run "
                    "(default: 256 on CUDA, 16 on CPU)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-preview", action="store_true", help="skip preview.png (its render costs)")
    ap.add_argument("--obj", action="store_true", help="also write OBJ files")
    ap.add_argument("--detector", default="center", help="face boxes: center (the portraits are centred), "
                    "s3fd, opencv or auto")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile the actor stage and print its N costliest functions (cumulative and own time)")
    ap.add_argument("--ray-stats", action="store_true", help="print Ray Data's per-operator statistics after "
                    "each whole-job run")
    ap.add_argument("--actor-calls", default="1", help="batches one actor works on at once (actor_calls; "
                    "comma-separated: each run side by side; 2 overlaps a batch's writing with the next one's "
                    "device part)")
    ap.add_argument("--cuda-wait", default="blocking", help="how GPU actors wait for the GPU (blocking, spin, "
                    "yield, auto); comma-separated runs the actor and job stages once per value, side by side")
    ap.add_argument("--cpu-by-process", action="store_true", help="job stage: also split the CPU time between "
                    "the driver, Ray's daemons and the workers by what they ran (ms per character; Linux)")
    ap.add_argument("--memory", action="store_true", help="job stage: also each process group's peak memory "
                    "(resident, private) and the reconstruction actors' private memory around 20/50/90 %% of the "
                    "characters (does it stay flat?; Linux)")
    ap.add_argument("--stages", default="decode,model,actor,job", help="which measurements to run")
    ap.add_argument("--workdir", default=None, help="inputs and outputs (default: a temporary folder)")
    return ap


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, checked (also by tests/test_gpu_check.py, for benchmarks/gpu_check.sh's
    commands): the comma-separated lists become ``stages`` (a set) and lists of values."""
    args = build_parser().parse_args(argv)
    args.stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    unknown = args.stages - {"decode", "model", "actor", "job"}
    if unknown:
        raise SystemExit(f"unknown --stages {sorted(unknown)}; choose from decode, model, actor, job")
    args.write_threads = _counts(args.write_threads, "--write-threads")
    args.write_stage = [w.strip() for w in args.write_stage.split(",") if w.strip()]
    if not args.write_stage or set(args.write_stage) - {"actor", "tasks"}:
        raise SystemExit(f"--write-stage takes actor, tasks or both, got {','.join(args.write_stage)!r}")
    args.cuda_wait = [c.strip() for c in args.cuda_wait.split(",") if c.strip()]
    if not args.cuda_wait or set(args.cuda_wait) - {"blocking", "spin", "yield", "auto"}:
        raise SystemExit(f"--cuda-wait takes blocking, spin, yield, auto (comma-separated), got "
                         f"{','.join(args.cuda_wait)!r}")
    args.actor_calls = _counts(args.actor_calls, "--actor-calls")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    from dcnn_flame.config import GenerateConfig, RayConfig
    from dcnn_flame.generation.predictor import load_model

    args = parse_args(argv)
    stages, write_threads, write_stages = args.stages, args.write_threads, args.write_stage
    cuda_waits, actor_calls = args.cuda_wait, args.actor_calls
    workdir = args.workdir or tempfile.mkdtemp(prefix="bm_generate_")
    os.makedirs(workdir, exist_ok=True)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    manifest, ids = make_inputs(workdir, args.unique, args.characters, args.images_per_character, args.image_size)
    checkpoint = args.checkpoint or make_checkpoint(workdir, args.arch)
    print(f"device={device} bf16={args.bf16} arch={'checkpoint' if args.checkpoint else args.arch} "
          f"threads={torch.get_num_threads()} cpus={os.cpu_count()} workdir={workdir} "
          f"(inputs {time.perf_counter() - t0:.1f}s)", flush=True)
    cfg = GenerateConfig(
        manifest_uri=manifest, checkpoint=checkpoint, output_uri=os.path.join(workdir, "out"),
        name=f"bm-{int(time.time())}", overwrite=True, teachers_path=args.teachers,
        expressions=[e.strip() for e in args.expressions.split(",") if e.strip()], preview=not args.no_preview,
        write_obj=args.obj, batch_size=args.batch_size, decode_batch_size=args.decode_batch_size,
        num_actors=args.num_actors, num_gpus=args.num_gpus, num_cpus_per_actor=args.num_cpus_per_actor,
        device=args.device, bf16=args.bf16, detector=args.detector, progress=False, ray_stats=args.ray_stats,
        write_batch_size=args.write_batch_size, ray=RayConfig(num_cpus=args.ray_cpus))

    if "decode" in stages:
        r = bench_decode(cfg, manifest, min(args.characters * args.images_per_character, 256))
        print(f"decode: {r['ok']}/{r['images']} images in {r['wall_s']:.2f}s: "
              f"{r['images'] / r['wall_s']:10.2f} images/s in one process "
              f"({1000.0 * r['wall_s'] / r['images']:.2f} ms per image, detector={args.detector})", flush=True)
    if "model" in stages:
        loaded = load_model(checkpoint, teachers_path=args.teachers)
        loaded.model.to(device)
        if loaded.au_net is not None:
            loaded.au_net.to(device)
        mb = args.model_batch or (256 if device.type == "cuda" else 16)
        ips = bench_model(loaded, device, mb, args.iters, args.bf16)
        au = "with" if loaded.au_net is not None else "without"
        print(f"model: forward {au} AU detector, batch {mb} at {loaded.model.cfg.image_size} px: "
              f"{ips:10.1f} images/s", flush=True)
        del loaded
    for ws, wt, cwm, ac in [(ws, wt, c, a) for ws in write_stages for wt in write_threads for c in cuda_waits
                            for a in actor_calls]:
        cfg = dataclasses.replace(cfg, write_threads=wt, write_stage=ws, cuda_wait=cwm, actor_calls=ac,
                                  name=f"bm-{int(time.time())}-{ws}-w{wt}-{cwm}-c{ac}")
        tag = (f"write_stage={ws}, write_threads={wt}" + (f", cuda_wait={cwm}" if device.type == "cuda" else "")
               + (f", actor_calls={ac}" if len(actor_calls) > 1 or ac > 1 else ""))
        if "actor" in stages:
            n = args.actor_characters or min(args.characters, 512)
            prof = None
            if args.profile > 0:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            r = bench_actor(cfg, checkpoint, ids, manifest, n, args.batch_size, workdir)
            if prof is not None:
                import io
                import pstats

                prof.disable()
                buf = io.StringIO()
                stats = pstats.Stats(prof, stream=buf)
                stats.sort_stats("cumulative").print_stats(args.profile)
                stats.sort_stats("tottime").print_stats(args.profile)
                print(buf.getvalue(), flush=True)
            if ws == "tasks":
                n = r["characters"]
                split = (f"the actor handing over {n / r['wall_s']:.2f} characters/s (reconstruct "
                         f"{r['reconstruct_ms']:.1f} ms per character), writing them in one process "
                         f"{n / r['write_s']:.2f} characters/s")
                r = dict(r, wall_s=r["wall_s"] + r["write_s"])
            elif wt == 1 and ac == 1:
                rest = 1000.0 * r["wall_s"] / r["characters"] - r["reconstruct_ms"] - r["write_ms"]
                split = (f"per character: decode crops + reconstruct {r['reconstruct_ms']:.1f} ms, write "
                         f"{r['write_ms']:.1f} ms, retarget and the rest {rest:.1f} ms")
            else:  # the characters' retarget/write times overlap: only their means mean something
                split = (f"per character, overlapping: reconstruct {r['reconstruct_ms']:.1f} ms, "
                         f"write {r['write_ms']:.1f} ms")
            print(f"actor ({tag}): {r['ok']}/{r['characters']} characters x {r['expressions']} "
                  f"expressions in {r['wall_s']:.2f}s: {r['characters'] / r['wall_s']:10.2f} characters/s, "
                  f"{r['images'] / r['wall_s']:10.2f} images/s ({split}; checkpoint load {r['load_s']:.1f}s)",
                  flush=True)
        if "job" in stages:
            r = bench_job(cfg, by_process=args.cpu_by_process, memory=args.memory)
            print(f"job ({tag}): {r['ok']}/{r['characters']} characters ({r['failed']} failed) x "
                  f"{r['expressions']} expressions, Ray stage {r['stage_s']:.2f}s: {r['cps']:10.2f} characters/s, "
                  f"{r['ips']:10.2f} images/s ({r['elapsed_s']:.1f}s with set-up); steady "
                  f"{r['steady']:.1f} characters/s (10th-90th percentile of completions); "
                  f"CPU busy {100 * r['cpu_busy']:.0f} % of all cores", flush=True)
            if r["by_process"] is not None:
                n = max(r["characters"], 1)
                counted = sum(v[0] for v in r["by_process"].values())
                print(f"  CPU by process, ms per character (all cores: {1000 * r['cpu_s'] / n:.1f}; "
                      f"counted below: {1000 * counted / n:.1f}; the rest is other users' and the kernel's):",
                      flush=True)
                for name, (sec, nproc) in r["by_process"].items():
                    if 1000 * sec / n >= 0.05:
                        print(f"    {1000 * sec / n:8.2f}  {name} ({nproc} process{'es' if nproc > 1 else ''})",
                              flush=True)
            if r["memory"] is not None:
                print_memory(r["memory"], r["actor_memory"])

if __name__ == "__main__":
    main()
