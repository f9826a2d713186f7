"""Does the AU detector see the expressions the batch job retargets?

For each expression of a bank, the retargeted mesh of a synthetic character is rendered
frontally (framed like the synthetic world's training images) next to the same character's
neutral mesh, and the AU detector's response (expression minus neutral) must rank the
expression's intended AUs (its non-zero profile entries) highest.

This is the check of the batch-generation issue; it is only as good as the detector. By
default it uses the shipped two-input detector (:data:`SHIPPED_DETECTOR`, trained from
scratch on within-face pairs, docs/generation.md); ``--teachers`` takes any other (a teachers
file of ``jobs/train_supervision.py`` or a two-input detector file).

    python -m dcnn_flame.generation.au_check [--teachers detector.pt] [--identities 3] [--json out.json]
        [--single-au 0.5] [--flip] [--yaw 0,-20,20]

Two verdicts: per character and expression (``exact``: the detector's top set is the intended
one on that character), and per expression on the response averaged over the characters
(``mean_exact``).

``--single-au`` also renders every AU alone and reports, per AU, the detector's own response
and rank, the AUs it is confused with and how far the AU moves the face in pixels: which AUs
the detector can see at its input size at all.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from dcnn_flame.constants import AU_IDS, NUM_AUS
from dcnn_flame.generation.emotions import ExpressionBank

#: The two-input AU detector shipped with the package (112 px, float16 weights; how it was
#: trained and what it measures: docs/generation.md, "The shipped detector").
SHIPPED_DETECTOR = Path(__file__).resolve().parent / "assets" / "au_reference_112.pt"


@dataclass
class AURank:
    """One expression of one character.

    Attributes:
        character: index of the synthetic character.
        expression: bank name.
        intended: AU numbers with a non-zero profile entry (e.g. [6, 12] for happy).
        top: the detector's len(intended) highest-responding AU numbers, highest first.
        hits: how many of ``intended`` are in ``top``.
        exact: ``top`` is exactly the intended set.
        response: [17] detector response, expression minus neutral, in AU_IDS order.
    """

    character: int
    expression: str
    intended: list[int]
    top: list[int]
    hits: int
    exact: bool
    response: list[float]


def rank_intended_aus(response: np.ndarray, bank: ExpressionBank, character: int = 0) -> list[AURank]:
    """Compare the detector's responses with the bank's profiles.

    Args:
        response: [K, 17] detector activation of each expression minus that of the neutral
            face, rows in ``bank.names`` order.
        bank: the expression bank (profiles [K, 17]).
        character: index stored in the results.
    Returns: one :class:`AURank` per expression with at least one intended AU (a neutral
        profile has nothing to rank and is left out).
    """
    response = np.asarray(response, dtype=np.float64)
    profiles = bank.matrix()
    if response.shape != profiles.shape:
        raise ValueError(f"response must be [K, {NUM_AUS}] = {profiles.shape} (one row per bank expression), "
                         f"got {response.shape}")
    out = []
    for k, name in enumerate(bank.names):
        intended = np.flatnonzero(profiles[k] > 0)
        if intended.size == 0:
            continue
        # stable sort: ties keep AU order, so the result is deterministic
        order = np.argsort(-response[k], kind="stable")[: intended.size]
        hits = len(set(order.tolist()) & set(intended.tolist()))
        out.append(AURank(character=character, expression=name, intended=[AU_IDS[i] for i in intended],
                          top=[AU_IDS[i] for i in order], hits=hits, exact=hits == intended.size,
                          response=[float(x) for x in response[k]]))
    return out


def _frontal_camera(retargeter, shape: Tensor, fill: float) -> Tensor:
    """[3] orthographic camera (scale, tx, ty) framing the neutral face's landmark box to ``fill``."""
    neutral_lmk = retargeter.flame(shape=shape[None]).landmarks[0, :, :2]
    lo, hi = neutral_lmk.amin(0), neutral_lmk.amax(0)
    scale = 2.0 * fill / float((hi - lo).max())
    return torch.cat([torch.full((1,), scale), -0.5 * (lo + hi)])


def _character_shape(params, n_shape: int) -> Tensor:
    """[n_shape] identity of a sampled synthetic character (zero-padded or cut to n_shape)."""
    shape = torch.zeros(n_shape)
    k = min(n_shape, params.shape.shape[0])
    shape[:k] = torch.from_numpy(params.shape[:k]).float()
    return shape


def turn_head(vertices: Tensor, center: Tensor, yaw_deg: float) -> Tensor:
    """Rotate vertices about the vertical (y) axis through ``center`` by ``yaw_deg`` degrees.

    Positive yaw turns the face (which looks along +z) towards +x, the image's right.
    Shapes: vertices [..., V, 3], center [3] -> [..., V, 3].
    """
    a = math.radians(float(yaw_deg))
    rot = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]],
                       dtype=vertices.dtype, device=vertices.device)
    return (vertices - center) @ rot.T + center


