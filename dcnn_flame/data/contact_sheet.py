"""A contact sheet: a PNG grid of images with their landmarks drawn, to check alignment by eye."""
from __future__ import annotations

from typing import Optional

import numpy as np


def contact_sheet(images: np.ndarray, landmarks: Optional[np.ndarray] = None, cols: int = 4,
                  labels: Optional[list[str]] = None, pad: int = 2, radius: float = 1.5):
    """Tile images into a grid and draw landmarks on them.

    Args:
        images: [N, H, W, 3] uint8.
        landmarks: [N, K, 2] pixel coordinates (x right, y down, pixel centres at +0.5)
            in each image's frame; NaN points are skipped. K = 68 draws the iBUG groups
            (jaw, brows, nose, eyes, mouth) in different colours; other K in one colour.
        cols: images per row.
        labels: optional short caption per image (drawn top-left).
        pad: pixels between tiles.
        radius: landmark dot radius.

    Returns:
        A PIL.Image (RGB) of size (cols * (W + pad) + pad, rows * (H + pad) + pad).
    """
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got {images.shape}")
    n, h, w, _ = images.shape
    if landmarks is not None:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.ndim != 3 or landmarks.shape[0] != n or landmarks.shape[2] != 2:
            raise ValueError(f"landmarks must be [N, K, 2] with N={n}, got {landmarks.shape}")
    cols = max(1, min(int(cols), max(n, 1)))
    rows = max(1, -(-n // cols))
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        ox, oy = pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)
        sheet.paste(Image.fromarray(images[i].astype(np.uint8)), (ox, oy))
        if landmarks is not None:
            pts = landmarks[i]
            for k, (x, y) in enumerate(pts):
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                colour = _colour(k, len(pts))
                cx, cy = ox + x, oy + y
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        if labels is not None and i < len(labels) and labels[i]:
            draw.text((ox + 3, oy + 2), str(labels[i])[:40], fill=(255, 255, 0))
    return sheet


def _colour(k: int, count: int) -> tuple[int, int, int]:
    if count != 68:
        return (0, 255, 0)
    if k < 17:
        return (255, 255, 0)  # jaw
    if k < 27:
        return (255, 128, 0)  # brows
    if k < 36:
        return (0, 200, 255)  # nose
    if k < 48:
        return (0, 255, 0)  # eyes
    return (255, 0, 160)  # mouth
