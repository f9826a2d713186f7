"""Golden image of the procedural head: the neutral head, frontal and turned, fixed camera/light/albedo.

The golden PNG (64 x 128, two views side by side) lives in tests/render/golden/. When the head,
its albedo or the renderer change on purpose, regenerate it and look at it::

    DCNN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/render/test_golden_head.py
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "procedural_head_neutral.png"
SIZE = 64
#: Orthographic camera (scale, tx, ty): the whole head, ~0.29 m visible, centred on the face.
CAMERA = (7.0, 0.0, 0.025)
#: Head yaw of the two views (degrees).
YAWS = (0.0, 35.0)
MEAN_TOL = 1.0 / 255.0
MAX_TOL = 0.5  # a few silhouette pixels may flip between platforms
OUTLIER_TOL = 8.0 / 255.0
OUTLIER_FRACTION = 0.01


def render_neutral_head(yaws=YAWS) -> np.ndarray:
    """[SIZE, SIZE * len(yaws), 3] uint8: the neutral procedural head (seed 0), mean albedo,
    ambient 0.5 + one light from the upper left-front, grey background."""
    from dcnn_flame.data.synthetic import procedural_head, sh_from_lights
    from dcnn_flame.flame.layer import FlameLayer
    from dcnn_flame.render import Renderer, RendererConfig

    data = procedural_head(0)
    layer = FlameLayer(data, n_shape=1, n_expr=17)
    n = len(yaws)
    pose = torch.zeros(n, 15)
    pose[:, 1] = torch.tensor([math.radians(y) for y in yaws])
    out = layer(pose=pose)
    renderer = Renderer(torch.as_tensor(data.faces), torch.as_tensor(data.uv_coords, dtype=torch.float32),
                        torch.as_tensor(data.uv_faces), RendererConfig(image_size=SIZE))
    albedo = torch.from_numpy(np.ascontiguousarray(data.extras["albedo_mean"].transpose(2, 0, 1))).float()[None]
    sh = torch.from_numpy(sh_from_lights(np.full(3, 0.5), np.full(3, 0.6), np.array([-0.4, 0.5, 0.77]))).float()
    with torch.no_grad():
        img = renderer(out.vertices, torch.tensor([CAMERA] * n), albedo, sh.expand(n, 9, 3),
                       background=torch.full((n, 3, SIZE, SIZE), 0.3)).image
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.concatenate(list(img), axis=1)


def _compare(img: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    diff = np.abs(img.astype(np.float64) - ref.astype(np.float64)) / 255.0
    return float(diff.mean()), float(diff.max()), float((diff.max(axis=-1) > OUTLIER_TOL).mean())


@pytest.fixture(scope="module")
def rendered() -> np.ndarray:
    return render_neutral_head()


def test_procedural_head_matches_the_golden_image(rendered):
    from PIL import Image

    if os.environ.get("DCNN_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rendered).save(GOLDEN, optimize=True)
        pytest.skip(f"DCNN_UPDATE_GOLDEN=1: rewrote {GOLDEN} ({GOLDEN.stat().st_size} bytes); look at it")
    if not GOLDEN.exists():
        pytest.fail(f"golden image {GOLDEN} is missing; create it with DCNN_UPDATE_GOLDEN=1 and look at it")
    with Image.open(GOLDEN) as im:
        ref = np.asarray(im.convert("RGB"))
    assert ref.shape == rendered.shape, f"golden is {ref.shape}, render is {rendered.shape}"
    mean, worst, outliers = _compare(rendered, ref)
    assert mean < MEAN_TOL and worst < MAX_TOL and outliers < OUTLIER_FRACTION, (
        f"render differs from {GOLDEN.name}: mean |diff| {mean * 255:.2f}/255, max {worst * 255:.0f}/255, "
        f"{outliers:.2%} pixels beyond {OUTLIER_TOL * 255:.0f}/255. If the head or renderer changed on "
        f"purpose, rerun with DCNN_UPDATE_GOLDEN=1 and look at the new image.")


def test_the_golden_tolerance_catches_a_small_change(rendered):
    # A 3 degree turn of the head must already fail the comparison: the tolerance is not vacuous.
    turned = render_neutral_head(tuple(y + 3.0 for y in YAWS))
    mean, worst, outliers = _compare(turned, rendered)
    assert not (mean < MEAN_TOL and worst < MAX_TOL and outliers < OUTLIER_FRACTION), (mean, worst, outliers)


def test_the_golden_render_shows_a_head_on_the_background(rendered):
    frontal = rendered[:, :SIZE].astype(np.float64) / 255.0
    background = np.all(np.abs(frontal - 0.3) < 1.5 / 255, axis=-1)
    assert 0.25 < 1.0 - background.mean() < 0.8  # the head covers a sensible part of the frame
    # Left-right symmetry of the frontal neutral head, except for the light from the left.
    mask = ~background
    assert (mask == mask[:, ::-1]).mean() > 0.97