def render_bank(world, character: int, bank: ExpressionBank, retargeter, seed: int = 0,
                fill: float = 0.72, yaw_deg: float = 0.0) -> Tensor:
    """Renders of a synthetic character's neutral face and its bank expressions (frontal by default).

    The meshes come from the batch job's :class:`~dcnn_flame.generation.retarget.Retargeter`
    (the character's shape, the bank's AUs through the AU map); framing, albedo, light and
    background follow the synthetic world (the landmark box of the neutral face fills
    ``fill`` of the image; the same camera for every expression, so only the face moves).
    ``yaw_deg`` turns every mesh by that angle about the vertical axis through the neutral
    face's centroid (:func:`turn_head`; same camera): motions along the view axis, like the
    chin boss of AU17, show in the silhouette of a turned face and only as shading in a
    frontal one.

    Args:
        world: a :class:`~dcnn_flame.data.synthetic.SyntheticWorld` (its head model must be the
            retargeter's).
        character: identity index in the world ``seed``.
        bank: expressions to render.
        retargeter: built on the world's head with its AU map.
    Returns: [K + 1, 3, S, S] images in [0, 1], row 0 the neutral face (S = world image size).
    """
    params = world.sample(seed, character)
    shape = _character_shape(params, retargeter.n_shape)
    with torch.no_grad():
        out = retargeter.retarget_bank(shape, torch.from_numpy(bank.matrix()).float())
        verts = torch.cat([out.neutral[None], out.vertices])  # [K + 1, V, 3]
        if yaw_deg:
            verts = turn_head(verts, out.neutral.mean(0), yaw_deg)
        n = verts.shape[0]
        camera = _frontal_camera(retargeter, shape, fill)[None].expand(n, 3)
        sh = torch.from_numpy(params.light[:1].reshape(1, -1)).float().expand(n, -1)
        bg = torch.from_numpy(params.background[:1]).permute(0, 3, 1, 2).float().expand(n, -1, -1, -1)
        image = world.renderer(verts, camera, world.albedo_map(torch.from_numpy(params.albedo)), sh,
                               background=bg.contiguous()).image
    return image.clamp(0.0, 1.0)


def image_motion_px(world, character: int, bank: ExpressionBank, retargeter, seed: int = 0,
                    fill: float = 0.72) -> np.ndarray:
    """How far each bank expression moves the face in the image of :func:`render_bank`.

    Returns: [K] the largest in-plane (image x, y) displacement of a vertex from the neutral
        mesh, in pixels of the world's image size. Motions well under a pixel are hard for any
        image-based detector at that size (raise the size rather than blame the retargeting).
    """
    shape = _character_shape(world.sample(seed, character), retargeter.n_shape)
    with torch.no_grad():
        out = retargeter.retarget_bank(shape, torch.from_numpy(bank.matrix()).float())
        scale = float(_frontal_camera(retargeter, shape, fill)[0])
        d = (out.vertices - out.neutral[None])[..., :2].norm(dim=-1)  # [K, V], model units
    # orthographic camera: x_ndc = scale * (x + t), NDC [-1, 1] spans S pixels
    return (d.amax(dim=1) * scale * world.cfg.image_size / 2.0).double().numpy()


def detector_response(au_net, images: Tensor, flip: bool = False) -> np.ndarray:
    """[K + 1, 3, S, S] (row 0 neutral) -> [K, 17] activation minus the neutral's (eval mode).

    ``flip``: average the activations of each image and its mirror image (left-right) first.
    The bank's AUs are bilateral, so a mirrored face shows the same AUs; averaging the two
    halves the detector's left/right-specific noise (standard test-time augmentation).
    A two-input detector (:class:`~dcnn_flame.supervision.reference.ReferenceAUDetector`) sees
    row 0 as the reference: D(expression | neutral) - D(neutral | neutral).
    """
    from dcnn_flame.supervision.reference import ReferenceAUDetector, reference_response

    was_training = au_net.training
    au_net.eval()
    try:
        with torch.no_grad():
            if isinstance(au_net, ReferenceAUDetector):  # D(expression | neutral) - D(neutral | neutral)
                resp = reference_response(au_net, images[1:], images[0]).double().cpu().numpy()
                if flip:
                    m = images.flip(-1)
                    resp = 0.5 * (resp + reference_response(au_net, m[1:], m[0]).double().cpu().numpy())
                return resp
            probs = au_net(images).probs.double().cpu().numpy()
            if flip:
                probs = 0.5 * (probs + au_net(images.flip(-1)).probs.double().cpu().numpy())
    finally:
        au_net.train(was_training)
    return probs[1:] - probs[:1]


