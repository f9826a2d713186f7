"""Contact sheet: grid layout and landmark dots where the landmarks are."""
from __future__ import annotations

import numpy as np
import pytest

from dcnn_flame.data.contact_sheet import contact_sheet


def test_grid_and_dots():
    images = np.zeros((5, 20, 30, 3), dtype=np.uint8)
    images[:, :, :, 2] = 100
    lmk = np.full((5, 68, 2), np.nan)
    lmk[:, 0] = [10.5, 5.5]  # jaw point: yellow
    lmk[:, 60] = [20.5, 15.5]  # mouth point: magenta
    sheet = np.asarray(contact_sheet(images, lmk, cols=2, pad=2))
    assert sheet.shape == (3 * 22 + 2, 2 * 32 + 2, 3)
    for i in range(5):
        ox, oy = 2 + (i % 2) * 32, 2 + (i // 2) * 22
        np.testing.assert_array_equal(sheet[oy + 5, ox + 10], [255, 255, 0])
        np.testing.assert_array_equal(sheet[oy + 15, ox + 20], [255, 0, 160])
        np.testing.assert_array_equal(sheet[oy + 10, ox + 2], [0, 0, 100])  # untouched pixel
    # the 6th cell is empty background
    assert tuple(sheet[2 * 22 + 10, 32 + 10]) == (40, 40, 40)


def test_no_landmarks_and_bad_shapes():
    images = np.full((2, 8, 8, 3), 7, dtype=np.uint8)
    sheet = np.asarray(contact_sheet(images, None, cols=4, pad=0))
    assert sheet.shape == (8, 16, 3) and (sheet == 7).all()
    with pytest.raises(ValueError):
        contact_sheet(images[0], None)
    with pytest.raises(ValueError):
        contact_sheet(images, np.zeros((3, 68, 2)))
