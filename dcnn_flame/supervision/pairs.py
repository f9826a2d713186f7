"""Within-face AU training: pairs of one synthetic face, neutral and expressed, in one view.

Why. An AU detector trained on single images of many identities learns to ignore what
varies between identities, and some AUs look like identity in one image: the chin raiser
(AU17) like another chin, the lip tightener (AU23) like thinner lips. Such a detector hardly
responds to them (AU17 alone at 0.5: +0.19 with detector J, docs/generation.md) although
they change the image as much as AUs it sees well (summed pixel change of AU17 at 0.5 equals
AU14's, which J answers with +0.80). The batch job's check asks another question: how did
this character's face change from its own neutral? Pairs teach exactly that.

Measured (docs/generation.md, "More views of the check, and within-face pairs"): fine-tuning
the single-image detector this way did NOT give a better instrument for the check (AU17 stays
invisible and its output turns into a motion detector); the probe shows the within-face change
holds more than one image (mean R^2 over the AUs 0.56 -> 0.70), which points to a detector that
takes the neutral render as a second input.

A pair is one view of a ``synthetic_au``-world identity rendered twice with the same pose,
light, background, albedo and camera: once with the view's AUs (plus the world's nuisance
expression components and jaw noise) and once neutral (no AU, no nuisance). The loss
(:func:`pair_loss`) is

    L = BCE(expressed, y) + BCE(neutral, 0) + w * mean((p(expressed) - p(neutral) - g(y))^2)

(soft BCE with the usual per-AU positive weights pw; y the view's 17 AU intensities). The
first two keep the detector an ordinary single-image detector, usable as a teacher; the
contrast term asks its response to the face's change to equal the AUs that changed it. g is
the activation the weighted BCE itself asks for, g(y) = pw y / (pw y + 1 - y) (its minimum
over p; g(0) = 0, g(y) = y when pw = 1): with the plain y as contrast target the two terms
pull towards different answers (a detector trained with pw = 5 answers 0.83 to an AU at 0.5,
the contrast term would pull it to 0.5), and a first run with that target only got worse on
both (val contrast error 0.122 -> 0.138 after two epochs).

    python -m dcnn_flame.supervision.pairs --init teachers.pt --output pairs.pt \\
        --identities 2000 --seed 11 --epochs 4 --cache /data/pairs.npz

writes a teachers file (the expression classifier is copied from ``--init`` unchanged) and a
metrics JSON next to it; check it with ``python -m dcnn_flame.generation.au_check``.
``--reference`` trains a two-input detector on the same pairs instead
(:mod:`dcnn_flame.supervision.reference`: the face and its neutral; loss BCE(D(e | n), y) +
BCE(D(n | n), 0)) and writes that detector's file, which ``au_check --teachers`` also reads.
Its ``--init`` may also be ``none`` (an untrained detector) or a two-input detector file
(training goes on), and ``--input-size`` carries the weights to another input size
(progressive resizing: 112 px from scratch, then 224); ``--device cuda`` trains on a GPU (the
pairs are always rendered by ``--processes`` CPU processes). The output and its metrics JSON
are rewritten after every epoch that is the best so far (``epochs_done`` in the JSON), so a
run cut short keeps its best epoch.
``--probe`` trains nothing and writes (to ``--output``, JSON) how much of each AU a linear
read-out of the ``--init`` detector's conv features finds in one image and in the change
from the same face's neutral (:func:`feature_probe`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dcnn_flame.constants import AU_COLUMNS, NUM_AUS
from dcnn_flame.losses.au import au_bce_loss, au_pos_weight
from dcnn_flame.supervision.augment import augment_batch
from dcnn_flame.supervision.train import resolve_device


@dataclass
class PairSet:
    """Rendered pairs (NumPy, N pairs of S x S images).

    Attributes:
        neutral: [N, S, S, 3] uint8, the face without AUs.
        expressed: [N, S, S, 3] uint8, the same view with ``au``.
        au: [N, 17] float32 AU intensities of the expressed image (AU_IDS order).
        identity: [N] int64 identity index in the world (views of one identity share it).
    """

    neutral: np.ndarray
    expressed: np.ndarray
    au: np.ndarray
    identity: np.ndarray

    def __len__(self) -> int:
        return int(self.au.shape[0])

    def take(self, idx: np.ndarray) -> "PairSet":
        return PairSet(self.neutral[idx], self.expressed[idx], self.au[idx], self.identity[idx])

    def save(self, path: str, meta: Optional[dict] = None) -> None:
        """Uncompressed .npz (the images are noise-like renders; compression buys little), with
        ``meta`` (what it was rendered from) as JSON."""
        np.savez(path, neutral=self.neutral, expressed=self.expressed, au=self.au, identity=self.identity,
                 meta=np.array(json.dumps(meta or {}, sort_keys=True)))

    @classmethod
    def load(cls, path: str, expect_meta: Optional[dict] = None) -> "PairSet":
        """Read :meth:`save`'s file; with ``expect_meta``, refuse a file rendered from other settings."""
        with np.load(path) as z:
            missing = {"neutral", "expressed", "au", "identity", "meta"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a pair cache of dcnn_flame.supervision.pairs (missing "
                                 f"{sorted(missing)}); delete it and render again")
            if expect_meta is not None:
                got = json.loads(str(z["meta"]))
                want = json.loads(json.dumps(expect_meta, sort_keys=True))
                if got != want:
                    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                    was = ", ".join(f"{k}: {got.get(k)!r}" for k in diff)
                    now = ", ".join(f"{k}: {want.get(k)!r}" for k in diff)
                    raise ValueError(f"{path} was rendered with other settings ({was}; this run: {now}); delete it "
                                     "or point --cache elsewhere")
            return cls(z["neutral"], z["expressed"], z["au"], z["identity"])

    @classmethod
    def concat(cls, parts: Sequence["PairSet"]) -> "PairSet":
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def neutral_of(params):
    """The same sampled views with no AU, no nuisance expression and no jaw noise
    (:class:`~dcnn_flame.data.synthetic.IdentityParams` -> a modified copy)."""
    return dataclasses.replace(params, au=np.zeros_like(params.au), expr_extra=np.zeros_like(params.expr_extra),
                               jaw_noise=np.zeros_like(params.jaw_noise))


def render_pairs(world, seed: int, start: int, count: int) -> PairSet:
    """Pairs of every view of identities ``start .. start + count - 1`` of the world ``seed``.

    The neutral render frames its own landmark box (the world's framing); the expressed render
    reuses its camera, so the two images differ only where the face moved or its shading
    changed (as in the batch job's check, which frames the neutral face).

    Returns: a :class:`PairSet` of ``count * world.num_views`` pairs.
    """
    parts = []
    with torch.no_grad():
        for i in range(start, start + count):
            params = world.sample(seed, i)
            neutral = world.render(neutral_of(params))
            expressed = world.render(params, camera=torch.from_numpy(neutral.camera))
            nv = params.au.shape[0]
            parts.append(PairSet(neutral.images, expressed.images, params.au.astype(np.float32),
                                 np.full(nv, i, dtype=np.int64)))
    return PairSet.concat(parts)


def _render_worker(args: tuple) -> PairSet:
    cfg_dict, seed, start, count, threads = args
    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.data.synthetic import world_for

    torch.set_num_threads(threads)
    return render_pairs(world_for(SyntheticConfig(**cfg_dict)), seed, start, count)


def render_pairs_parallel(cfg, seed: int, count: int, processes: int = 2, chunk: int = 50) -> PairSet:
    """:func:`render_pairs` of identities ``0 .. count - 1`` in ``processes`` worker processes
    (one torch thread each), in identity order whatever the process count."""
    if processes <= 1:  # here, with this process's torch threads
        from dcnn_flame.data.synthetic import world_for

        return render_pairs(world_for(cfg), seed, 0, count)
    jobs = [(dataclasses.asdict(cfg), seed, s, min(chunk, count - s), 1) for s in range(0, count, chunk)]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(processes) as pool:
        return PairSet.concat(pool.map(_render_worker, jobs))


def bce_optimum(au: Tensor, pos_weight: Optional[Tensor] = None) -> Tensor:
    """g(y) = pw y / (pw y + 1 - y): the activation minimising the weighted soft BCE of target y.

    Shapes: au [..., 17], pos_weight [17] or None (= 1, g(y) = y) -> [..., 17]."""
    if pos_weight is None:
        return au
    wy = pos_weight.to(au) * au
    return wy / (wy + 1.0 - au).clamp_min(1e-12)


def pair_loss(au_net, neutral: Tensor, expressed: Tensor, au: Tensor, pos_weight: Optional[Tensor] = None,
              contrast_weight: float = 4.0) -> tuple[Tensor, dict[str, float]]:
    """The loss of the module docstring on one batch.

    Args:
        au_net: the AU detector (its mode is the caller's).
        neutral, expressed: [B, 3, S, S] float images in [0, 1] (pair i = row i of both).
        au: [B, 17] AU intensities of the expressed images.
        pos_weight: [17] positive weights of both BCE terms (None = 1).
        contrast_weight: w of the contrast term.
    Returns: (scalar loss, {"bce": ..., "contrast": ...} as floats).
    """
    if neutral.shape != expressed.shape or au.shape != (expressed.shape[0], NUM_AUS):
        raise ValueError(f"pairs need neutral and expressed of one shape and au [B, {NUM_AUS}], got "
                         f"{tuple(neutral.shape)}, {tuple(expressed.shape)}, {tuple(au.shape)}")
    b = au.shape[0]
    logits = au_net(torch.cat([neutral, expressed])).logits  # one batch: the same BatchNorm statistics
    ln, le = logits[:b], logits[b:]
    bce = au_bce_loss(le, au, pos_weight=pos_weight) + au_bce_loss(ln, torch.zeros_like(au), pos_weight=pos_weight)
    contrast = F.mse_loss(torch.sigmoid(le) - torch.sigmoid(ln), bce_optimum(au.to(le.dtype), pos_weight))
    return bce + contrast_weight * contrast, {"bce": float(bce.detach()), "contrast": float(contrast.detach())}


def augment_pairs(neutral: Tensor, expressed: Tensor, generator: torch.Generator,
                  augment: dict) -> tuple[Tensor, Tensor]:
    """:func:`~dcnn_flame.supervision.augment.augment_batch` with the same random draws for
    both images of each pair (same flip, crop and colour), so a pair still differs only in the face.
    Shapes: [B, 3, S, S] each -> the same."""
    state = generator.get_state()
    n = augment_batch(neutral, generator, **augment)
    generator.set_state(state)
    return n, augment_batch(expressed, generator, **augment)


def _images(x: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def pair_response(au_net, neutral: Tensor, expressed: Tensor) -> Tensor:
    """The detector's response to each pair, in its current mode: p(expressed) - p(neutral) for
    a single-image detector, D(expressed | neutral) - D(neutral | neutral) for a two-input one
    (:mod:`dcnn_flame.supervision.reference`). Shapes: [B, 3, S, S] each -> [B, 17]."""
    from dcnn_flame.supervision.reference import ReferenceAUDetector, reference_response

    if isinstance(au_net, ReferenceAUDetector):
        return reference_response(au_net, expressed, neutral)
    p = au_net(torch.cat([neutral, expressed])).probs
    return p[len(neutral):] - p[: len(neutral)]


@torch.no_grad()
def contrast_metrics(au_net, pairs: PairSet, batch_size: int = 64, pos_weight: Optional[Tensor] = None) -> dict:
    """Eval-mode response (:func:`pair_response`) against the AUs, on every pair.

    Returns: ``contrast_mae`` (mean |response - g(y)| over pairs and AUs, g = :func:`bce_optimum`
        of ``pos_weight``), ``contrast_mae_per_au``, ``response_per_au_at_half`` (least-squares
        slope through 0 of the response on y per AU, times 0.5; it includes the output's false
        response to the other AUs acting with it, so it reads higher than the AU alone: see
        ``au_check --single-au`` for that) and
        ``false_response`` (mean response of the AUs a pair does not change, per AU: what a
        ranking of the intended AUs has to beat; 0 for a perfect detector).
    """
    was = au_net.training
    au_net.eval()
    device = next(au_net.parameters()).device
    out = []
    try:
        for s in range(0, len(pairs), batch_size):
            n = _images(pairs.neutral[s:s + batch_size], device)
            e = _images(pairs.expressed[s:s + batch_size], device)
            out.append(pair_response(au_net, n, e).double().cpu().numpy())
    finally:
        au_net.train(was)
    if not out:
        nan = {c: math.nan for c in AU_COLUMNS}
        return {"contrast_mae": math.nan, "contrast_mae_per_au": nan, "response_per_au_at_half": dict(nan),
                "false_response": dict(nan)}
    resp = np.concatenate(out)
    y = pairs.au.astype(np.float64)
    target = bce_optimum(torch.from_numpy(y), None if pos_weight is None else pos_weight.double().cpu()).numpy()
    err = np.abs(resp - target)
    slope = (resp * y).sum(0) / np.maximum((y * y).sum(0), 1e-12)
    off = y == 0
    false = (resp * off).sum(0) / np.maximum(off.sum(0), 1)
    return {"contrast_mae": float(err.mean()),
            "contrast_mae_per_au": {c: float(v) for c, v in zip(AU_COLUMNS, err.mean(0))},
            "response_per_au_at_half": {c: float(v) for c, v in zip(AU_COLUMNS, 0.5 * slope)},
            "false_response": {c: float(v) for c, v in zip(AU_COLUMNS, false)}}


def fine_tune(au_net, train: PairSet, val: PairSet, *, epochs: int, lr: float, batch_size: int = 16,
              contrast_weight: float = 4.0, pos_weight: Optional[Tensor] = None, seed: int = 0,
              augment: Optional[dict] = None, log=print, on_best=None) -> tuple[int, list[dict]]:
    """:func:`train_on_pairs` with :func:`pair_loss` (the single-image detector's pair training)."""
    def loss_fn(net, n, e, au, pw):
        return pair_loss(net, n, e, au, pw, contrast_weight)

    return train_on_pairs(au_net, train, val, loss_fn, epochs=epochs, lr=lr, batch_size=batch_size,
                          pos_weight=pos_weight, seed=seed, augment=augment, log=log, tag="pairs", images_per_pair=2,
                          on_best=on_best)


def train_on_pairs(net, train: PairSet, val: PairSet, loss_fn, *, epochs: int, lr: float, batch_size: int = 16,
                   pos_weight: Optional[Tensor] = None, seed: int = 0, augment: Optional[dict] = None, log=print,
                   tag: str = "pairs", images_per_pair: int = 2,
                   on_best: Optional[Callable[[int, list[dict]], None]] = None) -> tuple[int, list[dict]]:
    """Adam on ``loss_fn`` with a cosine learning rate, best epoch by val ``contrast_mae``
    (:func:`contrast_metrics`; the last epoch when ``val`` is empty).

    Args:
        loss_fn: ``(net, neutral, expressed, au, pos_weight) -> (loss, {part: float})`` on one
            batch ([B, 3, S, S] images in [0, 1], au [B, 17]).
        augment: keyword arguments of :func:`~dcnn_flame.supervision.augment.augment_batch`
            applied identically to both images of a pair (same flip, crop and colour), or None.
        tag, images_per_pair: the log line's prefix and the images one pair costs (for img/s).
        on_best: called as ``on_best(epoch, history)`` after each epoch that is the best so far,
            while ``net`` holds that epoch's weights (e.g. to save them: a run cut short keeps its best).
    Returns (best epoch, per-epoch history); ``net`` ends with the best epoch's weights.
    """
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pw = None if pos_weight is None else pos_weight.to(device)
    best, best_epoch, best_state, history = math.inf, 0, copy.deepcopy(net.state_dict()), []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
        net.train()
        sums: dict[str, float] = {"loss": 0.0}
        order = rng.permutation(len(train))
        steps = 0
        for s in range(0, len(order), batch_size):
            idx = np.sort(order[s:s + batch_size])
            n, e = _images(train.neutral[idx], device), _images(train.expressed[idx], device)
            if augment is not None:
                n, e = augment_pairs(n, e, gen, augment)
            loss, parts = loss_fn(net, n, e, torch.from_numpy(train.au[idx]).to(device), pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["loss"] += float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        tr = {k: v / max(steps, 1) for k, v in sums.items()}
        val_m = contrast_metrics(net, val, pos_weight=pos_weight)
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train": tr, "val": val_m,
                        "seconds": seconds})
        if val_m["contrast_mae"] < best or (len(val) == 0 and epoch == epochs):  # no val pairs: the last epoch
            best, best_epoch, best_state = val_m["contrast_mae"], epoch, copy.deepcopy(net.state_dict())
            if on_best is not None:
                on_best(epoch, history)
        parts_text = ", ".join(f"{k} {v:.4f}" for k, v in tr.items() if k != "loss")
        log(f"[{tag}] epoch {epoch}/{epochs}  train loss {tr['loss']:.4f} ({parts_text}) | val contrast mae "
            f"{val_m['contrast_mae']:.4f}, AU17 / AU23 at 0.5 {val_m['response_per_au_at_half']['au17']:+.2f} / "
            f"{val_m['response_per_au_at_half']['au23']:+.2f}, "
            f"false {np.mean(list(val_m['false_response'].values())):+.3f} | "
            f"{images_per_pair * len(train) / max(seconds, 1e-9):.0f} img/s, {seconds:.1f} s")
    net.load_state_dict(best_state)
    return best_epoch, history


@torch.no_grad()
def trunk_features(au_net, images: np.ndarray, grid: int = 4, batch_size: int = 64) -> np.ndarray:
    """[N, S, S, 3] uint8 -> [N, C * grid^2] the detector's conv feature map averaged over a
    grid x grid layout of cells (eval mode): what the detector's layers before its head hold."""
    was = au_net.training
    au_net.eval()
    device = next(au_net.parameters()).device
    out = []
    try:
        for s in range(0, len(images), batch_size):
            fmap = au_net.trunk(au_net.adapter(_images(images[s:s + batch_size], device)))
            out.append(F.adaptive_avg_pool2d(fmap, grid).flatten(1).double().cpu().numpy())
    finally:
        au_net.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0))


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             lambdas: Sequence[float] = (10.0, 100.0, 1000.0, 10000.0)) -> tuple[float, np.ndarray]:
    """Ridge regression from standardised features, the lambda with the best mean val R^2.

    Shapes: x [N, D], y [N, K]. Returns (lambda, [K] val R^2 per output)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xv = (x_train - mu) / sd, (x_val - mu) / sd
    ym = y_train.mean(0)
    gram, rhs = xt.T @ xt, xt.T @ (y_train - ym)
    best: Optional[tuple[float, np.ndarray]] = None
    for lam in lambdas:
        w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), rhs)
        r2 = 1.0 - ((xv @ w + ym - y_val) ** 2).sum(0) / np.maximum(((y_val - y_val.mean(0)) ** 2).sum(0), 1e-12)
        if best is None or r2.mean() > best[1].mean():
            best = (float(lam), r2)
    assert best is not None
    return best


def feature_probe(au_net, train: PairSet, val: PairSet, grid: int = 4) -> dict:
    """How much of each AU a linear read-out of the detector's conv features finds, from the
    expressed image alone and from the change expressed minus neutral of the same face.

    A diagnostic of what the features hold (nothing is trained): an AU with a low R^2 from
    one image but a higher one from the change is seen only against the face's own neutral.
    Returns {"single": {...}, "difference": {...}}, each with ``lambda``, ``mean_r2`` and
    ``r2`` per AU column.
    """
    fe_t, fe_v = trunk_features(au_net, train.expressed, grid), trunk_features(au_net, val.expressed, grid)
    fn_t, fn_v = trunk_features(au_net, train.neutral, grid), trunk_features(au_net, val.neutral, grid)
    out = {}
    for name, xt, xv in (("single", fe_t, fe_v), ("difference", fe_t - fn_t, fe_v - fn_v)):
        lam, r2 = ridge_r2(xt, train.au.astype(np.float64), xv, val.au.astype(np.float64))
        out[name] = {"lambda": lam, "mean_r2": float(r2.mean()),
                     "r2": {c: float(v) for c, v in zip(AU_COLUMNS, r2)}}
    return out


def split_pairs(pairs: PairSet, val_fraction: float, seed: int) -> tuple[PairSet, PairSet]:
    """Split by identity (no face in both): a seeded permutation of the identities."""
    ids = np.unique(pairs.identity)
    n_val = max(1, int(round(val_fraction * len(ids)))) if val_fraction > 0 and len(ids) > 1 else 0
    val_ids = np.random.default_rng(seed).permutation(ids)[:n_val]
    is_val = np.isin(pairs.identity, val_ids)
    return pairs.take(np.flatnonzero(~is_val)), pairs.take(np.flatnonzero(is_val))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import os

    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.io.storage import atomic_write_bytes
    from dcnn_flame.supervision.bundle import load_teachers, teachers_to_bytes
    from dcnn_flame.supervision.train import metrics_uri_of

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True,
                   help="teachers file to start from (path or URI); with --reference also a two-input detector "
                        "file (training continues) or 'none' (an untrained detector of --input-size)")
    p.add_argument("--input-size", type=int, default=None,
                   help="train at this input size (pixels; the pairs are rendered at it): --init's weights are "
                        "carried over to it (e.g. 112 -> 224); default: --init's size, 224 for --init none")
    p.add_argument("--device", default="auto", help="where to train: auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--output", required=True, help="teachers file to write (path or URI); with --probe the probe JSON")
    p.add_argument("--identities", type=int, default=2000, help="synthetic identities (4 pairs each)")
    p.add_argument("--seed", type=int, default=11, help="world seed of the pairs (keep it off the check's 7)")
    p.add_argument("--intensity", type=float, nargs=2, default=(0.15, 1.0), metavar=("LOW", "HIGH"),
                   help="AU intensity range of the free views")
    p.add_argument("--max-yaw", type=float, default=30.0, help="head yaw range of the views, degrees (+-)")
    p.add_argument("--max-pitch", type=float, default=15.0, help="head pitch range of the views, degrees (+-)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step (2x images)")
    p.add_argument("--contrast-weight", type=float, default=4.0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--processes", type=int, default=2, help="processes rendering the pairs")
    p.add_argument("--cache", default=None, help=".npz of the rendered pairs: read if it exists, else written")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training")
    p.add_argument("--reference", action="store_true",
                   help="train a two-input detector (the face and its neutral; dcnn_flame.supervision.reference) "
                        "built on --init's AU detector, and write it to --output instead of a teachers file")
    p.add_argument("--probe", action="store_true",
                   help="train nothing: report a ridge read-out of --init's conv features per AU, from one "
                        "image and from the within-face change (val = --val-fraction of the identities)")
    a = p.parse_args(argv)
    if a.identities < 2 or a.epochs < 1 or a.batch_size < 1:
        p.error(f"--identities must be >= 2, --epochs and --batch-size >= 1; got {a.identities}, {a.epochs}, "
                f"{a.batch_size}")
    try:
        device = resolve_device(a.device)
    except RuntimeError as e:
        p.error(f"--device {a.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {a.device!r} but torch sees no CUDA device here; use --device cpu")
    torch.manual_seed(a.seed)  # the weights --init none draws, and dropout
    if a.probe and a.reference:
        p.error("--probe reads a single-image detector's features: drop --reference")
    if a.input_size is not None and a.input_size < 16:
        p.error(f"--input-size must be >= 16 pixels, got {a.input_size}")
    if a.init.lower() == "none":
        if not a.reference:
            p.error("--init none trains a two-input detector from scratch: add --reference (the single-image "
                    "pair fine-tuning and --probe need a trained detector to start from)")
        from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig

        au_net, expr_net, meta = AUDetector(AUDetectorConfig(input_size=a.input_size or 224)), None, {}
    elif a.reference:  # a teachers file (its single-image detector) or a two-input detector file
        from dcnn_flame.supervision.reference import load_au_detector

        try:
            au_net, meta = load_au_detector(a.init)
        except ValueError as e:
            p.error(f"--init: {e}")
        expr_net = None
    else:
        au_net, expr_net, meta = load_teachers(a.init)
    if a.input_size is not None and a.input_size != au_net.cfg.input_size:
        from dcnn_flame.supervision.reference import at_input_size

        print(f"[pairs] --init's detector was trained at {au_net.cfg.input_size} px; continuing at "
              f"{a.input_size} px", flush=True)
        au_net = at_input_size(au_net, a.input_size)
    if "pairs" in meta:  # keep the record of the runs before this one
        meta = {**meta, "earlier_pairs_runs": [*meta.get("earlier_pairs_runs", []), meta["pairs"]]}
    size = int(au_net.cfg.input_size)
    # the synthetic_au world (configs/source/synthetic_au.yaml) at the detector's input size
    cfg = SyntheticConfig(image_size=size, au_noise=0.2, free_au_fraction=0.9, max_yaw_deg=a.max_yaw,
                          max_pitch_deg=a.max_pitch,
                          jaw_noise_deg=0.25, expr_noise=0.1, store_vertices=False,
                          au_intensity=[float(a.intensity[0]), float(a.intensity[1])])
    t0 = time.perf_counter()
    cache_meta = {"seed": a.seed, "identities": a.identities,
                  **{f"synthetic.{k}": v for k, v in dataclasses.asdict(cfg).items()}}
    if a.cache and os.path.exists(a.cache):
        try:
            pairs = PairSet.load(a.cache, expect_meta=cache_meta)
        except ValueError as e:
            p.error(f"--cache: {e}")
        print(f"[pairs] {len(pairs)} pairs read from {a.cache}", flush=True)
    else:
        pairs = render_pairs_parallel(cfg, a.seed, a.identities, processes=a.processes)
        print(f"[pairs] rendered {len(pairs)} pairs of {a.identities} identities at {size} px in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if a.cache:
            pairs.save(a.cache, cache_meta)
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes
    au_net.to(device)
    train, val = split_pairs(pairs, a.val_fraction, a.seed)
    if a.probe:
        report = feature_probe(au_net, train, val)
        for name, r in report.items():
            print(f"[pairs] probe {name:10s} (lambda {r['lambda']:g}) mean R2 {r['mean_r2']:.3f} | "
                  + " ".join(f"{c[2:]}:{v:.2f}" for c, v in r["r2"].items()), flush=True)
        atomic_write_bytes(a.output, json.dumps({"init": a.init, "train_pairs": len(train), "val_pairs": len(val),
                                                 "probe": report}, indent=1).encode())
        return 0
    # from the expressed images, as for single-image training (most training images are expressed)
    pos_weight = au_pos_weight(torch.from_numpy(train.au))
    if a.reference:
        from dcnn_flame.supervision.reference import ReferenceAUDetector

        if not isinstance(au_net, ReferenceAUDetector):
            au_net = ReferenceAUDetector(au_net)  # starts as exactly --init's detector
        au_net.to(device)
    before = contrast_metrics(au_net, val, pos_weight=pos_weight)
    print(f"[pairs] {len(train)} train / {len(val)} val pairs; before: val contrast mae {before['contrast_mae']:.4f}, "
          f"AU17 / AU23 at 0.5 {before['response_per_au_at_half']['au17']:+.2f} / "
          f"{before['response_per_au_at_half']['au23']:+.2f}, false "
          f"{np.mean(list(before['false_response'].values())):+.3f}", flush=True)
    augment = dict(flip_prob=0.5, crop_scale_min=0.9, color_jitter=0.1)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}

    def write(best_epoch: int, history: list[dict], after: Optional[dict]) -> None:
        """The output file (weights now in ``au_net``) and its metrics JSON, atomically."""
        report = {"init": a.init, "pairs": len(pairs), "train_pairs": len(train), "val_pairs": len(val),
                  "best_epoch": best_epoch, "epochs_done": len(history), "val_before": before,
                  "val_after": after if after is not None else history[best_epoch - 1]["val"],
                  "history": history, "config": config, "seconds": time.perf_counter() - t0}
        new_meta = json.loads(json.dumps({**meta, "pairs": {k: v for k, v in report.items() if k != "history"}},
                                         default=str))
        if a.reference:
            from dcnn_flame.supervision.reference import reference_to_bytes

            atomic_write_bytes(a.output, reference_to_bytes(au_net, meta=new_meta))
        else:
            atomic_write_bytes(a.output, teachers_to_bytes(copy.deepcopy(au_net).cpu(), expr_net, meta=new_meta))
        atomic_write_bytes(metrics_uri_of(a.output), json.dumps(report, indent=1, default=str).encode())

    # the best epoch so far is on disk after every improvement (its metrics JSON says "epochs_done"):
    # a run cut short (a lease's time limit, a kill) keeps it
    def on_best(epoch: int, history: list[dict]) -> None:
        write(epoch, history, None)

    if a.reference:
        from dcnn_flame.supervision.reference import train_reference

        best_epoch, history = train_reference(au_net, train, val, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                                              pos_weight=pos_weight, seed=a.seed, augment=augment, on_best=on_best)
    else:
        best_epoch, history = fine_tune(au_net, train, val, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                                        contrast_weight=a.contrast_weight, pos_weight=pos_weight, seed=a.seed,
                                        augment=augment, on_best=on_best)
    after = contrast_metrics(au_net, val, pos_weight=pos_weight)
    au_net.eval()
    write(best_epoch, history, after)
    print(f"[pairs] best epoch {best_epoch}: val contrast mae {before['contrast_mae']:.4f} -> "
          f"{after['contrast_mae']:.4f} -> {a.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
