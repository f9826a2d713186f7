"""Test faces with exact 68 landmarks, and a VGGFace2-shaped folder built from them.

``face_image`` draws a simple face (skin ellipse, eyes, brows, nose, lips) from a 68-point
iBUG layout placed with a random similarity (scale, roll, position) in a larger photo, so
every image comes with its exact landmarks, a loose box and the 5 VGGFace2 points.
(The procedural FLAME head + renderer can replace the drawing later; the callers only use
``face_image`` / ``write_vggface2_tree``.)
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def canonical_68() -> np.ndarray:
    """[68, 2] iBUG-ordered points of a frontal face in a unit frame (x right, y down,
    face width ~2, eyes at y=-0.3, chin at y=0.95)."""
    pts = []
    for k in range(17):  # jaw, image left -> chin -> image right
        phi = math.pi * k / 16
        pts.append((-0.95 * math.cos(phi), -0.1 + 1.05 * math.sin(phi)))
    for side in (-1, 1):  # brows 17-21 (image left), 22-26
        xs = np.linspace(-0.75, -0.15, 5) if side < 0 else np.linspace(0.15, 0.75, 5)
        for i, x in enumerate(xs):
            pts.append((x, -0.55 - 0.08 * math.sin(math.pi * i / 4)))
    for y in np.linspace(-0.35, 0.1, 4):  # nose bridge 27-30
        pts.append((0.0, y))
    for x, y in zip(np.linspace(-0.2, 0.2, 5), (0.2, 0.22, 0.24, 0.22, 0.2)):  # nostrils 31-35
        pts.append((x, y))
    for cx in (-0.4, 0.4):  # eyes 36-41, 42-47
        for a in (180, 120, 60, 0, -60, -120):
            r = math.radians(a)
            pts.append((cx + 0.18 * math.cos(r), -0.3 - 0.08 * math.sin(r)))
    for a in (180, 150, 120, 90, 60, 30, 0):  # outer lips 48-54 (upper)
        r = math.radians(a)
        pts.append((0.35 * math.cos(r), 0.5 - 0.10 * math.sin(r)))
    for a in (-30, -60, -90, -120, -150):  # 55-59 (lower)
        r = math.radians(a)
        pts.append((0.35 * math.cos(r), 0.5 - 0.14 * math.sin(r)))
    for a in (180, 135, 90, 45, 0, -45, -90, -135):  # inner lips 60-67
        r = math.radians(a)
        pts.append((0.25 * math.cos(r), 0.5 - 0.03 * math.sin(r)))
    out = np.array(pts, dtype=np.float64)
    assert out.shape == (68, 2)
    return out


def five_from_68(l68: np.ndarray) -> np.ndarray:
    """[5, 2] eye centres (image left, right), nose tip, mouth corners (image left, right)."""
    return np.stack([l68[36:42].mean(0), l68[42:48].mean(0), l68[30], l68[48], l68[54]])


def face_image(rng: np.random.Generator, width: int = 240, height: int = 260, scale: float | None = None,
               roll_deg: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A drawn face photo.

    Returns:
        image [H, W, 3] uint8, landmarks [68, 2] (pixels, centres at +0.5), loose box
        [4] x, y, w, h (integers, like VGGFace2).
    """
    s = scale if scale is not None else rng.uniform(0.22, 0.3) * min(width, height)
    roll = math.radians(roll_deg if roll_deg is not None else rng.uniform(-12, 12))
    c, si = math.cos(roll), math.sin(roll)
    rot = np.array([[c, -si], [si, c]])
    centre = np.array([width / 2 + rng.uniform(-0.08, 0.08) * width, height / 2 + rng.uniform(-0.06, 0.06) * height])
    place = lambda p: (np.asarray(p) @ rot.T) * s + centre  # noqa: E731
    l68 = place(canonical_68())

    bg = tuple(int(v) for v in rng.integers(20, 235, 3))
    skin = tuple(int(v) for v in (rng.integers(150, 240), rng.integers(110, 190), rng.integers(80, 160)))
    ss = 2  # draw at 2x and downsample: smooth edges
    im = Image.new("RGB", (width * ss, height * ss), bg)
    d = ImageDraw.Draw(im)
    to_px = lambda p: [tuple(float(v) * ss for v in q) for q in np.atleast_2d(p)]  # noqa: E731
    head = place(np.array([[1.05 * math.cos(t), -0.2 + 1.2 * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 64)]))
    d.polygon(to_px(head), fill=skin)
    hair = place(np.array([[1.08 * math.cos(t), -0.25 + 1.2 * math.sin(t)] for t in np.linspace(math.pi, 2 * math.pi, 32)]))
    d.polygon(to_px(np.vstack([hair, place([[0.9, -0.75], [-0.9, -0.75]])])), fill=(60, 40, 30))
    for eye in (l68[36:42], l68[42:48]):
        d.polygon(to_px(eye), fill=(250, 250, 250))
        ctr = eye.mean(0)
        r = 0.06 * s * ss
        d.ellipse([ctr[0] * ss - r, ctr[1] * ss - r, ctr[0] * ss + r, ctr[1] * ss + r], fill=(50, 40, 30))
    for brow in (l68[17:22], l68[22:27]):
        d.line(to_px(brow), fill=(70, 50, 40), width=max(2, int(0.06 * s * ss)))
    d.line(to_px(l68[27:31]), fill=(120, 80, 60), width=max(1, int(0.03 * s * ss)))
    d.line(to_px(l68[31:36]), fill=(120, 80, 60), width=max(1, int(0.03 * s * ss)))
    d.polygon(to_px(l68[48:60]), fill=(180, 50, 60))
    d.polygon(to_px(l68[60:68]), fill=(90, 20, 30))
    img = np.asarray(im.resize((width, height), Image.Resampling.BOX))
    # Landmark convention: continuous coords with pixel centres at +0.5 (drawing coords map 1:1).
    lo, hi = l68.min(0), l68.max(0)
    w, h = hi - lo
    box = np.array([lo[0] - 0.1 * w, lo[1] - 0.35 * h, 1.2 * w, 1.45 * h])
    return img, l68, np.round(box).astype(int)


