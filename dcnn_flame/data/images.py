"""Robust image decoding for ingest: bytes -> [H, W, 3] uint8 RGB, or a typed DecodeError.

Real collections contain everything: zero-byte files, HTML saved as .jpg, truncated
downloads, CMYK JPEGs, 16-bit PNGs, palette images with transparency, phone photos whose
pixels are stored sideways with an EXIF orientation tag, and the odd 30000x30000 scan.
Each of these either becomes a correct RGB array or a :class:`DecodeError` whose ``reason``
is a short machine-readable code that the failures table counts by.
"""
from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np

#: Reason codes of :class:`DecodeError` (the ``reason`` column of the failures table).
DECODE_REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_small", "too_large")


class DecodeError(ValueError):
    """An input that cannot become an RGB image; ``reason`` is one of :data:`DECODE_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _reason_of(exc: BaseException) -> str:
    """"truncated" for the errors PIL raises when data ends early, else "corrupt"."""
    msg = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in msg or "broken data stream" in msg:
        return "truncated"
    return "corrupt"


def _to_uint8(arr: np.ndarray, full_scale: Optional[float] = None) -> np.ndarray:
    """Scale an integer/float single-channel array to uint8.

    ``full_scale`` given (16-bit modes: 65535): 0..full_scale -> 0..255, whatever the content.
    Otherwise the range is inferred: integer data above 255 is taken as 16-bit (0..65535 ->
    0..255); float data as [0, 1] when its maximum is <= 1, as [0, 255] when <= 255, and min-max
    normalised otherwise; other integer data with values above 65535 is min-max normalised.
    """
    a = arr.astype(np.float64)
    if not np.all(np.isfinite(a)):
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is not None:  # the format says the range (16-bit modes): never from the content
        return np.clip(np.rint(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    hi = float(a.max()) if a.size else 0.0
    lo = float(a.min()) if a.size else 0.0
    if np.issubdtype(arr.dtype, np.floating):
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    elif hi > 255.0 or lo < 0.0:
        if lo >= 0.0 and hi <= 65535.0:
            a = a / 257.0
        else:
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _flatten_alpha(im, background: int):
    """RGB image of an image with alpha composited over a flat grey/white background
    (character art often has a transparent background; black would read as hair)."""
    from PIL import Image

    rgba = im.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _pil_to_rgb(im, background: int) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit modes are 0..65535 by definition: a dark 16-bit image stays dark (its values
        # are not mistaken for 8-bit ones); 32-bit "I" and "F" carry no range, so it is inferred.
        grey = _to_uint8(np.asarray(im), full_scale=65535.0 if mode.startswith("I;16") else None)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        return np.asarray(_flatten_alpha(im, background))
    # CMYK (incl. Adobe inverted, handled by PIL's JPEG plugin), L, 1, P, YCbCr, LAB, HSV
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes, *, min_size: int = 32, max_pixels: int = 50_000_000,
                 max_bytes: Optional[int] = 64 * 1024 * 1024, background: int = 255) -> np.ndarray:
    """Decode encoded image bytes (JPEG/PNG/WebP/...) into RGB.

    EXIF orientation is applied (the result is the image as a viewer shows it); grey,
    palette, CMYK, 16-bit and float images are converted; alpha is composited over
    ``background``.

    Args:
        data: the file's bytes.
        min_size: smallest allowed width/height (after EXIF rotation) in pixels.
        max_pixels: largest allowed width*height; checked from the header before any
            pixel is decoded, so a decompression bomb costs nothing.
        max_bytes: largest allowed file size (None = no limit).
        background: grey level (0..255) under transparent pixels.

    Returns:
        [H, W, 3] uint8 RGB (a new, writable array).

    Raises:
        DecodeError: with reason "empty", "not_an_image", "truncated", "corrupt",
            "too_small" or "too_large".
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise DecodeError("empty", "the file has 0 bytes")
    if max_bytes is not None and len(data) > max_bytes:
        raise DecodeError("too_large", f"{len(data)} bytes > max_bytes={max_bytes}")
    with warnings.catch_warnings():
        # Our own max_pixels check replaces PIL's global bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise DecodeError("not_an_image", f"not a recognised image format ({len(data)} bytes)") from exc
        except Image.DecompressionBombError as exc:
            raise DecodeError("too_large", str(exc)) from exc
        except Exception as exc:  # PIL raises many types on corrupt headers
            raise DecodeError(_reason_of(exc), f"{type(exc).__name__}: {exc}") from exc
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError("too_large", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
            try:
                im.load()
            except Image.DecompressionBombError as exc:
                raise DecodeError("too_large", str(exc)) from exc
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise DecodeError(_reason_of(exc), f"{type(exc).__name__}: {exc}") from exc
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # a malformed EXIF block should not lose a good image
                oriented = im
            rgb = _pil_to_rgb(oriented, background)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DecodeError("corrupt", f"decoded to an array of shape {rgb.shape}")
    hh, ww = rgb.shape[:2]
    if min(hh, ww) < min_size:
        raise DecodeError("too_small", f"{ww}x{hh} pixels < min_size={min_size}")
    return np.array(rgb, dtype=np.uint8, copy=True)


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode [H, W, 3] uint8 RGB as JPEG or PNG bytes (what the shards store).

    Args:
        image: [H, W, 3] uint8.
        fmt: "jpeg" or "png".
        quality: JPEG quality (ignored for PNG).
    """
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        # 4:4:4 keeps colour edges (lips, eyes) crisp at 224 px.
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0)
    elif fmt == "png":
        im.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()
