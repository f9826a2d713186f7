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


class SheetTemplate:
    """A labelled contact sheet of a fixed layout, composed many times (the batch job's previews).

    :func:`contact_sheet` draws every caption again for every sheet; the batch job writes one
    sheet per character with the same captions (the expression names), and drawing them was a
    third of the sheet's cost. This class draws the empty sheet and the captions' coverage once;
    :meth:`compose` copies the tiles in and blends the caption colour over them with PIL's own
    integer rounding, so its pixels equal :func:`contact_sheet`'s (tested).

    Args:
        n, h, w: tiles per sheet and their size.
        cols, labels, pad: as :func:`contact_sheet` (no landmarks).
    """

    def __init__(self, n: int, h: int, w: int, cols: int = 4, labels: Optional[list[str]] = None, pad: int = 2):
        from PIL import Image, ImageDraw

        self.n, self.h, self.w, self.pad = int(n), int(h), int(w), int(pad)
        self.cols = max(1, min(int(cols), max(self.n, 1)))
        rows = max(1, -(-self.n // self.cols))
        size = (self.cols * (self.w + self.pad) + self.pad, rows * (self.h + self.pad) + self.pad)
        self.base = np.full((size[1], size[0], 3), 40, dtype=np.uint8)
        # Caption coverage: text drawn with ink 255 on black gives PIL's blend weight per pixel.
        # contact_sheet pastes tile i, then draws caption i, so a caption running past its tile
        # is hidden by every later tile: those pixels are dropped here.
        self.captions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ys, xs, alpha [P, 1])
        for i in range(self.n):
            if labels is None or i >= len(labels) or not labels[i]:
                continue
            mask = Image.new("L", size, 0)
            ox, oy = self.origin(i)
            ImageDraw.Draw(mask).text((ox + 3, oy + 2), str(labels[i])[:40], fill=255)
            alpha = np.asarray(mask, dtype=np.uint32).copy()
            for j in range(i + 1, self.n):
                jx, jy = self.origin(j)
                alpha[jy:jy + self.h, jx:jx + self.w] = 0
            ys, xs = np.nonzero(alpha)
            self.captions.append((ys, xs, alpha[ys, xs][:, None]))
        self.ink = np.array([255, 255, 0], dtype=np.uint32)

    def origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel (x, y) of tile ``i``."""
        return self.pad + (i % self.cols) * (self.w + self.pad), self.pad + (i // self.cols) * (self.h + self.pad)

    def compose(self, images: np.ndarray) -> np.ndarray:
        """[n, h, w, 3] uint8 tiles -> the sheet [H, W, 3] uint8."""
        images = np.asarray(images)
        if images.shape != (self.n, self.h, self.w, 3):
            raise ValueError(f"this sheet takes [{self.n}, {self.h}, {self.w}, 3] tiles, got {images.shape}")
        out = self.base.copy()
        for i in range(self.n):
            ox, oy = self.origin(i)
            out[oy:oy + self.h, ox:ox + self.w] = images[i]
        for ys, xs, alpha in self.captions:  # in drawing order: overlapping captions blend in turn
            under = out[ys, xs].astype(np.uint32)
            v = under * (255 - alpha) + self.ink * alpha + 128  # PIL's BLEND with its DIV255 rounding
            out[ys, xs] = ((v + (v >> 8)) >> 8).astype(np.uint8)
        return out
