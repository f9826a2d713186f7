"""Training the supervision teachers: the AU detector and the expression classifier (paper Sec. 3.4).

Recipe (paper Sec. 3.4 where it says, ours where it does not):

- data: every view of every shard row is one image (:mod:`dcnn_flame.supervision.dataset`);
  AU intensities in [0, 1] are soft BCE targets, NaN AUs and class -1 are masked;
- split 80/10/10 **by identity** (seed 42): the paper gives the fractions, not the unit; by
  identity keeps a person out of two splits (no leakage through near-duplicate views);
- Adam, lr 1e-4, batch 16, 60 epochs, seed 42 (paper); weighted BCE with per-AU positive
  weights n_neg / n_pos from the training labels (paper: "weighted binary cross-entropy to
  balance the sample imbalance among different AUs"); cross-entropy for the classes;
- both networks see the same batches but are separate models with separate optimisers; a
  network skips a batch holding none of its labels (no forward, no step), so images without
  AU labels never move the AU detector and vice versa;
- after every epoch both are evaluated on val; each network keeps its own best epoch (AU:
  lowest mean absolute error; expression: highest macro-F1, then accuracy); the test split
  is evaluated once, with the best weights. No pretrained OpenFace weights exist here, so
  training starts from scratch (the paper fine-tunes from OpenFace 2.0).

Outputs: the teachers file (:func:`~dcnn_flame.supervision.bundle.teachers_to_bytes`, meta =
metrics, config, data URI, epochs) and ``<stem>.metrics.json`` next to it, both written
atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from dcnn_flame import metrics as M
from dcnn_flame.config import SupervisionTrainConfig
from dcnn_flame.constants import AU_COLUMNS, NUM_EXPRESSION_CLASSES
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions
from dcnn_flame.losses.au import au_bce_loss, au_pos_weight
from dcnn_flame.losses.expression import expression_ce_loss
from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
from dcnn_flame.supervision.augment import augment_batch
from dcnn_flame.supervision.bundle import teachers_to_bytes
from dcnn_flame.supervision.dataset import SPLITS, ImageStore, ViewIndex, read_view_index, split_by_identity
from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

METRICS_FORMAT = "dcnn_flame.supervision_metrics/1"


@dataclass
class SupervisionResult:
    """What :func:`run` produced.

    Attributes:
        au_net, expr_net: the trained networks (best epochs, eval mode, on CPU).
        metrics: the metrics JSON content (val/test at the best epochs, baselines, history).
        output_uri: the teachers file written.
        metrics_uri: the metrics JSON written.
    """

    au_net: AUDetector
    expr_net: ExpressionClassifier
    metrics: dict
    output_uri: str
    metrics_uri: str


# ----------------------------------------------------------------------------- metrics


def au_metrics(pred: Tensor, gt: Tensor, threshold: float = 0.5, eps: float = 0.1) -> dict[str, Any]:
    """AU detector metrics over the valid (non-NaN) labels.

    Args:
        pred: [N, K] predicted intensities in [0, 1].
        gt: [N, K] labels in [0, 1], NaN = missing.
        threshold: an AU is active when its intensity >= threshold (for F1).
        eps: AUMR matching threshold (Eq. 18).
    Returns: ``au_mae`` (mean |pred - gt|), ``aumr`` (mean over images with a label),
        ``au_f1`` (mean of the per-AU F1 over AUs active in the labels or predictions),
        ``au_f1_per_au`` {au01: F1 or NaN}, ``au_labels`` (count). NaN when no label.
    """
    valid = ~torch.isnan(gt)
    n = int(valid.sum())
    err = (pred - gt).abs()[valid]
    mae = float(err.mean()) if n else math.nan
    rates = M.aumr(pred, gt, eps)
    aumr = float(rates[~torch.isnan(rates)].mean()) if n else math.nan
    p, t = (pred >= threshold) & valid, (gt >= threshold) & valid
    tp = (p & t).sum(0).double()
    fp = (p & ~t).sum(0).double()
    fn = (~p & t).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(denom, math.nan))
    present = ~torch.isnan(f1)
    return {
        "au_mae": mae,
        "aumr": aumr,
        "au_f1": float(f1[present].mean()) if bool(present.any()) else math.nan,
        "au_f1_per_au": {c: float(v) for c, v in zip(AU_COLUMNS, f1.tolist())},
        "au_labels": n,
    }


def expression_metrics(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy and macro-F1 over labels != -1. Args: logits [N, C], labels [N]."""
    n = int((labels >= 0).sum())
    if n == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "expr_labels": 0}
    return {"accuracy": float(M.accuracy(logits, labels)),
            "macro_f1": float(M.macro_f1(logits, labels, NUM_EXPRESSION_CLASSES)), "expr_labels": n}


