"""The batch job's PNG encoder: any reader decodes exactly the input; the chunks are well formed."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dcnn_flame.io import png
from dcnn_flame.io.png import encode_png


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Naive PNG chunk walk that checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        out.append((kind, body))
        pos += 12 + length
    return out


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (64, 48, 4), (9, 5), (9, 5, 1), (326, 812, 3)])
@pytest.mark.parametrize("level", [0, 1, 3, 9])
@pytest.mark.parametrize("compressor", ["isal", "zlib"])
def test_pil_decodes_exactly_the_input(shape, level, compressor):
    rng = np.random.default_rng(sum(shape) + level)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[: shape[0] // 2] = np.arange(shape[1], dtype=np.uint8)[None, :, None].reshape(
        (1, shape[1]) + ((1,) if len(shape) == 3 else ()))  # smooth rows too, where Sub differences are small
    data = encode_png(img, level=level, compressor=compressor)
    kinds = [k for k, _ in _chunks(data)]
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        got = np.asarray(im)
    np.testing.assert_array_equal(got, img.reshape(shape[:2]) if len(shape) == 2 or shape[2] == 1 else img)


def test_every_row_uses_the_sub_filter_and_smooth_images_compress():
    img = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (50, 1, 3))
    data = encode_png(img)
    raw = zlib.decompress(dict(_chunks(data))[b"IDAT"])
    rows = np.frombuffer(raw, np.uint8).reshape(50, 200 * 3 + 1)
    assert (rows[:, 0] == 1).all()
    assert len(data) < img.nbytes / 20


@pytest.mark.parametrize("img, level, match", [
    (np.zeros((4, 4, 3), np.float32), 1, "uint8"),
    (np.zeros((4, 4, 2), np.uint8), 1, r"C in \(1, 3, 4\)"),
    (np.zeros((0, 4, 3), np.uint8), 1, "non-empty"),
    (np.zeros((4, 4, 3), np.uint8), 10, "0-9"),
])
def test_bad_inputs_are_refused_with_a_reason(img, level, match):
    with pytest.raises(ValueError, match=match):
        encode_png(img, level=level)
    with pytest.raises(ValueError, match="compressor must be one of"):
        encode_png(np.zeros((4, 4, 3), np.uint8), compressor="gzip")


def test_auto_deflates_with_isal_when_installed_and_zlib_otherwise(monkeypatch):
    from isal import isal_zlib

    img = np.tile(np.arange(120, dtype=np.uint8)[None, :, None], (40, 1, 3))
    img[10:20] = 7
    idat = lambda data: dict(_chunks(data))[b"IDAT"]  # noqa: E731
    raw = zlib.decompress(idat(encode_png(img, compressor="zlib")))
    assert idat(encode_png(img, level=1)) == isal_zlib.compress(raw, 1)
    assert idat(encode_png(img, level=0)) == zlib.compress(raw, 0)  # store: always zlib
    assert idat(encode_png(img, level=6)) == zlib.compress(raw, 6)  # ISA-L has levels 0-3 only
    monkeypatch.setattr(png, "_isal_zlib", lambda: None)  # as without the isal package
    assert idat(encode_png(img, level=1)) == zlib.compress(raw, 1)
    with pytest.raises(ValueError, match="pip install isal"):
        encode_png(img, compressor="isal")
