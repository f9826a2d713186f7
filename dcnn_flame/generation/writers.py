"""Stage 3 of the generation pipeline: a character's outputs under deterministic keys.

Layout and schemas: :mod:`dcnn_flame.generation.schema` (and docs/generation.md). Every file
is written atomically (local: temp file + rename; object stores: one PUT) under a key that
depends only on the run and the character key, so a retried or rerun character overwrites its
own files and never duplicates them. ``_SUCCESS`` is written last: a character without it is
incomplete and is redone by the next run.

Failure tables are only rewritten when their content changed (a content hash is kept in the
Parquet metadata), so rerunning a job whose inputs still fail rewrites nothing.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcnn_flame.constants import AU_COLUMNS
from dcnn_flame.generation.schema import FAILURES_SCHEMA, RESULTS_SCHEMA, RESULTS_SCHEMA_VERSION
from dcnn_flame.io import storage

SUCCESS = "_SUCCESS"
_HASH_KEY = b"dcnn_flame.content_hash"


def character_uri(run_uri: str, key: str, name: str = "") -> str:
    """``<run>/characters/<key>[/<name>]``."""
    return storage.join(run_uri, "characters", key, name)


def results_uri(run_uri: str, key: str) -> str:
    return storage.join(run_uri, "results", f"{key}.parquet")


def failures_uri(run_uri: str, key: str) -> str:
    return storage.join(run_uri, "failures", f"{key}.parquet")


def table_bytes(rows: list[dict], schema: pa.Schema, content_hash: Optional[str] = None) -> bytes:
    """Parquet bytes of ``rows`` with ``schema`` (and an optional content hash in the metadata)."""
    meta = dict(schema.metadata or {})
    if content_hash:
        meta[_HASH_KEY] = content_hash.encode()
    from dcnn_flame.io.arrow_table import parquet_bytes

    return parquet_bytes(pa.Table.from_pylist(rows, schema=schema.with_metadata(meta)))


def failure_rows(run_name: str, character_id: Optional[str], key: Optional[str], failures: Sequence[dict],
                 now: Optional[_dt.datetime] = None) -> list[dict]:
    """FAILURES_SCHEMA rows from ``{input_uri, stage, reason, detail}`` dicts."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return [{"schema_version": RESULTS_SCHEMA_VERSION, "run_name": run_name,
             "character_id": f.get("character_id", character_id), "character_key": f.get("character_key", key),
             "input_uri": f.get("input_uri"), "stage": f.get("stage"), "reason": f.get("reason"),
             "detail": f.get("detail"), "created_at": now} for f in failures]


def fs_path(uri: str, options=None, fs: Any = None) -> tuple[Any, str]:
    """(filesystem, path) of ``uri``; ``fs`` (built on the driver, carrying its credentials, see
    :mod:`dcnn_flame.io.arrow_fs`) is used for remote URIs when given."""
    uri = storage.resolve(uri)
    if fs is not None and not storage.is_local(uri):
        return fs, uri.split("://", 1)[1]
    return storage.get_fs(uri, options)


def put(uri: str, data: bytes, options=None, fs: Any = None) -> str:
    """Atomic write (local: temp + rename; object stores: one PUT); returns the resolved URI."""
    uri = storage.resolve(uri)
    if fs is not None and not storage.is_local(uri):
        fs.pipe_file(uri.split("://", 1)[1], data)
        return uri
    return storage.atomic_write_bytes(uri, data, options)


def remove_if_exists(uri: str, options=None, fs: Any = None) -> None:
    f, path = fs_path(uri, options, fs)
    if f.exists(path):
        f.rm(path)


def write_failures_if_changed(uri: str, run_name: str, character_id: Optional[str], key: Optional[str],
                              failures: Sequence[dict], options=None, fs: Any = None) -> bool:
    """Write a failures table unless the same failures are already stored there; True when written."""
    content = json.dumps([[character_id, key, f.get("character_id"), f.get("input_uri"), f.get("stage"),
                           f.get("reason"), f.get("detail")] for f in failures], sort_keys=True, default=str)
    digest = hashlib.sha256(f"{run_name}\n{content}".encode()).hexdigest()
    f_, path = fs_path(uri, options, fs)
    if f_.exists(path):
        try:
            with f_.open(path, "rb") as f:
                old = pq.read_metadata(f).metadata or {}
            if old.get(_HASH_KEY) == digest.encode():
                return False
        except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced
            pass
    put(uri, table_bytes(failure_rows(run_name, character_id, key, failures), FAILURES_SCHEMA, digest),
        options, fs)
    return True