def baselines(train_au: Tensor, train_cls: Tensor, gt_au: Tensor, gt_cls: Tensor, eps: float) -> dict[str, float]:
    """Label-only predictors on a split: every AU at its training mean, every image the majority class.

    Args: train_au [Nt, K] (NaN = missing), train_cls [Nt]; gt_au [N, K], gt_cls [N].
    Returns: ``au_mae_mean_baseline``, ``aumr_mean_baseline``, ``accuracy_majority_baseline``.
    """
    mean = torch.nanmean(train_au, dim=0)  # NaN for an AU never labelled in training
    pred = mean.expand_as(gt_au)
    valid = ~torch.isnan(gt_au) & ~torch.isnan(pred)
    out = {"au_mae_mean_baseline": float((pred - gt_au).abs()[valid].mean()) if bool(valid.any()) else math.nan}
    rates = M.aumr(pred, gt_au, eps)
    rates = rates[~torch.isnan(rates)]
    out["aumr_mean_baseline"] = float(rates.mean()) if rates.numel() else math.nan
    labelled = train_cls[train_cls >= 0]
    keep = gt_cls >= 0
    if labelled.numel() and bool(keep.any()):
        majority = int(torch.bincount(labelled, minlength=NUM_EXPRESSION_CLASSES).argmax())
        out["accuracy_majority_baseline"] = float((gt_cls[keep] == majority).double().mean())
    else:
        out["accuracy_majority_baseline"] = math.nan
    return out


# ----------------------------------------------------------------------------- training


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _labels(index: ViewIndex, pos: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.from_numpy(index.au[pos]).to(device), torch.from_numpy(index.expression[pos]).to(device))


def _as_float(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device).float().div_(255.0)


def train_epoch(au_net: AUDetector, expr_net: ExpressionClassifier, opt_au: torch.optim.Optimizer,
                opt_expr: torch.optim.Optimizer, store: ImageStore, positions: np.ndarray, batch_size: int,
                pos_weight: Tensor, rng: np.random.Generator, generator: torch.Generator,
                augment: Optional[dict] = None) -> dict[str, float]:
    """One pass over ``positions`` training both networks.

    Each network steps only on batches with at least one of its labels; missing labels
    (NaN AUs, class -1) are passed to the masked losses unchanged.

    Args:
        pos_weight: [17] positive weights of the AU BCE (on the networks' device).
        augment: keyword arguments of :func:`augment_batch`, or None for no augmentation.
    Returns: mean ``au_loss`` / ``ce_loss`` over the steps taken, ``au_steps``, ``expr_steps``, ``images``.
    """
    device = pos_weight.device
    au_net.train()
    expr_net.train()
    sums = {"au_loss": 0.0, "ce_loss": 0.0, "au_steps": 0, "expr_steps": 0, "images": 0}
    for pos, imgs in store.batches(positions, batch_size, rng):
        x = _as_float(imgs, device)
        if augment is not None:
            x = augment_batch(x, generator, **augment)
        au, cls = _labels(store.index, pos, device)
        sums["images"] += len(pos)
        if bool((~torch.isnan(au)).any()):
            loss = au_bce_loss(au_net(x).logits, au, pos_weight=pos_weight)
            opt_au.zero_grad(set_to_none=True)
            loss.backward()
            opt_au.step()
            sums["au_loss"] += float(loss.detach())
            sums["au_steps"] += 1
        if bool((cls >= 0).any()):
            loss = expression_ce_loss(expr_net(x).logits, cls)
            opt_expr.zero_grad(set_to_none=True)
            loss.backward()
            opt_expr.step()
            sums["ce_loss"] += float(loss.detach())
            sums["expr_steps"] += 1
    sums["au_loss"] = sums["au_loss"] / sums["au_steps"] if sums["au_steps"] else math.nan
    sums["ce_loss"] = sums["ce_loss"] / sums["expr_steps"] if sums["expr_steps"] else math.nan
    return sums


