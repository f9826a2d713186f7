"""The batch expression-generation job (driver): plan -> Ray Data graph -> summary.

``run(cfg)`` (``jobs/generate.py``):

1. resolve the embedded demo defaults (sample library, demo checkpoint; :mod:`.demo`) for URIs
   left at None, the run folder ``<out>/<safe name>`` and the expression bank;
2. guard the run: ``<run>/_RUN.json`` binds the run name to its checkpoint and settings; a rerun
   with other ones is refused unless ``overwrite=true`` (outputs of two models never mix);
3. plan the library (:mod:`.library`: listing or manifest, id checks, safe keys); plan failures
   (bad ids, characters without images) go to ``failures/@plan.parquet``;
4. skip characters whose ``_SUCCESS`` exists (unless overwrite), then stream the rest through
   ``read (from the plan) -> map_batches(preprocess_batch) [CPU tasks] ->
   map_batches(Reconstructor, ActorPoolStrategy) [GPU/CPU actors, checkpoint loaded once]``;
   the actors write every output themselves under deterministic keys and return one small
   status row per character, which the driver counts (memory stays flat); with
   ``write_stage=tasks`` the actors hand each character over instead (:mod:`.handoff`) and
   ``repartition -> map_batches(write_payloads)`` CPU tasks write it (:mod:`.write_stage`);
5. print and return a :class:`GenerateSummary` (counts, throughput, where the outputs are, an
   example query). Failure rows are data: the exit code is 0 unless ``fail_on_errors``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

if TYPE_CHECKING:
    from dcnn_flame.config import GenerateConfig

RUN_FILE = "_RUN.json"
#: Key of the plan-stage failures table. "@" never occurs in a character key (safe_key keeps
#: [A-Za-z0-9._-]) and, unlike a leading "_", pyarrow/pandas do not skip the file.
PLAN_FAILURES_KEY = "@plan"


@dataclass
class GenerateSummary:
    """What a run did (printed by the job; ``exit_code`` is the process exit status)."""

    run_uri: str
    run_name: str
    checkpoint: str
    checkpoint_step: int
    characters: int = 0
    """Characters in the plan (valid ids with images)."""
    skipped: int = 0
    """Already complete from an earlier run (``_SUCCESS`` present)."""
    completed: int = 0
    """Completed by this run."""
    failed: int = 0
    """Characters that ran and failed (no usable image, or an error)."""
    plan_failures: int = 0
    """Failure rows of the plan stage (bad ids, characters without images)."""
    image_failures: int = 0
    """Failure rows of single images of characters that ran (decode, detect, ...)."""
    images: int = 0
    """Images of the characters that ran."""
    expressions: int = 0
    """Expressions per character."""
    elapsed_s: float = 0.0
    """Wall time of the whole run (setup, plan, Ray stage)."""
    stage_s: float = 0.0
    """Wall time of the Ray Data stage (decode, reconstruct, retarget, write): throughput base."""
    failed_ids: list[str] = field(default_factory=list)
    unrecorded_ids: list[str] = field(default_factory=list)
    """Failed characters whose failure rows storage refused (their ids are only here)."""
    exit_code: int = 0

    @property
    def characters_per_s(self) -> float:
        return (self.completed + self.failed) / self.stage_s if self.stage_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.stage_s if self.stage_s > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"generate: run {self.run_name!r} -> {self.run_uri}",
               f"  checkpoint {self.checkpoint} (step {self.checkpoint_step})",
               f"  characters: {self.characters} planned, {self.completed} completed now, {self.skipped} already "
               f"complete, {self.failed} failed; {self.expressions} expressions each",
               f"  failure rows: {self.plan_failures} plan (bad id / no image), {self.image_failures} image",
               f"  {self.elapsed_s:.1f}s in all; Ray stage {self.stage_s:.1f}s: "
               f"{self.characters_per_s:.2f} characters/s, {self.images_per_s:.2f} images/s"]
        for ids, what in ((self.failed_ids, "failed characters"),
                          (self.unrecorded_ids, "failed characters WITHOUT failure rows (storage refused them; "
                                                "see the job's log)")):
            if ids:
                more = "" if len(ids) <= 10 else f" (+{len(ids) - 10} more)"
                out.append(f"  {what}: {', '.join(ids[:10])}{more}")
        return out


def storage_options(cfg: "GenerateConfig") -> StorageOptions:
    return StorageOptions(endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region, anon=cfg.storage.anon)


def _fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: The folders of a run that hold per-character state (cleared by an overwrite with new settings).
RUN_STATE_FOLDERS = ("characters", "results", "failures")


def clear_run(run_uri: str, options: StorageOptions) -> None:
    """Delete a run's per-character state (:data:`RUN_STATE_FOLDERS`): no ``_SUCCESS``, result or
    failure row of the old settings survives. Its ``_RUN.json`` is left to the caller."""
    for name in RUN_STATE_FOLDERS:
        fs, path = storage.get_fs(storage.join(run_uri, name), options)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def guard_run(run_uri: str, info: dict, overwrite: bool, options: StorageOptions) -> None:
    """Bind the run to its settings (``_RUN.json``).

    A new run writes ``_RUN.json``. A rerun with the same fingerprint goes on. A rerun with other
    settings is refused, unless ``overwrite``: then the run's characters, results and failures
    are deleted first (:func:`clear_run`) and ``_RUN.json`` is rewritten last, so that a job
    killed in between leaves a run that a plain rerun either refuses (old ``_RUN.json``, other
    settings) or continues consistently (old settings), never one mixing two settings. Settings
    that a newer version records and the old ``_RUN.json`` lacks do not count as a difference
    (an upgrade does not orphan a run); ``_RUN.json`` is then rewritten with them.
    """
    uri = storage.join(run_uri, RUN_FILE)
    data = json.dumps(info, indent=1, sort_keys=True).encode()
    if storage.exists(uri, options):
        old = json.loads(storage.read_bytes(uri, options).decode())
        if old.get("fingerprint") == info["fingerprint"]:
            return
        was, now = old.get("settings", {}), info["settings"]
        diff = sorted(k for k in set(was) | set(now) if k in was and was.get(k) != now.get(k))
        if diff or not was:
            if not overwrite:
                raise ValueError(f"run {run_uri!r} was made with other settings ({', '.join(diff) or 'fingerprint'} "
                                 f"differ; see {uri}); use a new name=... for a new run, or overwrite=true to "
                                 f"redo every character with the new settings (it deletes the run's outputs "
                                 f"made with the old ones)")
            clear_run(run_uri, options)
    storage.atomic_write_bytes(uri, data, options)


def resolve_bank(cfg: "GenerateConfig", options: StorageOptions) -> tuple[list[str], Any]:
    """(expression names, [K, 17] AU matrix with intensity applied)."""
    from dcnn_flame.generation import emotions

    bank = (emotions.load_bank(cfg.bank_path, replace=cfg.bank_replace, storage_options=options)
            if cfg.bank_path else emotions.default_bank())
    names = emotions.names_in(bank, cfg.expressions)
    if not 0.0 <= float(cfg.intensity) <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {cfg.intensity}")
    return names, bank.matrix(names) * float(cfg.intensity)


def resolve_au_map(cfg: "GenerateConfig", ckpt_config: dict, flame_data: Any, names: list[str],
                   options: StorageOptions) -> tuple[Optional[str], Optional[str]]:
    """The AU map the actors will use, checked on the driver before any work: (its file, resolved:
    ``au_map_path`` or else the checkpoint's ``supervision.au_map_path``; None = the head model's
    own map) and a digest of its matrices (None when it could not be checked here: the head
    model is a file the driver cannot read). Raises what the actors would (no map, bad file)."""
    from dcnn_flame.generation.retarget import load_au_map

    path = cfg.au_map_path or (ckpt_config.get("supervision") or {}).get("au_map_path") or None
    path = storage.resolve(path) if path else None
    if not names:
        return path, None
    data = flame_data
    if data is None and not path:
        from dcnn_flame.flame.factory import load_flame_data
        from dcnn_flame.generation.predictor import checkpoint_flame_config

        try:
            data = load_flame_data(checkpoint_flame_config(ckpt_config), options)
        except (OSError, ValueError):
            return path, None  # the actors load it (their nodes may hold the file) and check there
    au_map = load_au_map(data, path, options)
    h = hashlib.sha256()
    for t in au_map.buffers():
        h.update(t.detach().cpu().numpy().tobytes())
    return path, h.hexdigest()[:16]


def decode_settings(cfg: "GenerateConfig", options: StorageOptions, detector: str):
    """Stage-1 settings (the ingest's WorkerSettings) and the detector/landmark messages."""
    from dcnn_flame.data import landmarks as L
    from dcnn_flame.data.shard_writer import WorkerSettings
    from dcnn_flame.generation.preprocess import DecodeSettings

    if cfg.landmarks not in ("auto", "fan", "metadata"):
        raise ValueError(f"landmarks must be 'auto', 'fan' or 'metadata', got {cfg.landmarks!r}")
    if cfg.align not in ("box", "landmarks5"):
        raise ValueError(f"align must be 'box' or 'landmarks5', got {cfg.align!r}")
    weights = L.find_fan_weights(cfg.torch_hub_dir)
    if cfg.landmarks == "fan" and not weights.has_fan:
        raise FileNotFoundError(f"landmarks=fan but {weights.describe()}")
    use_fan = cfg.landmarks != "metadata" and weights.has_fan
    det = L.resolve_detector(detector, weights, cfg.cascade_path)
    worker = WorkerSettings(
        source="characters", output_uri="", storage=options, num_views=1, short_identity_policy="repeat",
        margin=cfg.margin, align=cfg.align, image_format="png", jpeg_quality=95,
        min_image_size=cfg.min_image_size, max_image_pixels=cfg.max_image_pixels,
        max_image_bytes=cfg.max_image_bytes, landmarks="fan" if use_fan else "metadata",
        fan_path=weights.fan if use_fan else None, detector=det.name, detector_path=det.path,
        center_crop_fraction=cfg.center_crop_fraction, device="cpu")
    if int(cfg.read_threads) < 1:
        raise ValueError(f"read_threads must be >= 1, got {cfg.read_threads}")
    return (DecodeSettings(worker=worker, min_crop_std=cfg.min_crop_std, fs=None, storage=options,
                           read_threads=int(cfg.read_threads)), det.message)


def _demo_inputs(cfg: "GenerateConfig", options: StorageOptions) -> tuple[Optional[str], str, str, bool]:
    """(input_uri, checkpoint, detector, uses_demo_library) with the demo defaults filled in."""
    from dcnn_flame.generation import demo

    input_uri, checkpoint, detector, demo_lib = cfg.input_uri, cfg.checkpoint, cfg.detector, False
    if input_uri is None and cfg.manifest_uri is None:
        input_uri = storage.join(storage.resolve(cfg.demo_dir), "library")
        demo_lib = True
        t0 = time.time()
        demo.make_sample_library(input_uri, count=cfg.demo_characters, options=options)
        print(f"generate: demo library of {cfg.demo_characters} characters at {input_uri} "
              f"({time.time() - t0:.0f}s)", flush=True)
        if detector == "auto":
            detector = "center"  # the demo's renders are centred, frame-filling portraits
    if checkpoint is None:
        checkpoint = storage.join(storage.resolve(cfg.demo_dir), "checkpoint")
        if not os.path.exists(os.path.join(checkpoint, "model.pt")):
            print(f"generate: no demo checkpoint at {checkpoint}; training one on the synthetic world "
                  f"(a few minutes on 2 cores, once)", flush=True)
            demo.train_demo_checkpoint(checkpoint)
    return input_uri, checkpoint, detector, demo_lib


#: Expression names the job's own outputs use (the results' reconstruction row, the neutral OBJ).
RESERVED_EXPRESSIONS = ("reconstruction", "neutral_mesh")


def performance_name(uri: str, root: str) -> str:
    """``perf_<path below root without suffix>`` (``/`` -> ``_``, then :func:`storage.safe_key`):
    ``take3/frame_0001.png`` -> ``perf_frame_0001``, ``take3/cam0/frame_0001.png`` -> ``perf_cam0_frame_0001``."""
    root = storage.resolve(root).rstrip("/") + "/"
    rel = uri[len(root):] if uri.startswith(root) else uri.rsplit("/", 1)[-1]
    return f"perf_{storage.safe_key(os.path.splitext(rel)[0].replace('/', '_'))}"


def check_expression_names(bank: list[str], performance: list[str]) -> None:
    """Refuse expression names that would overwrite each other's outputs (one morph target, one
    OBJ file and one results row per name) or the job's own, with what to rename."""
    seen: dict[str, str] = {}
    for name, origin in [(n, "expression bank") for n in bank] + [(n, "performance frames") for n in performance]:
        if name in RESERVED_EXPRESSIONS:
            raise ValueError(f"expression name {name!r} ({origin}) is reserved for the job's own outputs "
                             f"({', '.join(RESERVED_EXPRESSIONS)}); rename it")
        if origin == "expression bank" and name.startswith("perf_"):
            raise ValueError(f"expression bank name {name!r}: the prefix perf_ is kept for performance frames; "
                             f"rename it")
        if storage.safe_key(name) in seen:
            raise ValueError(f"two expressions are both named {name!r} ({seen[storage.safe_key(name)]} and "
                             f"{origin}; performance frames are named by their path below performance_uri "
                             f"without the suffix); rename one of them")
        seen[storage.safe_key(name)] = origin


def _performance(cfg: "GenerateConfig", settings, options: StorageOptions, checkpoint: str, flame_data):
    """Reconstruct the performance images on the driver -> (names, expression [P][E], jaw [P][3],
    digest of the frames' aligned crops)."""
    import torch

    from dcnn_flame.generation.predictor import decode_crops, load_model, reconstruct
    from dcnn_flame.generation.preprocess import preprocess_character

    uris = storage.list_files(cfg.performance_uri, options, suffixes=(".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    if not uris:
        raise FileNotFoundError(f"performance_uri {cfg.performance_uri!r} holds no images")
    row = preprocess_character("performance", "performance", uris, [-1] * len(uris), settings)
    if not row["images"]:
        raise ValueError(f"no usable image in performance_uri {cfg.performance_uri!r}: {row['failures']}")
    for f in json.loads(row["failures"] or "[]"):
        print(f"generate: warning: performance frame {f.get('input_uri')} skipped ({f.get('stage')}: "
              f"{f.get('reason')}, {f.get('detail')})", flush=True)
    loaded = load_model(checkpoint, options, flame_data)
    x = decode_crops(row["images"], int(loaded.model.cfg.image_size))
    recs = reconstruct(loaded, x[:, None])
    names = [performance_name(u, cfg.performance_uri) for u in row["image_ok_uris"]]
    expr = torch.stack([r.expression[0] for r in recs]).tolist()
    jaw = torch.stack([r.pose[0, 6:9] for r in recs]).tolist()
    digest = hashlib.sha256(b"".join(row["images"])).hexdigest()[:16]
    return names, expr, jaw, digest


def write_room_problem(cfg: "GenerateConfig", cluster_cpus: float) -> Optional[str]:
    """With write_stage=tasks the actors hold their CPUs for the whole job, so the write tasks
    need CPUs besides them; a message saying what to change when the cluster has none, else None."""
    held = cfg.num_actors * float(cfg.num_cpus_per_actor)
    if cluster_cpus - held >= float(cfg.write_task_cpus):
        return None
    return (f"write_stage=tasks needs CPUs for the write tasks besides the actors': the cluster has "
            f"{cluster_cpus:g}, num_actors x num_cpus_per_actor = {cfg.num_actors} x {cfg.num_cpus_per_actor:g} "
            f"hold {held:g} and each write task takes write_task_cpus={cfg.write_task_cpus:g}; lower num_actors "
            f"or num_cpus_per_actor, or use write_stage=actor")


def actor_pool(size: int, calls: int):
    """The reconstruction actors' ActorPoolStrategy: ``size`` actors, each running ``calls``
    batches at once in threads (Ray Data wraps a callable class in one thread unless
    ``enable_true_multi_threading``; the actor itself keeps its device part to one batch at a
    time, :class:`~dcnn_flame.generation.predictor.Reconstructor`)."""
    import ray

    if calls == 1:
        return ray.data.ActorPoolStrategy(size=size)
    return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=calls,
                                      enable_true_multi_threading=True)


def _checkpoint_head(ckpt_config: dict, options=None):
    """The head model a checkpoint was trained with (its flame config), loaded on the driver."""
    from dcnn_flame.flame.factory import load_flame_data
    from dcnn_flame.generation.predictor import checkpoint_flame_config

    return load_flame_data(checkpoint_flame_config(ckpt_config), options)


def run(cfg: "GenerateConfig") -> GenerateSummary:
    """Run the job (module docstring). Raises only when the job itself cannot run."""
    import ray

    import dcnn_flame
    from dcnn_flame.generation.library import completed_keys, plan_library
    from dcnn_flame.generation.predictor import WRITE_STAGES, ActorSettings, Reconstructor
    from dcnn_flame.generation.preprocess import preprocess_batch
    from dcnn_flame.generation.write_stage import UNRECORDED
    from dcnn_flame.generation.writers import failures_uri, write_failures_if_changed
    from dcnn_flame.ray_utils import init_ray, resolve_address
    from dcnn_flame.training.checkpoint import load_checkpoint_for_inference, resolve_checkpoint

    t_start = time.time()
    options = storage_options(cfg)
    counts = (cfg.num_actors, cfg.batch_size, cfg.decode_batch_size, cfg.write_threads, cfg.read_threads,
              cfg.write_batch_size, cfg.max_images_per_character)
    if min(counts) < 1:
        raise ValueError(f"num_actors, batch_size, decode_batch_size, write_threads, read_threads, "
                         f"write_batch_size and max_images_per_character must be >= 1, got "
                         f"{', '.join(str(c) for c in counts)}")
    if int(cfg.actor_calls) < 1:
        raise ValueError(f"actor_calls must be >= 1 (batches one reconstruction actor works on at once), "
                         f"got {cfg.actor_calls}")
    if cfg.write_stage not in WRITE_STAGES:
        raise ValueError(f"write_stage must be one of {', '.join(WRITE_STAGES)}, got {cfg.write_stage!r}")
    if not float(cfg.write_task_cpus) > 0:
        raise ValueError(f"write_task_cpus must be > 0, got {cfg.write_task_cpus}")
    from dcnn_flame.generation.cuda_wait import CUDA_WAIT_MODES

    if cfg.cuda_wait not in CUDA_WAIT_MODES:
        raise ValueError(f"cuda_wait must be one of {', '.join(CUDA_WAIT_MODES)}, got {cfg.cuda_wait!r}")
    output_uri = storage.resolve(cfg.output_uri or storage.join(cfg.storage.root(), "generated"))
    input_uri, checkpoint, detector, demo_lib = _demo_inputs(cfg, options)
    run_name = cfg.name
    run_uri = storage.join(output_uri, storage.safe_key(run_name))
    ckpt_uri = resolve_checkpoint(checkpoint, options)
    _, ckpt_config, step = load_checkpoint_for_inference(ckpt_uri, options)
    names, bank_au = resolve_bank(cfg, options)

    flame_data = None
    if cfg.flame.model_path:
        from dcnn_flame.flame.factory import load_flame_data

        flame_data = load_flame_data(cfg.flame, options)
    else:
        from dcnn_flame.config import FlameConfig
        from dcnn_flame.data.synthetic import procedural_head

        ck_flame = ckpt_config.get("flame") or {}
        if not ck_flame.get("model_path"):
            flame_data = procedural_head(int(ck_flame.get("procedural_seed", FlameConfig.procedural_seed)))

    au_map_path, au_map_digest = resolve_au_map(cfg, ckpt_config, flame_data, names, options)

    from dcnn_flame.io.arrow_fs import fsspec_filesystem

    dsettings, det_msg = decode_settings(cfg, options, detector)
    if input_uri and not storage.is_local(input_uri):
        import dataclasses

        dsettings = dataclasses.replace(dsettings, fs=fsspec_filesystem(input_uri, options))
    out_fs = None if storage.is_local(output_uri) else fsspec_filesystem(output_uri, options)
    print(f"generate: {det_msg}", flush=True)
    perf_names, perf_expr, perf_jaw, perf_digest = (), (), (), None
    if cfg.performance_uri:
        perf_names, perf_expr, perf_jaw, perf_digest = _performance(cfg, dsettings, options, ckpt_uri, flame_data)
    check_expression_names(list(names), list(perf_names))

    # Everything that changes what is written for a character (a rerun with other values is
    # refused, see guard_run); not the layout of the work (actors, batches, threads, device).
    settings_info = {"checkpoint": ckpt_uri, "checkpoint_step": step, "expressions": names,
                     "bank_au": [[round(float(x), 6) for x in row] for row in bank_au],
                     "intensity": cfg.intensity, "performance": list(perf_names),
                     "performance_frames": perf_digest, "bake_detail": cfg.bake_detail,
                     "write_obj": cfg.write_obj, "preview": cfg.preview, "preview_size": cfg.preview_size,
                     "preview_max": cfg.preview_max, "au_map_path": au_map_path, "au_map": au_map_digest,
                     "teachers_path": cfg.teachers_path, "model_path": cfg.flame.model_path,
                     "uv_path": cfg.flame.uv_path, "bf16": cfg.bf16,
                     "decode": {"detector": dsettings.worker.detector, "landmarks": dsettings.worker.landmarks,
                                "align": cfg.align, "margin": cfg.margin, "min_crop_std": cfg.min_crop_std,
                                "center_crop_fraction": cfg.center_crop_fraction,
                                "min_image_size": cfg.min_image_size,
                                "max_images_per_character": cfg.max_images_per_character}}
    guard_run(run_uri, {"run_name": run_name, "fingerprint": _fingerprint(settings_info), "settings": settings_info,
                        "model_version": dcnn_flame.__version__}, cfg.overwrite, options)

    plan = plan_library(input_uri, cfg.manifest_uri, options, cfg.max_images_per_character, run_name)
    plan_fail_uri = failures_uri(run_uri, PLAN_FAILURES_KEY)
    if plan.failures:
        write_failures_if_changed(plan_fail_uri, run_name, None, None, plan.failures, options)
    elif storage.exists(plan_fail_uri, options):
        fs, path = storage.get_fs(plan_fail_uri, options)
        fs.rm(path)
    done = set() if cfg.overwrite else completed_keys(run_uri, options)
    todo = [t for t in plan.tasks if t.key not in done]
    summary = GenerateSummary(run_uri=run_uri, run_name=run_name, checkpoint=ckpt_uri, checkpoint_step=step,
                              characters=len(plan.tasks), skipped=len(plan.tasks) - len(todo),
                              plan_failures=len(plan.failures), expressions=len(names) + len(perf_names))
    if plan.ignored_images:
        print(f"generate: {plan.ignored_images} images beyond max_images_per_character="
              f"{cfg.max_images_per_character} ignored", flush=True)

    if todo:
        init_ray(cfg.ray)
        if cfg.write_stage == "tasks":
            short = write_room_problem(cfg, float(ray.cluster_resources().get("CPU", 0.0)))
            if short and resolve_address(cfg.ray.address) == "local":
                raise ValueError(short)  # a local Ray cannot grow: the job would stall
            if short:
                print(f"generate: warning: {short} (fine if the cluster adds nodes)", flush=True)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s)
        ctx.enable_progress_bars = cfg.progress
        ctx.execution_no_progress_timeout_s = float(cfg.stall_timeout_s)
        actor = ActorSettings(
            checkpoint_uri=ckpt_uri, run_uri=run_uri, run_name=run_name, storage=options, bank_names=tuple(names),
            bank_au=tuple(tuple(float(x) for x in r) for r in bank_au), intensity=float(cfg.intensity),
            performance_names=tuple(perf_names), performance_expression=tuple(tuple(r) for r in perf_expr),
            performance_jaw=tuple(tuple(r) for r in perf_jaw), teachers_path=cfg.teachers_path,
            au_map_path=au_map_path, device=cfg.device, bf16=cfg.bf16, cuda_wait=cfg.cuda_wait,
            write_obj=cfg.write_obj,
            preview=cfg.preview, preview_size=cfg.preview_size, preview_max=cfg.preview_max,
            bake_detail=cfg.bake_detail, model_version=dcnn_flame.__version__, write_threads=int(cfg.write_threads),
            write_stage=cfg.write_stage, fault_injection=cfg.fault_injection, fs=out_fs)
        topology = None
        if cfg.write_stage == "tasks":
            from dcnn_flame.generation.write_stage import MeshTopology

            topology = MeshTopology.of(flame_data if flame_data is not None else _checkpoint_head(ckpt_config, options))
        items = [{"character_id": t.character_id, "character_key": t.key, "image_uris": t.image_uris,
                  "sizes": t.sizes} for t in todo]
        blocks = max(1, min(len(items), -(-len(items) // cfg.decode_batch_size)))
        t_stage = time.time()
        try:
            ds = ray.data.from_items(items, override_num_blocks=blocks)
            ds = ds.map_batches(preprocess_batch, fn_kwargs={"settings": dsettings}, batch_format="pyarrow",
                                batch_size=cfg.decode_batch_size, num_cpus=1)
            ds = ds.map_batches(Reconstructor, fn_constructor_kwargs={"settings": actor, "flame_data": flame_data},
                                batch_format="pyarrow", batch_size=cfg.batch_size,
                                compute=actor_pool(cfg.num_actors, int(cfg.actor_calls)),
                                num_gpus=cfg.num_gpus or None, num_cpus=cfg.num_cpus_per_actor)
            if cfg.write_stage == "tasks":
                from dcnn_flame.generation.write_stage import write_payloads

                # Split each actor batch into blocks of write_batch_size characters (streaming),
                # so that several write tasks share one batch.
                ds = ds.repartition(target_num_rows_per_block=cfg.write_batch_size)
                ds = ds.map_batches(write_payloads, fn_kwargs={"settings": actor, "topology": topology, "step": step},
                                    batch_format="pyarrow", batch_size=cfg.write_batch_size,
                                    num_cpus=float(cfg.write_task_cpus))
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for r in batch.to_pylist():
                    summary.images += int(r["num_images"] or 0)
                    summary.image_failures += int(r["num_failures"] or 0) - (1 if r["status"] == "failed" else 0)
                    if r["status"] == "ok":
                        summary.completed += 1
                    else:
                        summary.failed += 1
                        summary.failed_ids.append(str(r["character_id"]))
                        if str(r["reason"] or "").startswith(UNRECORDED):
                            summary.unrecorded_ids.append(str(r["character_id"]))
        finally:
            ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s = saved
        summary.stage_s = time.time() - t_stage
        if cfg.ray_stats:
            print(f"generate: Ray Data statistics of the run\n{ds.stats()}", flush=True)
        # Images that failed to decode are not in num_images: count the planned ones.
        summary.images = sum(len(t.image_uris) for t in todo)
    summary.elapsed_s = time.time() - t_start
    any_fail = summary.failed or summary.plan_failures or summary.image_failures
    summary.exit_code = 2 if (cfg.fail_on_errors and any_fail) else 0
    for line in summary.lines():
        print(line, flush=True)
    print(f"generate: outputs under {run_uri}/ (characters/<key>/character.glb, preview.png; results/*.parquet; "
          f"failures/*.parquet; docs/generation.md)", flush=True)
    print(f"generate: example query:\n  python jobs/query.py uri={output_uri} named=au_above au=au12 threshold=0.5 "
          f"run={run_name}", flush=True)
    return summary