def check_detector(au_net, world, bank: ExpressionBank, retargeter, characters: Sequence[int],
                   seed: int = 0, flip: bool = False, yaws: Sequence[float] = (0.0,)) -> list[AURank]:
    """:func:`rank_intended_aus` for each character (see :func:`render_bank`); the response is
    the mean over the views turned by ``yaws`` degrees (default: frontal only)."""
    if not len(yaws):
        raise ValueError("yaws needs at least one view angle (0 = frontal)")
    results: list[AURank] = []
    for c in characters:
        response = np.mean([detector_response(au_net, render_bank(world, c, bank, retargeter, seed, yaw_deg=y),
                                              flip=flip) for y in yaws], axis=0)
        results += rank_intended_aus(response, bank, character=int(c))
    return results


def summarize(results: Sequence[AURank]) -> dict:
    """Exact top sets, intended-AU recall, per expression.

    Per expression also the verdict on the mean response over the characters: ``mean_top``
    (the detector's len(intended) highest mean responses, highest first) and ``mean_exact``
    (that set is the intended one); ``mean_margin``, the weakest intended AU's mean response
    minus the strongest other AU's (> 0 when the verdict holds, and by how much);
    ``expressions_exact_on_mean`` counts those expressions.
    The per-character ``exact`` is the stricter test: one character's noise fails it.
    """
    per: dict[str, list[AURank]] = {}
    for r in results:
        per.setdefault(r.expression, []).append(r)
    per_expression = {}
    for k, v in per.items():
        mean = np.mean([r.response for r in v], axis=0)
        intended = v[0].intended
        top = [AU_IDS[i] for i in np.argsort(-mean, kind="stable")[: len(intended)]]
        is_intended = np.isin(np.asarray(AU_IDS), intended)
        margin = (float(mean[is_intended].min() - mean[~is_intended].max()) if not is_intended.all()
                  else math.inf)  # every AU intended: nothing to beat
        per_expression[k] = {"exact": sum(r.exact for r in v), "cases": len(v),
                             "recall": sum(r.hits for r in v) / sum(len(r.intended) for r in v),
                             "mean_top": top, "mean_exact": set(top) == set(intended), "mean_margin": margin}
    return {
        "exact": sum(r.exact for r in results), "cases": len(results),
        "recall": (sum(r.hits for r in results) / max(sum(len(r.intended) for r in results), 1)),
        "expressions_exact_on_mean": sum(e["mean_exact"] for e in per_expression.values()),
        "expressions": len(per_expression),
        "per_expression": per_expression,
    }


def single_au_bank(intensity: float = 0.5) -> ExpressionBank:
    """One expression per AU (named ``au1`` ... ``au45``), that AU alone at ``intensity``."""
    if not 0.0 < intensity <= 1.0:
        raise ValueError(f"single-AU intensity must be in (0, 1], got {intensity}")
    return ExpressionBank({f"au{a}": (np.eye(NUM_AUS)[i] * intensity).tolist() for i, a in enumerate(AU_IDS)})