@torch.no_grad()
def predict(au_net: AUDetector, expr_net: ExpressionClassifier, store: ImageStore, positions: np.ndarray,
            batch_size: int, device: torch.device) -> tuple[np.ndarray, Tensor, Tensor]:
    """Eval-mode predictions -> (positions [N] in the order predicted, AU probs [N, 17], class logits [N, C]) on CPU."""
    au_net.eval()
    expr_net.eval()
    out_pos, out_au, out_cls = [], [], []
    for pos, imgs in store.batches(positions, batch_size, None):
        x = _as_float(imgs, device)
        out_pos.append(pos)
        out_au.append(au_net(x).probs.float().cpu())
        out_cls.append(expr_net(x).logits.float().cpu())
    if not out_pos:
        return (np.zeros(0, dtype=np.int64), torch.zeros(0, au_net.cfg.num_aus),
                torch.zeros(0, expr_net.cfg.num_classes))
    return np.concatenate(out_pos), torch.cat(out_au), torch.cat(out_cls)


def evaluate(au_net: AUDetector, expr_net: ExpressionClassifier, store: ImageStore, positions: np.ndarray,
             batch_size: int, device: torch.device, threshold: float, eps: float) -> dict[str, Any]:
    """AU and expression metrics of both networks on ``positions`` (see :func:`au_metrics`)."""
    pos, au_pred, logits = predict(au_net, expr_net, store, positions, batch_size, device)
    gt_au, gt_cls = _labels(store.index, pos, torch.device("cpu"))
    return {**au_metrics(au_pred, gt_au, threshold, eps), **expression_metrics(logits, gt_cls), "images": len(pos)}


def _au_better(new: float, best: float) -> bool:
    return not math.isnan(new) and (math.isnan(best) or new < best)


def _expr_key(m: dict) -> tuple[float, float]:
    return (m["macro_f1"], m["accuracy"])


def _expr_better(new: dict, best: Optional[tuple[float, float]]) -> bool:
    key = _expr_key(new)
    return not math.isnan(key[0]) and (best is None or key > best)


