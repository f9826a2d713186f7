"""ONNX export of the inference graph, checked with onnx.checker and onnxruntime.

``run(cfg)`` (jobs/export_onnx.py):

1. build :class:`~dcnn_flame.model.inference.InferenceModel` from a training checkpoint
   (``training.checkpoint.load_checkpoint_for_inference``) or, with ``random_init``, from
   ``cfg.model``/``cfg.flame`` with random weights (tests, pipeline checks);
2. export it with one input ``images`` [batch, 3, H, W] and the outputs
   :data:`~dcnn_flame.model.inference.OUTPUT_NAMES` (+ ``vertices``), the batch axis dynamic;
3. ``onnx.checker.check_model(full_check=True)``, then run the file with onnxruntime (CPU) at
   ``cfg.check_batch_sizes`` and compare every output with PyTorch (max abs difference per
   output; NaN must match NaN);
4. write ``<stem>.onnx`` and ``<stem>.json`` (input normalisation, parameter layout, FLAME
   edition, checkpoint, comparison) to ``cfg.output_uri`` (local or URI).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The torch.export
path (``dynamo=True``, the default since torch 2.9) takes ~60 s on this graph and, with torch
2.13, names an internal value ``shape`` that collides with our output of that name (an
invalid model); the TorchScript path exports in seconds and matches PyTorch to ~1e-6.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dcnn_flame.config import ExportConfig, FlameConfig
from dcnn_flame.constants import AU_COLUMNS, AU_IDS, FLAME_JOINTS, NUM_AUS
from dcnn_flame.flame.data import FlameModelData
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions
from dcnn_flame.model.config import ModelConfig
from dcnn_flame.model.inference import OUTPUT_NAMES, InferenceModel

FORMAT_VERSION = 1
INPUT_NAME = "images"
BATCH_AXIS = "batch"
#: FlameConfig fields that a checkpoint's head model takes from ``cfg.flame`` when its
#: model_path is set (the files); the rest (sizes, switches) always come from the checkpoint.
_FLAME_FILE_FIELDS = ("model_path", "landmark_path", "dynamic_landmark_path", "eyelids_path", "uv_path")


@dataclass
class LoadedModel:
    """The inference graph to export and what the metadata says about it."""

    net: InferenceModel
    flame: FlameModelData
    n_shape: int
    n_expr: int
    image_size: int
    checkpoint: Optional[str]
    """Resolved checkpoint directory URI (None with random_init)."""
    step: Optional[int]
    au_source: str
    """Where the AU detector weights came from: a teachers URI, "random" or "none" (NaN)."""


@dataclass
class Comparison:
    """onnxruntime vs PyTorch on the same random inputs."""

    batch_sizes: list[int]
    max_abs_diff: dict[str, float]
    """Per output, over all batch sizes (finite values; NaN positions must agree)."""
    atol: float
    rtol: float
    passed: bool
    detail: str = ""
    """Why it failed (empty when it passed)."""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    """Per-sample shape of each output (without the batch axis), as PyTorch returned it."""

    @property
    def max_abs_diff_all(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


@dataclass
class ExportResult:
    """What :func:`run` wrote and measured."""

    onnx_uri: str
    metadata_uri: str
    comparison: Comparison
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def output_names(with_vertices: bool) -> list[str]:
    """ONNX output names in order: OUTPUT_NAMES (+ "vertices")."""
    return list(OUTPUT_NAMES) + (["vertices"] if with_vertices else [])


def _known_fields(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _au_net(cfg: ExportConfig, teachers: Optional[str], options: StorageOptions, random_ok: bool
            ) -> tuple[Optional[nn.Module], str]:
    if not cfg.with_au:
        return None, "none"
    if teachers:
        from dcnn_flame.supervision.bundle import load_teachers

        au, _, _ = load_teachers(teachers, options)
        return au, teachers
    if random_ok:
        from dcnn_flame.supervision.au import AUDetector

        return AUDetector(), "random"
    warnings.warn("no AU detector (neither teachers_path nor the checkpoint's supervision.teachers_path): "
                  "the exported 'au' output is NaN; pass teachers_path=<teachers file> to include it")
    return None, "none"


def load_inference_model(cfg: ExportConfig) -> LoadedModel:
    """The InferenceModel described by ``cfg`` (checkpoint or random_init), on the CPU, eval mode."""
    from dcnn_flame.flame.factory import load_flame_data
    from dcnn_flame.model.build import build_model

    options = StorageOptions(endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region,
                             anon=cfg.storage.anon)
    if cfg.checkpoint is None and not cfg.random_init:
        raise ValueError("checkpoint is None: pass checkpoint=<checkpoint or run directory>, or "
                         "random_init=true to export an untrained model (tests, pipeline checks)")
    if cfg.checkpoint is not None and cfg.random_init:
        raise ValueError(f"checkpoint={cfg.checkpoint!r} and random_init=true exclude each other; drop one")
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        flame_cfg, model_cfg = cfg.flame, cfg.model
        state, ckpt, step, teachers = None, None, None, cfg.teachers_path
    else:
        from dcnn_flame.training.checkpoint import load_checkpoint_for_inference, resolve_checkpoint

        ckpt = resolve_checkpoint(cfg.checkpoint, options)
        state, config, step = load_checkpoint_for_inference(ckpt, options)
        for key in ("model", "flame"):
            if not isinstance(config.get(key), dict):
                raise ValueError(f"checkpoint {ckpt}: config.json has no '{key}' section; it was not written by "
                                 f"jobs/train.py (expected the TrainConfig as JSON)")
        flame_cfg = FlameConfig(**_known_fields(FlameConfig, config["flame"]))
        if cfg.flame.model_path:
            flame_cfg = dataclasses.replace(flame_cfg, **{k: getattr(cfg.flame, k) for k in _FLAME_FILE_FIELDS})
        # The state dict overwrites the backbone: its init file need not exist here.
        model_cfg = dataclasses.replace(ModelConfig(**_known_fields(ModelConfig, config["model"])),
                                        backbone_weights=None)
        teachers = cfg.teachers_path or (config.get("supervision") or {}).get("teachers_path")
    data = load_flame_data(flame_cfg, options)
    model = build_model(flame_cfg, model_cfg, data)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {ckpt}: model.pt does not fit the architecture in its config.json "
                             f"({str(exc)[:400]}); was the FLAME file (flame.model_path) the one it was trained "
                             f"with?") from exc
    au_net, au_source = _au_net(cfg, teachers, options, random_ok=cfg.random_init)
    au_size = int(getattr(getattr(au_net, "cfg", None), "input_size", 112))
    net = InferenceModel(model, au_net, with_vertices=cfg.with_vertices, au_input_size=au_size).eval()
    return LoadedModel(net=net, flame=data, n_shape=flame_cfg.n_shape, n_expr=flame_cfg.n_expr,
                       image_size=int(cfg.image_size or model_cfg.image_size), checkpoint=ckpt, step=step,
                       au_source=au_source)


def export_graph(net: nn.Module, path: str, image_size: int, names: Sequence[str], opset: int,
                 example_batch: int = 2) -> None:
    """Write ``net`` ([N, 3, S, S] -> tensors named ``names``) as ONNX to the local ``path``,
    with the batch axis (dim 0 of the input and of every output) dynamic."""
    example = torch.rand(example_batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    axes = {n: {0: BATCH_AXIS} for n in [INPUT_NAME, *names]}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is used on purpose (module docstring); its deprecation
        # notice and the tracer's "converting a tensor to a Python boolean" notes about our
        # shape checks (constant for a traced graph) are noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (example,), path, input_names=[INPUT_NAME], output_names=list(names),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def check_graph(path: str, names: Sequence[str]) -> None:
    """``onnx.checker`` (full check, with shape inference) plus the interface we promise:
    one float input ``images`` and the outputs ``names``, all with a symbolic batch axis."""
    import onnx

    onnx.checker.check_model(path, full_check=True)
    graph = onnx.load(path, load_external_data=False).graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ValueError(f"{path}: expected the single input {INPUT_NAME!r}, got {[i.name for i in inputs]}")
    if [o.name for o in graph.output] != list(names):
        raise ValueError(f"{path}: expected outputs {list(names)}, got {[o.name for o in graph.output]}")
    for v in [*inputs, *graph.output]:
        dim0 = v.type.tensor_type.shape.dim[0]
        if dim0.dim_param != BATCH_AXIS:
            raise ValueError(f"{path}: {v.name!r} has a fixed batch axis ({dim0}); expected {BATCH_AXIS!r}")


def _session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def compare_with_onnxruntime(net: nn.Module, path: str, names: Sequence[str], image_size: int,
                             batch_sizes: Sequence[int], atol: float, rtol: float, seed: int = 0) -> Comparison:
    """Run ``path`` with onnxruntime and ``net`` with PyTorch on the same random images
    [b, 3, S, S] in [0, 1] for each b in ``batch_sizes``; compare every output."""
    sess = _session(path)
    gen = torch.Generator().manual_seed(seed)
    worst = {n: 0.0 for n in names}
    shapes: dict[str, list[int]] = {}
    problems = []
    for b in batch_sizes:
        x = torch.rand(int(b), 3, image_size, image_size, generator=gen)
        with torch.no_grad():
            ref = [t.detach().cpu().numpy() for t in net(x)]
        got = sess.run(list(names), {INPUT_NAME: x.numpy()})
        for name, r, g in zip(names, ref, got):
            shapes[name] = list(r.shape[1:])
            if g.shape != r.shape:
                problems.append(f"{name} at batch {b}: onnxruntime shape {g.shape} != torch {r.shape}")
                continue
            nan_r, nan_g = np.isnan(r), np.isnan(g)
            if not np.array_equal(nan_r, nan_g):
                problems.append(f"{name} at batch {b}: NaN positions differ")
            ok = ~(nan_r | nan_g)
            if not ok.any():
                continue
            diff = np.abs(g[ok].astype(np.float64) - r[ok].astype(np.float64))
            worst[name] = max(worst[name], float(diff.max()))
            bound = atol + rtol * np.abs(r[ok].astype(np.float64))
            if (diff > bound).any():
                problems.append(f"{name} at batch {b}: max |diff| {diff.max():.3g} above atol={atol} + "
                                f"rtol={rtol} * |torch|")
    return Comparison(batch_sizes=[int(b) for b in batch_sizes], max_abs_diff=worst, atol=atol, rtol=rtol,
                      passed=not problems, detail="; ".join(problems), shapes=shapes)


def _input_normalisation(net: InferenceModel) -> dict[str, Any]:
    norm = getattr(getattr(net.model, "backbone", None), "normalize", None)
    inside = {}
    if norm is not None and hasattr(norm, "mean"):
        inside = {"mean": [round(float(v), 6) for v in norm.mean.flatten()],
                  "std": [round(float(v), 6) for v in norm.std.flatten()]}
    return {"layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0],
            "preprocess": "the aligned face crop of jobs/prepare.py (loose box + margin, square, resized "
                          "to image_size); divide uint8 pixels by 255, nothing else",
            "normalisation_inside_graph": inside,
            "note": "mean/std normalisation happens inside the graph; do not normalise the input"}


def output_layout(loaded: LoadedModel, names: Sequence[str], dims: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Shape and meaning of each output (the metadata's ``outputs``); ``dims``: per-sample shapes."""
    what = {
        "shape": {"meaning": "FLAME identity shape coefficients (first n_shape components)"},
        "expression": {"meaning": "FLAME expression coefficients (first n_expr components)"},
        "pose": {"meaning": "axis-angle rotations in radians, 3 per joint",
                 "joints": list(FLAME_JOINTS), "index": "3 * joint + axis"},
        "camera": {"meaning": "orthographic camera (DECA convention): x_ndc = scale * (x + tx), "
                              "y_ndc = scale * (y + ty)", "components": ["scale", "tx", "ty"]},
        "light": {"meaning": "spherical-harmonics lighting, 9 bands x RGB", "index": "3 * band + channel"},
        "albedo_code": {"meaning": "coefficients of the albedo basis"},
        "detail_code": {"meaning": "detail code sigma of the detail branch (width 0 without it)"},
        "au": {"meaning": "AU detector sigmoid activations in [0, 1] (NaN when exported without a detector)",
               "au_ids": list(AU_IDS), "columns": list(AU_COLUMNS), "source": loaded.au_source},
        "vertices": {"meaning": "posed FLAME vertices in metres, head model space (apply the camera to "
                                "project)", "num_vertices": loaded.flame.num_vertices},
    }
    return [{"name": n, "shape": [BATCH_AXIS, *dims[n]], "dtype": "float32", **what.get(n, {})} for n in names]