def png_bytes(image: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG bytes (:func:`dcnn_flame.io.png.encode_png`, zlib level 1)."""
    from dcnn_flame.io.png import encode_png

    return encode_png(image, level=1)


def albedo_u8(albedo: torch.Tensor) -> torch.Tensor:
    """[..., 3, Ht, Wt] UV albedo in [0, 1] -> [..., Ht, Wt, 3] uint8 (on albedo's device)."""
    return (albedo.clamp(0, 1) * 255.0).round().to(torch.uint8).movedim(-3, -1)


def albedo_png(albedo: torch.Tensor) -> bytes:
    """[3, Ht, Wt] UV albedo in [0, 1] (row 0 = v = 1, as the renderer) -> PNG (image top = v = 1,
    the OBJ/glTF convention after their own v flips)."""
    return png_bytes(albedo_u8(albedo).cpu().numpy())


def results_bytes(character_id: str, key: str, rec: Any, names: Sequence[str], au: torch.Tensor, out: Any,
                  settings: Any, step: int, num_images: int, timings: tuple[float, float], write_ms: float,
                  glb_uri: str, preview_uri: Optional[str], obj_uris: Mapping[str, Optional[str]],
                  now: Optional[_dt.datetime] = None) -> bytes:
    """One character's results table (:data:`RESULTS_SCHEMA`) as Parquet bytes.

    Row 0 is the reconstruction itself (the detector's AUs and the parameters averaged over the
    views), then one row per expression of ``names`` (AU vector ``au[k]``, parameters
    ``out.expression[k]``/``out.pose[k]``). Missing AU values (NaN) are NULL, not NaN: SQL
    engines order NaN above every number. Built column by column
    (:func:`dcnn_flame.io.arrow_table.columns_table`).

    Args:
        rec: :class:`~dcnn_flame.generation.predictor.Reconstruction`; au: [K, 17];
        out: :class:`~dcnn_flame.generation.retarget.RetargetOutput` of K expressions;
        settings: :class:`~dcnn_flame.generation.predictor.ActorSettings` (run, checkpoint,
            intensity, performance names); timings: (reconstruct_ms incl. decode, retarget_ms).
    """
    from dcnn_flame.io.arrow_table import Same, columns_table, parquet_bytes

    s, n = settings, len(names) + 1
    rec_au = rec.au.float().nanmean(0) if rec.au.numel() else torch.full((17,), float("nan"))
    au_all = np.concatenate([rec_au.cpu().numpy()[None], au.float().cpu().numpy().reshape(len(names), 17)])  # [n, 17]
    perf = set(getattr(s, "performance_names", ()))
    cols: dict[str, Any] = {
        "schema_version": Same(RESULTS_SCHEMA_VERSION), "run_name": Same(s.run_name),
        "character_id": Same(character_id), "character_key": Same(key),
        "expression": ["reconstruction", *names],
        "intensity": np.array([1.0] + [s.intensity if x not in perf else 1.0 for x in names], np.float32),
        "source": ["reconstruction"] + [f"performance:{x[5:]}" if x in perf else "bank" for x in names],
        "model_version": Same(s.model_version), "checkpoint": Same(s.checkpoint_uri),
        "checkpoint_step": Same(int(step)), "num_images": Same(int(num_images)),
        **{c: np.ascontiguousarray(au_all[:, i]) for i, c in enumerate(AU_COLUMNS)},
        "shape": Same(rec.shape.float().cpu().numpy()),
        "expression_params": np.concatenate([rec.expression.float().mean(0, keepdim=True).cpu().numpy(),
                                             out.expression.float().cpu().numpy()]),
        "pose": np.concatenate([rec.pose.float().mean(0, keepdim=True).cpu().numpy(), out.pose.float().cpu().numpy()]),
        "detail_code": Same(rec.detail_code.float().cpu().numpy() if rec.detail_code is not None else np.zeros(0)),
        "glb_uri": Same(glb_uri), "obj_uri": [obj_uris.get("neutral_mesh"), *(obj_uris.get(x) for x in names)],
        "preview_uri": Same(preview_uri), "reconstruct_ms": Same(float(timings[0])),
        "retarget_ms": Same(float(timings[1])), "write_ms": Same(float(write_ms)),
        "created_at": Same(now or _dt.datetime.now(_dt.timezone.utc)),
    }
    return parquet_bytes(columns_table(cols, n, RESULTS_SCHEMA))


class PreviewRenderer:
    """Renders characters' expressions frontally for the preview contact sheets.

    Args:
        data: the head model (faces, UVs).
        size: tile side in pixels.
        device: where to render (the actor's device: on a GPU actor previews render on the GPU).
        max_tiles: tiles per renderer call in :meth:`render_many` (None: 256 on a GPU, where one
            call for many characters costs little more than one for a single character, and one
            character per call on a CPU, where large batches ran slower).
    """

    def __init__(self, data: Any, size: int, device: Any = "cpu", max_tiles: Optional[int] = None):
        from dcnn_flame.data.synthetic import sh_from_lights
        from dcnn_flame.render import Renderer, RendererConfig

        self.size = int(size)
        self.renderer = Renderer(torch.as_tensor(np.asarray(data.faces), dtype=torch.int64),
                                 torch.as_tensor(np.asarray(data.uv_coords), dtype=torch.float32),
                                 torch.as_tensor(np.asarray(data.uv_faces), dtype=torch.int64),
                                 RendererConfig(image_size=self.size)).to(device)
        sh = sh_from_lights(np.array([0.55, 0.55, 0.55]), np.array([0.6, 0.6, 0.6]), np.array([0.3, 0.4, 1.0]))
        self.sh = torch.from_numpy(sh.reshape(1, 27)).float().to(device)
        self.device = torch.device(device)
        self.max_tiles = max_tiles

    def render(self, vertices: torch.Tensor, albedo: torch.Tensor) -> np.ndarray:
        """vertices [K, V, 3] (same head pose), albedo [3, Ht, Wt] -> [K, size, size, 3] uint8."""
        return self.render_many(vertices[None], albedo[None])[0]

    def render_many(self, vertices: torch.Tensor, albedo: torch.Tensor) -> np.ndarray:
        """B characters' tiles: vertices [B, K, V, 3], albedo [B, 3, Ht, Wt] -> [B, K, size, size, 3] uint8.

        Each character is framed by its own first mesh (its neutral), as :meth:`render` does.
        """
        v = vertices.float().to(self.device)
        B, K = v.shape[:2]
        lo, hi = v[:, 0, :, :2].amin(1), v[:, 0, :, :2].amax(1)  # [B, 2]
        scale = 1.8 / (hi - lo).amax(1).clamp_min(1e-6)
        cam = torch.cat([scale[:, None], -0.5 * (lo + hi)], 1)  # [B, 3]
        cam = cam[:, None].expand(B, K, 3).reshape(B * K, 3)
        tex = albedo.float().to(self.device)
        tex = tex[:, None].expand(B, K, *tex.shape[1:]).reshape(B * K, *tex.shape[1:])
        flat = v.reshape(B * K, *v.shape[2:])
        step = max(1, int(self.max_tiles or (256 if self.device.type == "cuda" else K)))
        tiles = []
        with torch.inference_mode():
            for i in range(0, B * K, step):
                n = min(step, B * K - i)
                bg = torch.full((n, 3, self.size, self.size), 0.18, device=self.device)
                out = self.renderer(flat[i:i + n], cam[i:i + n], tex[i:i + n], self.sh.expand(n, 27), background=bg)
                tiles.append((out.image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1))
        from dcnn_flame.generation.transfer import to_host

        return to_host(torch.cat(tiles))[0].numpy().reshape(B, K, self.size, self.size, 3)


class CharacterWriter:
    """Writes one character's GLB/OBJ/PNG/Parquet outputs (see the module docstring).

    Args:
        settings: :class:`dcnn_flame.generation.predictor.ActorSettings`.
        data: the head model, or anything with its ``faces``, ``uv_coords`` and ``uv_faces``
            (:class:`~dcnn_flame.generation.write_stage.MeshTopology` in the write tasks).
        step: the checkpoint's training step (stored in rows).
        device: device of the preview renderer (built on first use: the write tasks get the
            tiles rendered by the actor and never build one).
    """

    def __init__(self, settings: Any, data: Any, step: int, device: Any = "cpu"):
        import threading

        from dcnn_flame.io.gltf import split_seams

        self.s = settings
        self.faces = np.asarray(data.faces, dtype=np.int64)
        self.uv_coords = None if data.uv_coords is None else np.asarray(data.uv_coords, dtype=np.float32)
        self.uv_faces = None if data.uv_faces is None else np.asarray(data.uv_faces, dtype=np.int64)
        # The UV seam split is the same for every character: computed once per actor.
        self.seams = None if self.uv_faces is None else split_seams(self.faces, self.uv_faces)
        self.step = int(step)
        self.previews = bool(settings.preview and self.uv_coords is not None)
        self._data, self._device = data, device
        self._renderer: Optional[PreviewRenderer] = None  # built on first use (write tasks get tiles)
        self._lock = threading.Lock()
        self._sheets: dict[tuple, Any] = {}  # caption layout -> SheetTemplate (drawn once)
        self._obj_topology: Optional[Any] = None  # the OBJ files' vt/f lines (formatted once)

    @property
    def preview(self) -> Optional[PreviewRenderer]:
        """The preview renderer (None without previews), built on first use."""
        if not self.previews:
            return None
        with self._lock:
            if self._renderer is None:
                self._renderer = PreviewRenderer(self._data, self.s.preview_size, self._device)
            return self._renderer

    def obj_topology(self, num_vertices: int) -> Any:
        """The OBJ files' texture-coordinate and face lines (:func:`dcnn_flame.io.meshes.obj_topology`),
        the same for every mesh: formatted on first use (they are ~3/4 of an OBJ file's text)."""
        from dcnn_flame.io.meshes import obj_topology

        with self._lock:
            topo = self._obj_topology
            if topo is None or topo.num_vertices != num_vertices:
                topo = self._obj_topology = obj_topology(self.faces, self.uv_coords, self.uv_faces,
                                                         num_vertices=num_vertices)
            return topo

    def preview_indices(self, names: Sequence[str]) -> list[int]:
        """Indices of the expressions shown on the preview sheet (after the neutral tile)."""
        return list(range(min(len(names), max(0, self.s.preview_max - 1))))

    def preview_tiles(self, outs: Sequence[Any], albedos: Sequence[torch.Tensor], names: Sequence[str]
                      ) -> Optional[np.ndarray]:
        """Several characters' preview tiles in one renderer pass.

        Args:
            outs: RetargetOutput per character (same expressions ``names``).
            albedos: [3, Ht, Wt] per character.
        Returns:
            [B, 1 + shown, size, size, 3] uint8 (the neutral first), or None without previews.
        """
        if not self.previews or not outs:
            return None
        shown = self.preview_indices(names)
        verts = torch.stack([torch.cat([o.neutral[None].float(), o.vertices[shown].float()]) for o in outs])
        return self.preview.render_many(verts, torch.stack([a.float() for a in albedos]))

    def _sheet_png(self, tiles: np.ndarray, names: Sequence[str]) -> bytes:
        """[1 + shown, size, size, 3] tiles -> the preview sheet's PNG (caption layout cached)."""
        from dcnn_flame.data.contact_sheet import SheetTemplate

        labels = ["neutral"] + [names[k] for k in self.preview_indices(names)]
        key = (tuple(labels), tiles.shape)
        sheet = self._sheets.get(key)
        if sheet is None:
            if len(self._sheets) >= 16:
                self._sheets.clear()
            sheet = self._sheets[key] = SheetTemplate(len(tiles), tiles.shape[1], tiles.shape[2],
                                                      cols=min(5, len(tiles)), labels=labels)
        return png_bytes(sheet.compose(tiles))

    def clear_character(self, key: str) -> None:
        """Mark a character that ran and failed as not complete: its ``_SUCCESS`` (left by an
        earlier run when this one is an ``overwrite``), then its results table (rows of an earlier
        or partial attempt), so that neither a rerun nor a query takes it for done."""
        remove_if_exists(character_uri(self.s.run_uri, key, SUCCESS), self.s.storage, self.s.fs)
        remove_if_exists(results_uri(self.s.run_uri, key), self.s.storage, self.s.fs)

    def write_failures(self, character_id: str, key: str, failures: Sequence[dict]) -> None:
        write_failures_if_changed(failures_uri(self.s.run_uri, key), self.s.run_name, character_id, key,
                                  failures, self.s.storage, self.s.fs)

    def _put(self, uri: str, data: bytes) -> str:
        return put(uri, data, self.s.storage, self.s.fs)

    def write_character(self, character_id: str, key: str, rec: Any, names: list[str], au: torch.Tensor,
                        out: Any, failures: Sequence[dict], num_images: int, timings: tuple[float, float],
                        before_success: Optional[Callable[[], None]] = None,
                        tiles: Optional[np.ndarray] = None, tiles_ms: float = 0.0) -> None:
        """Write everything of one character, ``_SUCCESS`` last.

        Args:
            rec: :class:`~dcnn_flame.generation.predictor.Reconstruction`.
            names: K expression names; au: [K, 17] their AU vectors.
            out: :class:`~dcnn_flame.generation.retarget.RetargetOutput` with K meshes.
            failures: image failures of this character (kept in the failures table).
            timings: (reconstruct_ms incl. decode, retarget_ms) per character.
            before_success: called before ``_SUCCESS`` is written (test fault injection).
            tiles: the preview's tiles rendered beforehand (:meth:`preview_tiles` for a whole
                batch); None = rendered here.
            tiles_ms: this character's share of rendering ``tiles`` (counted in ``write_ms``).
        """
        import time

        from dcnn_flame.io.gltf import glb_bytes
        from dcnn_flame.io.meshes import mtl_bytes, obj_bytes

        t0 = time.perf_counter()
        s, run = self.s, self.s.run_uri
        neutral = out.neutral.float().cpu().numpy()
        meshes = out.vertices.float().cpu().numpy()
        texture = getattr(rec, "texture", None)  # made on the device by reconstruct()
        tex = png_bytes(texture) if texture is not None else albedo_png(rec.albedo)
        glb_uri = character_uri(run, key, "character.glb")
        extras = {"character_id": character_id, "run_name": s.run_name, "checkpoint": s.checkpoint_uri,
                  "checkpoint_step": self.step, "model_version": s.model_version, "expressions": list(names)}
        self._put(glb_uri, glb_bytes(neutral, self.faces, self.uv_coords, self.uv_faces,
                                     morph_targets={n: meshes[k] for k, n in enumerate(names)},
                                     texture_png=tex if self.uv_coords is not None else None,
                                     name=key, extras=extras, seams=self.seams))
        self._put(character_uri(run, key, "albedo.png"), tex)
        obj_uris: dict[str, Optional[str]] = {}
        if s.write_obj:
            self._put(character_uri(run, key, "character.mtl"), mtl_bytes("albedo.png"))
            for k, n in enumerate(["neutral_mesh"] + list(names)):
                v = neutral if k == 0 else meshes[k - 1]
                uri = character_uri(run, key, f"{storage.safe_key(n)}.obj")
                self._put(uri, obj_bytes(v, self.faces, self.uv_coords, self.uv_faces,
                                         material_file="character.mtl", comment=f"{character_id} {n}",
                                         topology=self.obj_topology(len(v))))
                obj_uris[n] = uri
        preview_uri = None
        if self.previews:
            if tiles is None:
                tiles = self.preview_tiles([out], [rec.albedo], names)[0]
            preview_uri = character_uri(run, key, "preview.png")
            self._put(preview_uri, self._sheet_png(tiles, names))
        write_ms = (time.perf_counter() - t0) * 1000.0 + float(tiles_ms)

        self._put(results_uri(run, key), results_bytes(
            character_id, key, rec, names, au, out, s, self.step, num_images, timings, write_ms, glb_uri,
            preview_uri, obj_uris))
        f_uri = failures_uri(run, key)
        if failures:
            self.write_failures(character_id, key, failures)
        else:  # stale rows of an earlier attempt of this character
            remove_if_exists(f_uri, s.storage, s.fs)
        if before_success is not None:
            before_success()
        self._put(character_uri(run, key, SUCCESS), json.dumps(
            {"character_id": character_id, "expressions": len(names), "checkpoint": s.checkpoint_uri,
             "checkpoint_step": self.step}, sort_keys=True).encode())
