"""Training checkpoints: what is in one, how to write and read it, and how Ray keeps them.

A checkpoint is a directory (Ray persists it as ``<storage>/runs/<name>/checkpoint_<step>``)::

    model.pt        state_dict of the trainable model (unwrapped from DDP)   <- inference/ONNX
    train_state.pt  optimizer, scheduler, step, counters, RNG states of every rank
    config.json     the run's full config (plain JSON) and the stage
    meta.json       {"format": 1, "step": ..., "metrics": {...}}

Everything is loadable with ``torch.load(..., weights_only=True)``: RNG states are stored as
tensors/ints, never as pickled objects. Only rank 0 writes (all ranks contribute their RNG
states first). Retention (keep-last-N or best-by-metric) is Ray's ``CheckpointConfig``.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dcnn_flame.io import storage
from dcnn_flame.io.arrow_fs import strip_protocol
from dcnn_flame.io.storage import StorageOptions

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
_CKPT_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` (sortable, unique per run)."""
    return f"checkpoint_{step:08d}"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/FSDP wrappers (what is saved and evaluated)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process' RNG states (python, numpy, torch CPU, every CUDA device) as tensors/ints."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- write / read


@dataclass
class TrainingState:
    """What :func:`load_training_state` returns."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    step: int
    rng: list[dict] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def save_checkpoint(directory: str, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    step: int, rng: list[dict], counters: dict[str, int], config: dict,
                    metrics: Optional[dict] = None) -> str:
    """Write a checkpoint into the local ``directory`` (created); returns it.

    Args:
        model: the trainable model (DDP wrapper allowed; the inner module is saved).
        rng: RNG states indexed by rank (:func:`rng_state` of every rank).
        counters: run counters (bad rows, skipped steps, optimizer updates ...).
        config: the run config as a plain dict (saved as JSON).
        metrics: the metrics reported with this checkpoint.
    """
    os.makedirs(directory, exist_ok=True)
    torch.save(unwrap(model).state_dict(), os.path.join(directory, MODEL_FILE))
    torch.save({"format": FORMAT_VERSION, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": int(step), "rng": rng, "counters": {k: int(v) for k, v in counters.items()}},
               os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(_json_safe(config), f, indent=1, sort_keys=True)
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({"format": FORMAT_VERSION, "step": int(step), "metrics": _json_safe(metrics or {})}, f,
                  indent=1, sort_keys=True)
    return directory


def fs_and_path(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> tuple[Any, str]:
    """(fsspec filesystem, path) for ``uri``. ``fs``: a filesystem built on the driver (it may carry
    credentials the worker's environment lacks, see :mod:`dcnn_flame.io.arrow_fs`); used for
    remote URIs."""
    uri = storage.resolve(uri)
    if fs is not None and not storage.is_local(uri):
        return fs, strip_protocol(uri)
    return storage.get_fs(uri, options)


def read_bytes(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> bytes:
    f, path = fs_and_path(uri, options, fs)
    with f.open(path, "rb") as fh:
        return fh.read()


def exists(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> bool:
    f, path = fs_and_path(uri, options, fs)
    return f.exists(path)


def write_bytes(uri: str, data: bytes, options: Optional[StorageOptions] = None, fs: Any = None) -> None:
    """Atomic write (local: temp file + rename; object stores: one PUT)."""
    if storage.is_local(uri) or fs is None:
        storage.atomic_write_bytes(uri, data, options)
        return
    f, path = fs_and_path(uri, options, fs)
    f.pipe_file(path, data)


def _load_torch(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> Any:
    if storage.is_local(uri):
        return torch.load(storage.resolve(uri), map_location="cpu", weights_only=True)
    return torch.load(io.BytesIO(read_bytes(uri, options, fs)), map_location="cpu", weights_only=True)


def _load_json(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> Any:
    return json.loads(read_bytes(uri, options, fs).decode())


def load_training_state(directory: str, options: Optional[StorageOptions] = None, fs: Any = None) -> TrainingState:
    """Everything needed to resume, from a checkpoint directory/URI."""
    state = _load_torch(storage.join(directory, STATE_FILE), options, fs)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {directory} has format {state.get('format')}, this code reads "
                         f"{FORMAT_VERSION}; start a new run (new name) or use a matching version")
    meta = _load_json(storage.join(directory, META_FILE), options, fs)
    return TrainingState(model=_load_torch(storage.join(directory, MODEL_FILE), options, fs),
                         optimizer=state["optimizer"], scheduler=state["scheduler"], step=int(state["step"]),
                         rng=list(state.get("rng", [])), counters=dict(state.get("counters", {})),
                         config=_load_json(storage.join(directory, CONFIG_FILE), options, fs),
                         metrics=meta.get("metrics", {}))


def list_checkpoints(run_uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> list[tuple[int, str]]:
    """``(step, uri)`` of the complete checkpoints directly under a run directory, by step."""
    run_uri = storage.resolve(run_uri)
    f, path = fs_and_path(run_uri, options, fs)
    if not f.exists(path):
        return []
    out = []
    for entry in f.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        m = _CKPT_RE.match(name)
        if m and f.exists(f"{path.rstrip('/')}/{name}/{META_FILE}"):
            out.append((int(m.group(1)), storage.join(run_uri, name)))
    return sorted(out)


def resolve_checkpoint(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> str:
    """A checkpoint directory URI: ``uri`` itself when it holds model.pt, else the latest
    ``checkpoint_*`` of the run directory ``uri``. Raises FileNotFoundError otherwise."""
    uri = storage.resolve(uri)
    if exists(storage.join(uri, MODEL_FILE), options, fs):
        return uri
    found = list_checkpoints(uri, options, fs)
    if not found:
        raise FileNotFoundError(f"no checkpoint at {uri!r}: expected a checkpoint directory with {MODEL_FILE} "
                                f"or a run directory with checkpoint_* subdirectories")
    return found[-1][1]


def load_checkpoint_for_inference(uri: str, options: Optional[StorageOptions] = None, fs: Any = None
                                  ) -> tuple[dict[str, torch.Tensor], dict, int]:
    """``(model_state, config, step)`` from a checkpoint or run directory (local path or URI).

    A run directory gives its latest checkpoint. ``model_state`` is on CPU; ``config`` is the
    training run's config as a plain dict (``config["model"]`` rebuilds the model).
    """
    ckpt = resolve_checkpoint(uri, options, fs)
    meta = _load_json(storage.join(ckpt, META_FILE), options, fs)
    return (_load_torch(storage.join(ckpt, MODEL_FILE), options, fs),
            _load_json(storage.join(ckpt, CONFIG_FILE), options, fs), int(meta["step"]))


def load_init_weights(model: nn.Module, uri: str, options: Optional[StorageOptions] = None,
                      fs: Any = None) -> dict[str, list[str]]:
    """Initialise ``model`` from another run's checkpoint (stage 2 from stage 1).

    ``strict=False`` on purpose: layers new in this stage (absent from the file) keep their
    fresh initialisation and keys the model no longer has are ignored; both lists are
    returned for logging. Shapes of shared keys must match (a mismatch raises). Raises
    ValueError when no key matches at all (wrong file).
    """
    state, _, _ = load_checkpoint_for_inference(uri, options, fs)
    target = unwrap(model)
    own = target.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise ValueError(f"init checkpoint {uri!r} shares no parameter with this model "
                         f"(e.g. file has {list(state)[:3]}, model has {list(own)[:3]}); check init_checkpoint")
    bad = [k for k in shared if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"init checkpoint {uri!r} has different shapes for {bad[:5]} (e.g. {bad[0]}: "
                         f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); model configs differ")
    result = target.load_state_dict(state, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def upload_directory(local_dir: str, uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (same relative keys; local or remote)."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/")
            with open(os.path.join(root, name), "rb") as f:
                write_bytes(storage.join(uri, rel), f.read(), options, fs)


def remove_directory(uri: str, options: Optional[StorageOptions] = None, fs: Any = None) -> None:
    """Delete a checkpoint directory (local or remote)."""
    f, path = fs_and_path(uri, options, fs)
    if f.exists(path):
        f.rm(path, recursive=True)


def ray_checkpoint_config(keep: int, best_metric: Optional[str], best_mode: str):
    """Ray's ``CheckpointConfig``: keep-last-``keep``, or the ``keep`` best by ``best_metric``."""
    from ray.train import CheckpointConfig

    if best_mode not in ("min", "max"):
        raise ValueError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
    if keep < 1:
        raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
    return CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=best_metric,
                            checkpoint_score_order=best_mode)