def build_metadata(loaded: LoadedModel, cfg: ExportConfig, names: Sequence[str], onnx_file: str,
                   comparison: Comparison) -> dict[str, Any]:
    """The small JSON written next to the ONNX file."""
    import onnxruntime

    s = loaded.image_size
    return {
        "format": FORMAT_VERSION,
        "onnx_file": onnx_file,
        "opset": cfg.opset,
        "input": {"name": INPUT_NAME, "shape": [BATCH_AXIS, 3, s, s], **_input_normalisation(loaded.net)},
        "outputs": output_layout(loaded, names, comparison.shapes),
        "flame": {"edition": loaded.flame.edition, "source": loaded.flame.source, "n_shape": loaded.n_shape,
                  "n_expr": loaded.n_expr, "num_vertices": loaded.flame.num_vertices},
        "num_aus": NUM_AUS,
        "checkpoint": loaded.checkpoint,
        "checkpoint_step": loaded.step,
        "random_init": bool(cfg.random_init),
        "check": {"runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
                  "batch_sizes": comparison.batch_sizes, "atol": comparison.atol, "rtol": comparison.rtol,
                  "passed": comparison.passed, "max_abs_diff": comparison.max_abs_diff,
                  "max_abs_diff_all": comparison.max_abs_diff_all},
        "exported_with": {"torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=False)"},
    }


