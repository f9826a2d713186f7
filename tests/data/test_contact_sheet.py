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


@pytest.mark.parametrize("n, cols, labels", [
    (10, 5, ["reconstruction", "anger", "surprise", "confusion", "sadness", "joy", "irritation", "excitement",
             "dissatisfaction", "worry"]),
    (4, 3, ["a", "", "a much longer caption that is cut at forty characters ....", "x"]),
    (3, 4, None),
    (5, 2, ["only one"]),
])
def test_sheet_template_equals_contact_sheet(n, cols, labels):
    """The batch job's cached-caption sheet has contact_sheet's pixels exactly (captions blended
    over random tiles with PIL's rounding)."""
    from dcnn_flame.data.contact_sheet import SheetTemplate

    rng = np.random.default_rng(n)
    tiles = rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)
    template = SheetTemplate(n, 40, 56, cols=cols, labels=labels)
    for _ in range(2):  # composing twice leaves the template unchanged
        np.testing.assert_array_equal(template.compose(tiles), np.asarray(contact_sheet(tiles, cols=cols,
                                                                                        labels=labels)))
        tiles = rng.integers(0, 256, tiles.shape, dtype=np.uint8)
    if labels and any(labels):
        assert sum(len(c[0]) for c in template.captions) > 0  # the captions do cover pixels
    with pytest.raises(ValueError, match=r"takes \[%d, 40, 56, 3\] tiles" % n):
        template.compose(tiles[:, :20])
