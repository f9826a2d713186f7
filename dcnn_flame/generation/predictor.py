"""Stage 2 of the generation pipeline: the reconstruction actor (GPU or CPU).

:class:`Reconstructor` is the callable class given to ``Dataset.map_batches`` with an
``ActorPoolStrategy``: ``__init__`` loads the checkpoint (and the AU detector) once per actor,
``__call__`` reconstructs a batch of characters, retargets the expression bank onto each one
and writes its outputs (:mod:`dcnn_flame.generation.writers`) under deterministic keys, so a
retried batch overwrites rather than duplicates. It returns one small status row per character
(never meshes), so the driver's memory stays flat.

Characters of a batch with the same number of usable images run as one forward pass
``[B, V, 3, H, W]``: the model's identity branch gives one shape per character from all its
views (the paper's multi-view identity); expression, pose and albedo are per view and averaged.

After the forward pass each character is retargeted and written on its own; with
``write_threads > 1`` the characters of a batch do this in a thread pool of the actor. On a GPU
actor most of that time is CPU work that releases the GIL (zlib, Parquet, file and network
I/O, torch kernels), so a few threads keep one actor's GPU busy instead of idle while it
writes. The batch's status rows are returned only when all of its characters are written.

With ``actor_calls > 1`` (Ray Data runs that many calls of one actor at once, in threads:
``ActorPoolStrategy(max_concurrent_calls_per_actor=..., enable_true_multi_threading=True)``)
one batch's writes overlap the next batch's model pass: the device part of a call (crops onto
the device, forward, retargeting, preview tiles, outputs to the host) holds the actor's
``device_lock``, so only one batch at a time is on the device, and the writing runs outside it.

With ``write_stage="tasks"`` the actor writes nothing but failure tables: it returns one
:mod:`.handoff` payload row per character (meshes, preview tiles, 8-bit texture, parameters)
and Ray Data's CPU tasks (:func:`.write_stage.write_payloads`) write the files, so that a few
GPU actors keep the device busy while every core encodes and uploads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from dcnn_flame.generation.schema import STATUS_SCHEMA  # noqa: F401 - re-exported (the actor's rows)
from dcnn_flame.generation.transfer import to_host
from dcnn_flame.io.storage import StorageOptions


#: Where characters are written: by the reconstruction actor, or by CPU tasks after it.
WRITE_STAGES = ("actor", "tasks")


@dataclass(frozen=True)
class ActorSettings:
    """What the reconstruction actor needs (plain values resolved on the driver).

    Attributes:
        checkpoint_uri: a checkpoint directory (already resolved from a run directory).
        run_uri: ``<out>/<name>``.
        run_name: the run name (stored in every row).
        storage: object-store options for every URI.
        bank_names: expressions to generate, in order.
        bank_au: [K][17] AU profiles (intensity applied).
        intensity: the intensity applied (stored per row).
        performance_names: extra morph targets from a performance (``pipeline.performance_name``).
        performance_expression: [P][E] expression coefficients of the performance frames.
        performance_jaw: [P][3] jaw axis-angle of the performance frames.
        teachers_path: AU detector file or None (then the checkpoint's, if any).
        au_map_path: AU -> expression map .npz (path or URI, resolved by the driver) or None
            (the head model's own).
        device: "auto", "cpu" or "cuda".
        bf16: bf16 autocast of the network forward on CUDA.
        cuda_wait: how the actor's thread waits for its GPU (:mod:`.cuda_wait`; set before the
            actor's first CUDA call, ignored on CPU).
        write_obj, preview, preview_size, preview_max, bake_detail: output switches.
        model_version: package version stored in rows.
        write_threads: characters of a batch written in parallel (threads of the actor, or of
            each write task with ``write_stage="tasks"``).
        write_stage: "actor" (the actor writes its characters) or "tasks" (it returns
            :mod:`.handoff` payload rows and Ray Data's CPU tasks write them, :mod:`.write_stage`).
        fault_injection: test-only directory (see GenerateConfig.fault_injection).
        fs: fsspec filesystem of the output (and checkpoint) store built on the driver, carrying
            its credentials (:mod:`dcnn_flame.io.arrow_fs`); None = from ``storage``.
    """

    checkpoint_uri: str
    run_uri: str
    run_name: str
    storage: StorageOptions
    bank_names: tuple[str, ...]
    bank_au: tuple[tuple[float, ...], ...]
    intensity: float = 1.0
    performance_names: tuple[str, ...] = ()
    performance_expression: tuple[tuple[float, ...], ...] = ()
    performance_jaw: tuple[tuple[float, ...], ...] = ()
    teachers_path: Optional[str] = None
    au_map_path: Optional[str] = None
    device: str = "auto"
    bf16: bool = False
    cuda_wait: str = "blocking"
    write_obj: bool = False
    preview: bool = True
    preview_size: int = 160
    preview_max: int = 16
    bake_detail: bool = True
    model_version: str = ""
    write_threads: int = 1
    write_stage: str = "actor"
    fault_injection: Optional[str] = None
    fs: Any = None


@dataclass
class LoadedModel:
    """A checkpoint ready for inference.

    Attributes:
        model: DCNNFlame in eval mode (on CPU).
        au_net: AU detector or None.
        au_size: resolution the AU detector sees.
        step: the checkpoint's training step.
        flame_data: the head model the checkpoint was trained with.
        config: the training run's config (plain dict).
    """

    model: torch.nn.Module
    au_net: Optional[torch.nn.Module]
    au_size: int
    step: int
    flame_data: Any
    config: dict = field(default_factory=dict)


def checkpoint_flame_config(config: dict):
    """The FlameConfig of a checkpoint's training config (keys this version does not know are dropped)."""
    from dcnn_flame.config import FlameConfig

    known = set(FlameConfig.__dataclass_fields__)
    return FlameConfig(**{k: v for k, v in (config.get("flame") or {}).items() if k in known})


def load_model(checkpoint_uri: str, options: Optional[StorageOptions] = None, flame_data: Any = None,
               teachers_path: Optional[str] = None, fs: Any = None) -> LoadedModel:
    """Rebuild DCNN-FLAME from a checkpoint (training.checkpoint's loader) and its AU detector.

    Args:
        checkpoint_uri: checkpoint directory or run directory (its latest checkpoint).
        flame_data: the head model (None = built from the checkpoint's flame config).
        teachers_path: AU detector file; None = the checkpoint's ``supervision.teachers_path``.
    """
    from dcnn_flame.flame.factory import load_flame_data
    from dcnn_flame.model.build import build_model
    from dcnn_flame.model.config import ModelConfig
    from dcnn_flame.training.checkpoint import load_checkpoint_for_inference

    state, config, step = load_checkpoint_for_inference(checkpoint_uri, options, fs)
    known = {f for f in ModelConfig.__dataclass_fields__}
    model_cfg = ModelConfig(**{k: v for k, v in (config.get("model") or {}).items() if k in known})
    flame_cfg = checkpoint_flame_config(config)
    data = flame_data if flame_data is not None else load_flame_data(flame_cfg, options)
    model = build_model(flame_cfg, model_cfg, data)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith(("flame.", "renderer."))]:
        raise ValueError(f"checkpoint {checkpoint_uri!r} does not match its own model config "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); was it written by "
                         f"another version of dcnn_flame?")
    sup = config.get("supervision") or {}
    teachers = teachers_path or sup.get("teachers_path")
    au_net, au_size = None, int(sup.get("teacher_image_size") or 112)
    if teachers:
        from dcnn_flame.supervision.bundle import load_teachers

        au_net, _, _ = load_teachers(teachers, options)
        au_net.eval()
        au_size = int(getattr(au_net.cfg, "input_size", au_size) or au_size)
    return LoadedModel(model=model.eval(), au_net=au_net, au_size=au_size, step=int(step), flame_data=data,
                       config=config)


def decode_crops(crops: list[bytes], size: int, device: Any = None) -> torch.Tensor:
    """Raw crops of the decode stage -> [N, 3, size, size] float in [0, 1] on ``device``.

    The crops go to the device as 8-bit pixels (a quarter of the float32 bytes; on CUDA from
    pinned memory, without a synchronisation) and are converted there, and resized when
    ``size`` differs from CROP_SIZE: the actor's CPU, which also writes the outputs, does not
    spend time on the conversion. On the CPU the result is what it always was.

    Args:
        crops: N raw RGB crops, each :data:`~dcnn_flame.generation.preprocess.CROP_BYTES` bytes
            ([CROP_SIZE, CROP_SIZE, 3] uint8, row-major), as ``preprocess_character`` makes them.
        size: the model's input side.
        device: where the result lives (None: the CPU).
    """
    from dcnn_flame.generation.preprocess import CROP_BYTES, CROP_SIZE

    bad = [len(c) for c in crops if len(c) != CROP_BYTES]
    if bad:
        raise ValueError(f"crops must be raw RGB {CROP_SIZE}x{CROP_SIZE} ({CROP_BYTES} bytes each, from "
                         f"generation.preprocess), got lengths {bad[:3]}")
    device = torch.device(device if device is not None else "cpu")
    pinned = device.type == "cuda"
    # One writable buffer for all crops (torch refuses to own read-only buffers without a warning).
    buf = torch.empty(len(crops) * CROP_BYTES, dtype=torch.uint8, pin_memory=pinned)
    flat = buf.numpy()
    for k, c in enumerate(crops):
        flat[k * CROP_BYTES:(k + 1) * CROP_BYTES] = np.frombuffer(c, dtype=np.uint8)
    x = buf.to(device, non_blocking=pinned).view(len(crops), CROP_SIZE, CROP_SIZE, 3)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


@dataclass
class Reconstruction:
    """One character's reconstruction (CPU tensors, but for ``albedo``).

    Attributes:
        shape: [S]; expression: [V, E]; pose: [V, 15];
        albedo: [3, Ht, Wt] (view mean) on the model's device (the preview renderer's input:
        on a GPU it stays there; what is written is ``texture``); the actor drops it (None)
        once its batch's preview tiles are rendered;
        detail_code: [D] (view mean) or None; au: [V, 17] (NaN without a detector);
        texture: [Ht, Wt, 3] uint8, the albedo as written (albedo.png, the GLB's texture), made on
        the device with the rest of the batch; None = made from ``albedo`` when written.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    albedo: Optional[torch.Tensor]
    detail_code: Optional[torch.Tensor]
    au: torch.Tensor
    texture: Optional[np.ndarray] = None


def bf16_autocast(bf16: bool, device: torch.device):
    """bf16 autocast when ``bf16`` is set and ``device`` is CUDA, else a context that does nothing."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reconstruct(loaded: LoadedModel, images: torch.Tensor, bf16: bool = False) -> list[Reconstruction]:
    """images [B, V, 3, H, W] in [0, 1] (V views of each of B characters) -> B reconstructions."""
    B, V = images.shape[:2]
    flat = images.reshape(B * V, *images.shape[2:])
    with torch.inference_mode(), bf16_autocast(bf16, images.device):
        out = loaded.model(images, render=False)
        if loaded.au_net is not None:
            # The detector's own input adapter resizes to its size, antialiased as in its
            # training (a plain bilinear shrink here aliased: AU probabilities off by up to ~0.03).
            au = loaded.au_net(flat).probs.float()
        else:
            au = flat.new_full((B * V, 17), float("nan"))
    from dcnn_flame.generation.writers import albedo_u8

    albedo = out.albedo.float().reshape(B, V, *out.albedo.shape[1:]).mean(1)  # [B, 3, Ht, Wt], stays
    # One transfer per output for the whole batch (per-character .cpu() calls cost a device
    # synchronisation each), then per-character views.
    tensors = [albedo_u8(albedo), out.shape.float(), out.expression.float(), out.pose.float(), au.float()]
    if out.detail_code is not None:
        tensors.append(out.detail_code.float().reshape(B, V, -1).mean(1))  # [B, D]
    texture, shape, expression, pose, au, *rest = to_host(*tensors)
    texture = texture.numpy()
    detail = rest[0] if rest else None
    res = []
    for b in range(B):
        sl = slice(b * V, (b + 1) * V)
        res.append(Reconstruction(
            shape=shape[b], expression=expression[sl], pose=pose[sl], albedo=albedo[b],
            detail_code=None if detail is None else detail[b], au=au[sl], texture=texture[b]))
    return res


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Reconstructor:
    """Ray Data callable class: a batch of preprocessed characters -> outputs written, status rows.

    Args:
        settings: :class:`ActorSettings`.
        flame_data: the head model (shipped by the driver through the object store so that each
            actor does not rebuild it); None = built from the checkpoint's flame config.
    """

    def __init__(self, settings: ActorSettings, flame_data: Any = None):
        from dcnn_flame.generation.retarget import Retargeter, load_au_map
        from dcnn_flame.generation.writers import CharacterWriter

        self.settings = s = settings
        self.device = _device(s.device)
        self.cuda_wait_problem = None
        if self.device.type == "cuda":
            from dcnn_flame.generation.cuda_wait import set_cuda_wait

            index = self.device.index or 0  # "cuda" is device 0 in a fresh process (no CUDA call here yet)
            self.cuda_wait_problem = set_cuda_wait(s.cuda_wait, index)
            if self.cuda_wait_problem:
                warnings.warn(self.cuda_wait_problem, RuntimeWarning, stacklevel=2)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # The head model shipped by the driver arrives through Ray's object store as read-only
            # numpy arrays; the model only reads them (torch warns once per process otherwise).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.loaded = load_model(s.checkpoint_uri, s.storage, flame_data, s.teachers_path,
                                     s.fs if s.checkpoint_uri.split('://')[0] == s.run_uri.split('://')[0] else None)
        self.loaded.model.to(self.device)
        if self.loaded.au_net is not None:
            self.loaded.au_net.to(self.device)
        m = self.loaded.model
        data = self.loaded.flame_data
        self.image_size = int(m.cfg.image_size)
        au_map = load_au_map(data, s.au_map_path, s.storage) if s.bank_names else None
        self.retargeter = Retargeter(data, m.n_shape, m.n_expr, au_map).to(self.device)
        self.writer = CharacterWriter(s, data, self.loaded.step, self.device)
        self.bank_au = torch.tensor(s.bank_au, dtype=torch.float32).reshape(len(s.bank_names), 17)
        self.perf_expr = (torch.tensor(s.performance_expression, dtype=torch.float32)
                          if s.performance_names else None)
        self.perf_jaw = torch.tensor(s.performance_jaw, dtype=torch.float32) if s.performance_names else None
        if int(s.write_threads) < 1:
            raise ValueError(f"write_threads must be >= 1, got {s.write_threads}")
        if s.write_stage not in WRITE_STAGES:
            raise ValueError(f"write_stage must be one of {', '.join(WRITE_STAGES)}, got {s.write_stage!r}")
        self.pool = None
        if int(s.write_threads) > 1 and s.write_stage == "actor":
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(int(s.write_threads), thread_name_prefix="dcnn-flame-write")
        self._expr_cache: Optional[tuple] = None  # the expressions' parameters (see _expressions)
        # One batch at a time on the device when Ray Data runs several calls of this actor at
        # once (actor_calls > 1): the other calls write meanwhile (module docstring).
        self.device_lock = threading.Lock()
        self.load_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ helpers
    def _expressions(self) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The actor's expressions (bank, then performance): names, AU rows [K, 17] (NaN for
        performance frames), expression [K, n_expr] and jaw [K, 3] on the actor's device.
        The same for every character: computed once."""
        if self._expr_cache is None:
            names, au_rows, exprs, jaws = [], [], [], []
            with torch.inference_mode():
                if self.settings.bank_names:
                    e, j = self.retargeter.au_to_params(self.bank_au.to(self.device))
                    names += list(self.settings.bank_names)
                    au_rows.append(self.bank_au)
                    exprs.append(e)
                    jaws.append(j)
                if self.perf_expr is not None:
                    if self.perf_expr.shape[1] != self.retargeter.n_expr:
                        raise ValueError(f"performance expression has {self.perf_expr.shape[1]} components, "
                                         f"the model {self.retargeter.n_expr}")
                    names += list(self.settings.performance_names)
                    au_rows.append(torch.full((len(self.settings.performance_names), 17), float("nan")))
                    exprs.append(self.perf_expr.to(self.device))
                    jaws.append(self.perf_jaw.to(self.device))
            expression = (torch.cat(exprs).float() if exprs
                          else torch.zeros(0, self.retargeter.n_expr, device=self.device))
            jaw = torch.cat(jaws).float() if jaws else torch.zeros(0, 3, device=self.device)
            au = torch.cat(au_rows) if au_rows else torch.zeros(0, 17)
            self._expr_cache = (names, au, expression, jaw)
        return self._expr_cache

    def _retarget_many(self, recs: list[Reconstruction]) -> tuple[list[str], torch.Tensor, Any]:
        """All expressions of B characters in one pass: names, AU rows [K, 17], and a batched
        RetargetOutput on the actor's device (vertices [B, K, V, 3], neutral [B, V, 3])."""
        names, au, expression, jaw = self._expressions()
        shapes = torch.stack([r.shape for r in recs]).to(self.device)
        K = expression.shape[0]
        with torch.inference_mode():
            disp = None
            dec = getattr(self.loaded.model, "detail_decoder", None)
            if self.settings.bake_detail and dec is not None and all(r.detail_code is not None for r in recs):
                codes = torch.stack([r.detail_code for r in recs]).to(self.device)  # [B, D]
                e_all = torch.cat([expression.new_zeros(1, expression.shape[1]), expression])
                j_all = torch.cat([jaw.new_zeros(1, 3), jaw])
                B = len(recs)
                # B x (K + 1) maps under the forward pass's autocast (this ran in float32 while
                # the forward ran in bf16).
                with bf16_autocast(self.settings.bf16, self.device):
                    disp = dec(codes.repeat_interleave(K + 1, dim=0), e_all.repeat(B, 1), j_all.repeat(B, 1))
                disp = disp.float()
                disp = disp.reshape(B, K + 1, *disp.shape[1:])
            out = self.retargeter.meshes_many(shapes, expression, jaw, disp)
        return names, au, out

    def _device_part(self, crops: list[bytes], count: int, views: int) -> "_DevicePart":
        """The device work of a group of ``count`` characters with ``views`` images each (crops
        in character order): crops onto the device, forward, retargeting, outputs to the host,
        preview tiles. Raises :class:`_GroupFailed` naming the stage that failed (the preview
        tiles failing is not one: they are then rendered per character by the writer)."""
        t0 = time.perf_counter()
        try:
            size = self.image_size
            imgs = decode_crops(crops, size, self.device).view(count, views, 3, size, size)
            recs = reconstruct(self.loaded, imgs, self.settings.bf16)
        except Exception as exc:  # noqa: BLE001 - reported as the group's failure rows
            raise _GroupFailed("reconstruct", exc) from exc
        t1 = time.perf_counter()
        # Retarget and preview-render the whole group on the device in one pass each; the
        # per-character CPU work (GLB, PNG, Parquet, files) then runs per character.
        try:
            names, au, out = self._retarget_many(recs)
            outs = _split_outputs(_to_cpu(out), len(recs))
        except Exception as exc:  # noqa: BLE001
            raise _GroupFailed("retarget", exc) from exc
        t2 = time.perf_counter()
        try:
            tiles = self.writer.preview_tiles(_split_outputs(out, len(recs)), [r.albedo for r in recs], names)
        except Exception:  # noqa: BLE001 - rendered per character instead, where errors fail that character
            tiles = None
        t3 = time.perf_counter()
        if tiles is not None or not self.writer.previews:
            # The albedo stays on the device only for previews still to render (per character,
            # after a failure here): free it before another call's batch comes onto the device.
            recs = [dataclasses.replace(r, albedo=None) if r.texture is not None else r for r in recs]
        return _DevicePart(recs, names, au, outs, tiles, reconstruct_ms=(t1 - t0) * 1000.0 / count,
                           retarget_ms=(t2 - t1) * 1000.0 / count, tiles_ms=(t3 - t2) * 1000.0 / count)

    # ------------------------------------------------------------------ batch
    def __call__(self, batch: pa.Table) -> pa.Table:
        from dcnn_flame.generation.handoff import pack_character, payload_table
        from dcnn_flame.generation.write_stage import fail_character, finish_character, maybe_block

        handoff = self.settings.write_stage == "tasks"
        rows = batch.to_pylist()
        status: list[dict] = [None] * len(rows)  # type: ignore[list-item]
        groups: dict[int, list[int]] = {}

        def fail(i: int, stage: str, reason: str, detail: str) -> dict:
            return fail_character(self.writer, rows[i], len(rows[i]["images"] or []), stage, reason, detail)

        for i, r in enumerate(rows):
            n = len(r["images"] or [])
            if n == 0:
                status[i] = fail(i, "reconstruct", "no_usable_image", "none of the character's images could be "
                                                                      "used (see the other failure rows of this character)")
            else:
                groups.setdefault(n, []).append(i)
        for n, idx in groups.items():
            try:
                with self.device_lock:
                    part = self._device_part([c for i in idx for c in rows[i]["images"]], len(idx), n)
            except _GroupFailed as exc:  # a broken group must not kill the batch, nor the job
                for i in idx:
                    status[i] = fail(i, exc.stage, "error", str(exc))
                continue
            recs, names, au, outs, tiles = part.recs, part.names, part.au, part.outs, part.tiles
            per_char_ms, retarget_ms, tiles_ms = part.reconstruct_ms, part.retarget_ms, part.tiles_ms
            if handoff:  # the write tasks get everything but the device: tiles rendered here
                for k, (i, rec) in enumerate(zip(idx, recs)):
                    try:
                        if tiles is not None:
                            t = tiles[k]
                        elif self.writer.previews:
                            t = self.writer.preview_tiles([outs[k]], [rec.albedo], names)[0]
                        else:
                            t = None
                        status[i] = pack_character(rows[i], rec, names, au, outs[k], t, per_char_ms, retarget_ms,
                                                   tiles_ms)
                    except Exception as exc:  # noqa: BLE001 - this character only
                        status[i] = fail(i, "write", "error", f"{type(exc).__name__}: {exc}")
                continue
            block = lambda: maybe_block(self.settings.fault_injection)  # noqa: E731
            work = [(i, rows[i], len(rows[i]["images"]), rec, names, au, outs[k],
                     None if tiles is None else tiles[k], per_char_ms, retarget_ms, tiles_ms, block)
                    for k, (i, rec) in enumerate(zip(idx, recs))]
            if self.pool is None:
                for i, *args in work:
                    status[i] = finish_character(self.writer, *args)
            else:
                futures = [(i, self.pool.submit(finish_character, self.writer, *args)) for i, *args in work]
                for i, fut in futures:
                    try:
                        status[i] = fut.result()
                    except Exception as exc:  # noqa: BLE001 - finish_character reports its own errors
                        status[i] = fail(i, "write", "error", f"{type(exc).__name__}: {exc}")
        return payload_table(status) if handoff else pa.Table.from_pylist(status, schema=STATUS_SCHEMA)


