"""Robust decoding: every bad input becomes the right DecodeError, odd formats the right RGB."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dcnn_flame.data.images import DecodeError, decode_image, encode_image


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pattern(h: int = 64, w: int = 96) -> np.ndarray:
    """Smooth RGB gradient with a red block top-left (orientation marker)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)
    img[: h // 4, : w // 4] = (255, 0, 0)
    return img


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(DecodeError) as e:
        decode_image(data, **kw)
    return e.value.reason


def test_empty_and_not_an_image():
    assert _reason(b"") == "empty"
    assert _reason(b"<html><body>404 not found</body></html>\n" * 3) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)), fmt)
    assert decode_image(data).shape == (128, 128, 3)
    for cut in (len(data) // 2, 300, 60):  # in the pixel data and inside the headers
        assert _reason(data[:cut]) == "truncated", cut


def test_size_limits():
    tiny = _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    assert _reason(tiny) == "too_small"
    assert decode_image(tiny, min_size=1).shape == (1, 1, 3)
    big = _save(Image.new("RGB", (300, 300)), "PNG")
    assert _reason(big, max_pixels=300 * 300 - 1) == "too_large"
    assert decode_image(big, max_pixels=300 * 300).shape == (300, 300, 3)
    assert _reason(big, max_bytes=len(big) - 1) == "too_large"


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels (a decompression bomb's header) with no pixel data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_rejected_from_header():
    # Beyond PIL's own (2 x MAX_IMAGE_PIXELS) limit and beyond ours: both map to too_large.
    assert _reason(_png_header_only(100_000, 100_000)) == "too_large"
    assert _reason(_png_header_only(20_000, 20_000), max_pixels=10_000_000) == "too_large"


def test_16bit_png_scaled_to_8bit():
    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    data = _save(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    ref = np.empty((64, 64), dtype=np.uint8)
    for i in range(64):
        for j in range(64):
            ref[i, j] = int(np.clip(round(int(ramp[i, j]) / 257.0), 0, 255))
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[..., 0], ref)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("value", [200, 255, 256, 300, 40000])
def test_a_dark_16bit_png_stays_dark(value):
    """16 bits are 0..65535 whatever the image holds: a 16-bit value of 200 (nearly black) is
    not taken for the 8-bit 200, and nothing jumps when the image's maximum crosses 255."""
    a = np.zeros((40, 40), dtype=np.uint16)
    a[:, 20:] = value
    data = _save(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert (out[:, :20] == 0).all()
    assert (out[:, 20:] == round(value / 257.0)).all()


def test_float_image_scaled():
    arr = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    out = decode_image(buf.getvalue())
    np.testing.assert_allclose(out[..., 1].astype(float), np.rint(arr * 255), atol=1)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red ink
    data = _save(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


def test_grey_palette_and_alpha():
    grey = decode_image(_save(Image.new("L", (40, 40), 77), "PNG"))
    assert (grey == 77).all()
    pal = Image.new("P", (40, 40), 3)
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 100, 50] + [0] * (256 * 3 - 12))
    np.testing.assert_array_equal(decode_image(_save(pal, "PNG"))[0, 0], [200, 100, 50])
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:20, :, 3] = 255  # top half opaque red, bottom transparent
    out = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out[5, 5], [255, 0, 0])
    np.testing.assert_array_equal(out[35, 5], [255, 255, 255])  # composited over white
    la = Image.fromarray(np.stack([np.full((40, 40), 50, np.uint8), np.full((40, 40), 0, np.uint8)], -1), "LA")
    np.testing.assert_array_equal(decode_image(_save(la, "PNG"))[0, 0], [255, 255, 255])


@pytest.mark.parametrize("orientation,rot_k,transpose", [(3, 2, False), (6, -1, False), (8, 1, False)])
def test_exif_orientation_applied(orientation, rot_k, transpose):
    img = _pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(img), "JPEG", quality=98, exif=exif.tobytes())
    out = decode_image(data)
    expected = np.rot90(img, k=rot_k)  # what a viewer shows
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4


def test_webp_and_encode_roundtrip():
    img = _pattern()
    out = decode_image(_save(Image.fromarray(img), "WEBP", lossless=True))
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(decode_image(encode_image(img, "png")), img)
    assert np.abs(decode_image(encode_image(img, "jpeg", 95)).astype(int) - img).mean() < 3
    with pytest.raises(ValueError, match="image_format"):
        encode_image(img, "gif")