def _clean(obj: Any) -> Any:
    """JSON/torch-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Optional[float], spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def metrics_uri_of(output_uri: str) -> str:
    """``.../teachers.pt`` -> ``.../teachers.metrics.json``."""
    base = output_uri[:-3] if output_uri.endswith(".pt") else output_uri
    return f"{base}.metrics.json"


def init_from_teachers(au_net: AUDetector, expr_net: ExpressionClassifier, uri: str,
                       options: Optional[StorageOptions] = None) -> None:
    """Load the weights of the teachers file ``uri`` into ``au_net`` and ``expr_net`` (in place).

    The file may have been trained at another ``input_size`` (progressive resizing: train
    cheaply at 112 px, fine-tune at 224): both networks are fully convolutional up to a
    spatial pooling (the AU detector's region priors are built for each feature-map size), so
    every weight has the same shape at any input size. Everything else must match.

    Raises ValueError naming the file when its networks differ from these in anything but the
    input size: start from scratch, or build the same architecture.
    """
    from dcnn_flame.supervision.bundle import load_teachers

    au_src, ex_src, _ = load_teachers(uri, options)
    for name, dst, src in (("AU detector", au_net, au_src), ("expression classifier", expr_net, ex_src)):
        if dataclasses.replace(src.cfg, input_size=dst.cfg.input_size) != dst.cfg:
            raise ValueError(f"init_from={uri}: its {name} was built with {src.cfg}, this run builds {dst.cfg}; "
                             f"only input_size may differ: build the same architecture or drop init_from")
        if src.cfg.input_size != dst.cfg.input_size:
            print(f"[supervision] init_from={uri}: {name} trained at {src.cfg.input_size} px, "
                  f"continuing at {dst.cfg.input_size} px", flush=True)
        dst.load_state_dict(src.state_dict())


def fit(au_net: AUDetector, expr_net: ExpressionClassifier, store: ImageStore, train_pos: np.ndarray,
        val_pos: np.ndarray, *, epochs: int, batch_size: int, eval_batch_size: int, lr: float,
        weight_decay: float, pos_weight: Tensor, seed: int, augment: Optional[dict], threshold: float,
        eps: float, val_baseline: Optional[dict] = None,
        lr_schedule: str = "constant") -> tuple[dict[str, int], list[dict]]:
    """Train both networks for ``epochs`` (Adam each), evaluating on ``val_pos`` after every epoch.

    ``lr_schedule``: "constant" (the paper) or "cosine" (epoch e, 1-based, trains at
    ``lr * (1 + cos(pi * (e - 1) / epochs)) / 2``).

    Each network ends with the weights of its best validation epoch (AU: lowest MAE;
    expression: highest macro-F1, then accuracy), or of its last epoch that took a step when
    val holds none of its labels. Prints one progress line per epoch.

    Returns: ({"au": best epoch, "expression": best epoch}, per-epoch history).
    """
    device = pos_weight.device
    opt_au = torch.optim.Adam(au_net.parameters(), lr=lr, weight_decay=weight_decay)
    opt_expr = torch.optim.Adam(expr_net.parameters(), lr=lr, weight_decay=weight_decay)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    base = val_baseline or {}
    best_au, best_au_epoch, best_au_state = math.nan, 0, copy.deepcopy(au_net.state_dict())
    best_ex, best_ex_epoch, best_ex_state = None, 0, copy.deepcopy(expr_net.state_dict())
    history = []
    for epoch in range(1, epochs + 1):
        t_ep = time.perf_counter()
        epoch_lr = lr if lr_schedule == "constant" else lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
        for opt in (opt_au, opt_expr):
            for group in opt.param_groups:
                group["lr"] = epoch_lr
        tr = train_epoch(au_net, expr_net, opt_au, opt_expr, store, train_pos, batch_size, pos_weight, rng,
                         generator, augment)
        val = evaluate(au_net, expr_net, store, val_pos, eval_batch_size, device, threshold, eps)
        if _au_better(val["au_mae"], best_au) or (val["au_labels"] == 0 and tr["au_steps"]):
            best_au, best_au_epoch, best_au_state = val["au_mae"], epoch, copy.deepcopy(au_net.state_dict())
        if _expr_better(val, best_ex) or (val["expr_labels"] == 0 and tr["expr_steps"]):
            best_ex = None if val["expr_labels"] == 0 else _expr_key(val)
            best_ex_epoch, best_ex_state = epoch, copy.deepcopy(expr_net.state_dict())
        seconds = time.perf_counter() - t_ep
        history.append({"epoch": epoch, "lr": epoch_lr, "train": tr,
                        "val": {k: v for k, v in val.items() if k != "au_f1_per_au"}, "seconds": seconds})
        print(f"[supervision] epoch {epoch}/{epochs}  train bce {_fmt(tr['au_loss'])} ce {_fmt(tr['ce_loss'])} | "
              f"val AU mae {_fmt(val['au_mae'])} (mean {_fmt(base.get('au_mae_mean_baseline'))}) "
              f"aumr {_fmt(val['aumr'])} f1 {_fmt(val['au_f1'])} | expr acc {_fmt(val['accuracy'])} "
              f"(majority {_fmt(base.get('accuracy_majority_baseline'))}) f1 {_fmt(val['macro_f1'])} | "
              f"{tr['images'] / max(seconds, 1e-9):.0f} img/s, {seconds:.1f} s", flush=True)
    au_net.load_state_dict(best_au_state)
    expr_net.load_state_dict(best_ex_state)
    return {"au": best_au_epoch, "expression": best_ex_epoch}, history


def run(cfg: SupervisionTrainConfig) -> SupervisionResult:
    """Train both teachers on the shards of ``cfg.data_uri`` and write the teachers file + metrics JSON."""
    t_start = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs ({cfg.epochs}) and batch_size ({cfg.batch_size}) must be >= 1")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    options = StorageOptions(cfg.storage.endpoint_url, cfg.storage.region, cfg.storage.anon)
    data_uri = storage.resolve(cfg.data_uri or storage.join(cfg.storage.root(), "prepared", "synthetic", "shards"))
    output_uri = storage.resolve(cfg.output_uri or storage.join(cfg.storage.root(), "teachers", "teachers.pt"))
    device = resolve_device(cfg.device)

    index = read_view_index(data_uri, options, cfg.max_images)
    split = split_by_identity(index.identity, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    t0 = time.perf_counter()
    store = ImageStore(index, cfg.input_size, options, cfg.cache_max_bytes, cfg.decode_threads)
    positions = {k: store.valid(v) for k, v in split.positions.items()}
    counts = {k: int(len(v)) for k, v in positions.items()}
    print(f"[supervision] {len(index)} images of {len(set(index.identity.tolist()))} identities from "
          f"{len(index.files)} shards ({data_uri}); split by identity train/val/test = "
          f"{'/'.join(str(len(split.identities[s])) for s in SPLITS)} identities, "
          f"{'/'.join(str(counts[s]) for s in SPLITS)} images; "
          f"{'cached ' + format(store.nbytes / 2**20, '.0f') + ' MiB' if store.cached else 'streamed'} at "
          f"{cfg.input_size} px in {time.perf_counter() - t0:.1f} s; device {device}", flush=True)
    if counts["train"] == 0:
        raise ValueError(f"no decodable training images in {data_uri}")

    cpu = torch.device("cpu")
    train_au = torch.from_numpy(index.au[positions["train"]])
    train_cls = torch.from_numpy(index.expression[positions["train"]])
    torch.manual_seed(cfg.seed)
    au_net = AUDetector(AUDetectorConfig(input_size=cfg.input_size)).to(device)
    expr_net = ExpressionClassifier(ExpressionClassifierConfig(input_size=cfg.input_size)).to(device)
    if cfg.init_from:
        init_from_teachers(au_net, expr_net, storage.resolve(cfg.init_from), options)
    best_epoch, history = fit(
        au_net, expr_net, store, positions["train"], positions["val"], epochs=cfg.epochs,
        batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        pos_weight=au_pos_weight(train_au, cfg.au_pos_weight_max).to(device), seed=cfg.seed,
        augment=(dict(flip_prob=cfg.flip_prob, crop_scale_min=cfg.crop_scale_min, color_jitter=cfg.color_jitter)
                 if cfg.augment else None),
        threshold=cfg.au_threshold, eps=cfg.aumr_eps, lr_schedule=cfg.lr_schedule,
        val_baseline=baselines(train_au, train_cls, *_labels(index, positions["val"], cpu), cfg.aumr_eps))

    results: dict[str, Any] = {}
    for name in ("val", "test"):
        m = evaluate(au_net, expr_net, store, positions[name], cfg.eval_batch_size, device,
                     cfg.au_threshold, cfg.aumr_eps)
        m.update(baselines(train_au, train_cls, *_labels(index, positions[name], cpu), cfg.aumr_eps))
        results[name] = m
    au_net, expr_net = au_net.cpu().eval(), expr_net.cpu().eval()
    seconds = time.perf_counter() - t_start
    summary = {
        "best_epoch": best_epoch,
        "val": results["val"],
        "test": results["test"],
        "images": counts,
        "identities": {s: len(split.identities[s]) for s in SPLITS},
        "bad_images": len(store.bad),
        "seconds": seconds,
    }
    config = dataclasses.asdict(cfg)
    meta = _clean({"metrics": summary, "config": config, "data_uri": data_uri, "epochs": cfg.epochs,
                   "input_size": cfg.input_size, "split": "by identity, seeded permutation "
                   f"(seed {cfg.seed}, val {cfg.val_fraction}, test {cfg.test_fraction})"})
    storage.atomic_write_bytes(output_uri, teachers_to_bytes(au_net, expr_net, meta=meta), options)
    metrics_uri = metrics_uri_of(output_uri)
    report = _clean({"format": METRICS_FORMAT, "data_uri": data_uri, "output_uri": output_uri, **summary,
                     "device": str(device), "cached": store.cached, "history": history, "config": config,
                     "split_identities": split.identities})
    storage.atomic_write_bytes(metrics_uri, json.dumps(report, indent=1).encode(), options)
    t = results["test"]
    print(f"[supervision] test (best epochs AU {best_epoch['au']}, expr {best_epoch['expression']}): "
          f"AU mae {_fmt(t['au_mae'])} (mean {_fmt(t['au_mae_mean_baseline'])}) aumr {_fmt(t['aumr'])} "
          f"(mean {_fmt(t['aumr_mean_baseline'])}) f1 {_fmt(t['au_f1'])} | expr acc {_fmt(t['accuracy'])} "
          f"(majority {_fmt(t['accuracy_majority_baseline'])}) f1 {_fmt(t['macro_f1'])} | {seconds:.0f} s "
          f"-> {output_uri}", flush=True)
    return SupervisionResult(au_net, expr_net, report, output_uri, metrics_uri)