class _GroupFailed(Exception):
    """The device part of a group failed at ``stage``; the message is the cause's type and text."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.stage = stage


@dataclass
class _DevicePart:
    """What the device part of a group hands to the writing: reconstructions, the expressions
    (names, AU rows [K, 17]), per-character outputs on the host, preview tiles (None = render
    per character) and ms per character of each step (the tiles' are counted in write_ms)."""

    recs: list
    names: list
    au: torch.Tensor
    outs: list
    tiles: Any
    reconstruct_ms: float
    retarget_ms: float
    tiles_ms: float


def _to_cpu(out: Any) -> Any:
    """A batched RetargetOutput moved to the CPU (:func:`.transfer.to_host`), without its
    displacement maps: they are baked into the vertices already and no writer reads them."""
    from dcnn_flame.generation.retarget import RetargetOutput

    expression, pose, vertices, neutral = to_host(out.expression.float(), out.pose.float(), out.vertices.float(),
                                                  out.neutral.float())
    return RetargetOutput(expression=expression, pose=pose, vertices=vertices, neutral=neutral, displacement=None)


def _character_output(out: Any, b: int) -> Any:
    """Character ``b`` of a batched RetargetOutput (vertices [B, K, V, 3]) -> its own (vertices [K, V, 3])."""
    from dcnn_flame.generation.retarget import RetargetOutput

    return RetargetOutput(expression=out.expression, pose=out.pose, vertices=out.vertices[b],
                          neutral=out.neutral[b], displacement=None if out.displacement is None else out.displacement[b])


def _split_outputs(out: Any, count: int) -> list:
    return [_character_output(out, b) for b in range(count)]
