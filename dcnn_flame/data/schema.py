"""The Parquet schema of training/eval shards (one definition, versioned).

One row = one *sample*: ``num_views`` aligned 224x224 views of one identity (4 in the
paper's four-view mode; 1 for single images such as some character libraries). All
per-view columns are lists of length ``num_views``. Every writer (synthetic generator,
VGGFace2 ingest, character ingest) produces exactly this schema; readers check
``schema_version``.

Conventions: landmark pixel coordinates are in the aligned 224x224 image, x right, y down,
pixel centres at +0.5; missing values are NaN (landmarks, AUs) or -1 (expression class),
never zero. Ground-truth columns are null for real data.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from dcnn_flame.constants import NUM_AUS, NUM_LANDMARKS, POSE_DIM, SH_COEFFS

SCHEMA_VERSION = 1
SCHEMA_METADATA_KEY = b"dcnn_flame.schema_version"

LANDMARK_SOURCES = ("ground_truth", "fan", "metadata5", "none")

_f32 = pa.float32()


def _vec(n: int) -> pa.DataType:
    return pa.list_(_f32, n)


def _views(t: pa.DataType) -> pa.DataType:
    return pa.list_(t)


SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),  # unique, deterministic
        pa.field("identity", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # synthetic | vggface2 | characters
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("num_views", pa.int16(), nullable=False),
        # --- per view (lists of length num_views) ---
        pa.field("image_uri", _views(pa.string())),  # source image ("" for synthetic)
        pa.field("image", _views(pa.binary()), nullable=False),  # PNG/JPEG of the aligned crop
        pa.field("landmarks", _views(_vec(2 * NUM_LANDMARKS))),  # 68 x (x, y) pixels, NaN = missing
        pa.field("landmarks5", _views(_vec(10))),  # eye centres R/L, nose tip, mouth corners R/L
        pa.field("landmark_source", _views(pa.string())),
        pa.field("crop_box", _views(_vec(4))),  # x0, y0, x1, y1 in the source image (pixels)
        pa.field("au", _views(_vec(NUM_AUS))),  # AU intensities in [0, 1] (AU_IDS order), NaN = missing
        pa.field("expression_class", _views(pa.int16())),  # AffectNet-8 index, -1 = missing
        # --- ground truth (synthetic world; null for real data) ---
        pa.field("gt_shape", _views(pa.list_(_f32))),
        pa.field("gt_expression", _views(pa.list_(_f32))),
        pa.field("gt_pose", _views(_vec(POSE_DIM))),
        pa.field("gt_camera", _views(_vec(3))),  # orthographic (scale, tx, ty)
        pa.field("gt_light", _views(_vec(SH_COEFFS))),
        pa.field("gt_albedo", _views(pa.list_(_f32))),
        pa.field("gt_vertices", _views(pa.binary())),  # float32 [V, 3] little-endian bytes, metres
    ],
    metadata={SCHEMA_METADATA_KEY: str(SCHEMA_VERSION).encode()},
)

#: Rows of the failures table written next to shards by every ingest.
FAILURE_SCHEMA = pa.schema(
    [
        pa.field("input_uri", pa.string()),
        pa.field("identity", pa.string()),
        pa.field("stage", pa.string()),  # read | decode | detect | align | group | write
        pa.field("reason", pa.string()),  # short machine-readable reason, e.g. "truncated"
        pa.field("detail", pa.string()),  # human-readable message
    ],
    metadata={SCHEMA_METADATA_KEY: str(SCHEMA_VERSION).encode()},
)

REQUIRED_COLUMNS = tuple(f.name for f in SAMPLE_SCHEMA if not f.nullable)


def check_table(table: pa.Table, where: str = "") -> None:
    """Raise a ValueError naming the problem if ``table`` does not follow the schema.

    Args:
        table: a pyarrow table (e.g. from ``pq.read_table``).
        where: path/URI for the message.
    """
    missing = [n for n in SAMPLE_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{where or 'table'} is not a dcnn-flame shard: missing columns {missing}. "
                         f"Re-create it with jobs/prepare.py.")
    if table.num_rows:
        versions = set(table.column("schema_version").to_pylist())
        if versions != {SCHEMA_VERSION}:
            raise ValueError(f"{where or 'table'} has schema_version {sorted(versions)}, this code reads "
                             f"{SCHEMA_VERSION}. Re-create the shards with jobs/prepare.py.")


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an image.

    Args:
        image: [H, W, 3] uint8, or float in [0, 1] (HWC).
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """[H, W, 3] uint8 RGB from PNG/JPEG/WebP bytes (raises ValueError on bad data)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises many types for bad data
        raise ValueError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


def vertices_to_bytes(v: np.ndarray) -> bytes:
    """float32 little-endian bytes of [V, 3] vertices."""
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def vertices_from_bytes(b: bytes) -> np.ndarray:
    """Inverse of :func:`vertices_to_bytes` -> [V, 3] float32."""
    return np.frombuffer(b, dtype="<f4").reshape(-1, 3)


def landmarks5_from_68(lmk68: np.ndarray) -> np.ndarray:
    """[..., 68, 2] -> [..., 5, 2]: right eye centre, left eye centre, nose tip,
    right mouth corner, left mouth corner (subject's right/left, iBUG indices)."""
    lmk68 = np.asarray(lmk68)
    return np.stack([lmk68[..., 36:42, :].mean(-2), lmk68[..., 42:48, :].mean(-2),
                     lmk68[..., 30, :], lmk68[..., 48, :], lmk68[..., 54, :]], axis=-2)