def au_isolation(response: np.ndarray, motion_px: Optional[np.ndarray] = None, confusions: int = 3) -> list[dict]:
    """What the detector answers when exactly one AU is rendered (see :func:`single_au_bank`).

    Args:
        response: [17, 17] detector response (expression minus neutral), row i = AU_IDS[i]
            rendered alone, columns in AU_IDS order (e.g. averaged over characters).
        motion_px: optional [17] image motion of each single-AU render (:func:`image_motion_px`).
        confusions: how many of the strongest other AUs to list.
    Returns: one dict per AU: ``au``, ``self`` (its own response), ``rank`` (1 = its own output
        rises most), ``confused_with`` ([[au, response], ...] strongest other outputs, highest
        first) and ``motion_px`` when given.
    """
    response = np.asarray(response, dtype=np.float64)
    if response.shape != (NUM_AUS, NUM_AUS):
        raise ValueError(f"response must be [{NUM_AUS}, {NUM_AUS}] (one row per rendered AU), got {response.shape}")
    rows = []
    for i, a in enumerate(AU_IDS):
        order = np.argsort(-response[i], kind="stable")
        row = {"au": int(a), "self": float(response[i, i]), "rank": int(np.flatnonzero(order == i)[0]) + 1,
               "confused_with": [[int(AU_IDS[j]), float(response[i, j])] for j in order if j != i][:confusions]}
        if motion_px is not None:
            row["motion_px"] = float(motion_px[i])
        rows.append(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.data.synthetic import world_for
    from dcnn_flame.generation import emotions
    from dcnn_flame.generation.retarget import Retargeter, load_au_map
    from dcnn_flame.supervision.reference import load_au_detector

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", default=None,
                   help="teachers file of jobs/train_supervision.py, or a two-input detector of `python -m "
                        "dcnn_flame.supervision.pairs --reference` (path or URI); default: the shipped two-input "
                        f"detector ({SHIPPED_DETECTOR.relative_to(SHIPPED_DETECTOR.parents[2])})")
    p.add_argument("--identities", type=int, default=3, help="synthetic characters to check")
    p.add_argument("--seed", type=int, default=7, help="synthetic world seed of the characters")
    p.add_argument("--bank", default=None, help="expression bank YAML (default: the built-in bank)")
    p.add_argument("--json", default=None, help="also write every result and the summary here")
    p.add_argument("--yaw", default="0", help="comma-separated head turns in degrees, e.g. 0,-20,20 (or "
                   "--yaw=-20,20): the detector's response is averaged over these views (default: frontal only)")
    p.add_argument("--flip", action="store_true",
                   help="average the detector over each render and its mirror image (test-time augmentation)")
    p.add_argument("--single-au", type=float, default=None, metavar="INTENSITY",
                   help="also render each AU alone at this intensity and report what the detector answers "
                        "(its own rank, the AUs it is confused with, the motion in pixels)")
    a = p.parse_args(argv)
    if a.single_au is not None and not 0.0 < a.single_au <= 1.0:
        p.error(f"--single-au must be an AU intensity in (0, 1], got {a.single_au}")
    try:
        yaws = [float(v) for v in a.yaw.split(",") if v.strip()]
    except ValueError:
        yaws = []
    if not yaws or any(not -90.0 < v < 90.0 for v in yaws):
        p.error(f"--yaw must be comma-separated angles in (-90, 90) degrees, e.g. 0,-20,20; got {a.yaw!r}")
    if a.teachers is None:
        a.teachers = str(SHIPPED_DETECTOR)
        if not SHIPPED_DETECTOR.exists():
            p.error(f"the shipped detector {SHIPPED_DETECTOR} is missing (an install without package data?); "
                    "reinstall the package or pass --teachers")
    au_net, _ = load_au_detector(a.teachers)
    size = int(getattr(au_net.cfg, "input_size", 112))
    world = world_for(SyntheticConfig(image_size=size))
    bank = emotions.load_bank(a.bank) if a.bank else emotions.default_bank()
    head = world.data
    retargeter = Retargeter(head, n_shape=world.cfg.n_shape, n_expr=world.cfg.n_expr, au_map=load_au_map(head))
    results = check_detector(au_net, world, bank, retargeter, range(a.identities), seed=a.seed, flip=a.flip,
                             yaws=yaws)
    summary = summarize(results)
    for r in results:
        print(f"character {r.character} {r.expression:16s} intended {r.intended} detector top {r.top} "
              f"({r.hits}/{len(r.intended)})")
    for name, e in summary["per_expression"].items():
        print(f"expression {name:16s} exact on {e['exact']}/{e['cases']} characters; mean response top "
              f"{e['mean_top']} ({'exact' if e['mean_exact'] else 'MISS'}, margin {e['mean_margin']:+.3f})")
    print(f"[au_check] exact top sets {summary['exact']}/{summary['cases']}, intended-AU recall "
          f"{summary['recall']:.2f}; expressions exact on the mean response "
          f"{summary['expressions_exact_on_mean']}/{summary['expressions']} ({a.teachers}"
          f"{', flip' if a.flip else ''}{', yaw ' + a.yaw if yaws != [0.0] else ''})")
    report = {"summary": summary, "views": {"yaw_deg": yaws, "flip": a.flip},
              "results": [asdict(r) for r in results]}
    if a.single_au is not None:
        single = single_au_bank(a.single_au)
        chars = range(a.identities)
        resp = np.mean([detector_response(au_net, render_bank(world, c, single, retargeter, a.seed), flip=a.flip)
                        for c in chars], 0)
        motion = np.mean([image_motion_px(world, c, single, retargeter, a.seed) for c in chars], 0)
        report["isolation"] = {"intensity": a.single_au, "aus": au_isolation(resp, motion)}
        for r in report["isolation"]["aus"]:
            others = ", ".join(f"AU{u} {v:+.2f}" for u, v in r["confused_with"])
            print(f"AU{r['au']:<3} alone at {a.single_au:g}: moves {r['motion_px']:.2f} px, own response "
                  f"{r['self']:+.2f} (rank {r['rank']}), next {others}")
        seen = sum(r["rank"] == 1 for r in report["isolation"]["aus"])
        print(f"[au_check] single AUs ranked first by the detector: {seen}/{NUM_AUS}")
    if a.json:
        from dcnn_flame.io.storage import atomic_write_bytes

        atomic_write_bytes(a.json, json.dumps(report, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