def write_vggface2_tree(root: Path, images_per_identity: dict[str, dict[str, int]], seed: int = 0,
                        metadata: bool = True, size: tuple[int, int] = (240, 260)) -> dict[str, dict]:
    """Write ``root/<folder>/<identity>/<nnnn_01>.jpg`` and (optionally) the bb_landmark CSVs in
    the real VGGFace2 column layout.

    Args:
        images_per_identity: {"train": {"n000002": 5, ...}, "test": {...}}.

    Returns:
        {"<folder>/<identity>/<stem>": {"landmarks": [68, 2], "box": [4] xywh, "path": Path}}.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    root = Path(root)
    for folder, ids in images_per_identity.items():
        bb_rows, lm_rows = [], []
        for ident, count in sorted(ids.items()):
            os.makedirs(root / folder / ident, exist_ok=True)
            for k in range(count):
                stem = f"{k + 1:04d}_01"
                img, l68, box = face_image(rng, *size)
                path = root / folder / ident / f"{stem}.jpg"
                Image.fromarray(img).save(path, quality=95)
                name = f"{ident}/{stem}"
                truth[f"{folder}/{name}"] = {"landmarks": l68, "box": box, "path": path}
                bb_rows.append([name, *box.tolist()])
                lm_rows.append([name, *[round(float(v), 4) for v in five_from_68(l68).reshape(-1)]])
        if metadata:
            os.makedirs(root / "bb_landmark", exist_ok=True)
            with open(root / "bb_landmark" / f"loose_bb_{folder}.csv", "w", newline="") as f:
                f.write("NAME_ID,X,Y,W,H\n")  # the real files: bare header, quoted NAME_ID
                csv.writer(f, quoting=csv.QUOTE_NONNUMERIC).writerows(bb_rows)
            with open(root / "bb_landmark" / f"loose_landmark_{folder}.csv", "w", newline="") as f:
                f.write(",".join(["NAME_ID"] + [f"P{i}{a}" for i in range(1, 6) for a in ("X", "Y")]) + "\n")
                csv.writer(f, quoting=csv.QUOTE_NONNUMERIC).writerows(lm_rows)
    return truth