def metadata_uri_of(onnx_uri: str) -> str:
    """``<dir>/<stem>.json`` next to ``<dir>/<stem>.onnx``."""
    stem = onnx_uri[:-5] if onnx_uri.lower().endswith(".onnx") else onnx_uri
    return stem + ".json"


def run(cfg: ExportConfig) -> ExportResult:
    """Export, check, compare and write (see the module docstring); returns what was done.

    Raises:
        ValueError: bad settings, or (``fail_on_mismatch``) onnxruntime disagreeing with PyTorch.
    """
    t0 = time.perf_counter()
    if not cfg.check_batch_sizes or min(cfg.check_batch_sizes) < 1:
        raise ValueError(f"check_batch_sizes must be a non-empty list of positive sizes, got {cfg.check_batch_sizes}")
    options = StorageOptions(endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region,
                             anon=cfg.storage.anon)
    onnx_uri = storage.resolve(cfg.output_uri)
    if not onnx_uri.lower().endswith(".onnx"):
        raise ValueError(f"output_uri must name a .onnx file, got {cfg.output_uri!r}")
    meta_uri = metadata_uri_of(onnx_uri)
    loaded = load_inference_model(cfg)
    names = output_names(cfg.with_vertices)
    with tempfile.TemporaryDirectory(prefix="dcnn_onnx_") as tmp:
        local = os.path.join(tmp, "model.onnx")
        export_graph(loaded.net, local, loaded.image_size, names, cfg.opset)
        check_graph(local, names)
        comparison = compare_with_onnxruntime(loaded.net, local, names, loaded.image_size, cfg.check_batch_sizes,
                                              cfg.atol, cfg.rtol, cfg.seed)
        meta = build_metadata(loaded, cfg, names, onnx_uri.rsplit("/", 1)[-1], comparison)
        print(f"[export_onnx] onnxruntime vs PyTorch at batch sizes {comparison.batch_sizes}: max abs diff "
              f"{comparison.max_abs_diff_all:.3g} ("
              + ", ".join(f"{k} {v:.2g}" for k, v in comparison.max_abs_diff.items()) + ")")
        if not comparison.passed and cfg.fail_on_mismatch:
            raise ValueError(f"onnxruntime output differs from PyTorch: {comparison.detail}. Nothing was written; "
                             f"set fail_on_mismatch=false to write anyway, or raise atol/rtol if the "
                             f"difference is acceptable for your use")
        with open(local, "rb") as f:
            storage.atomic_write_bytes(onnx_uri, f.read(), options)
    storage.atomic_write_bytes(meta_uri, json.dumps(meta, indent=1, sort_keys=True).encode(), options)
    seconds = time.perf_counter() - t0
    status = "passed" if comparison.passed else f"FAILED ({comparison.detail})"
    print(f"[export_onnx] wrote {onnx_uri} and {meta_uri} in {seconds:.1f} s; check {status}")
    return ExportResult(onnx_uri=onnx_uri, metadata_uri=meta_uri, comparison=comparison, metadata=meta,
                        seconds=seconds)
