"""Character image libraries (PNG/JPG/WebP under a folder or URI prefix) as an index table.

Identity of an image: the ``identity`` column of the labels CSV when given, else its first
folder below the root (``<root>/<character>/<image>``), else its file stem (one character
per image).

Optional labels CSV (``labels_uri``, or ``<root>/labels.csv`` when present), one row per image:

- ``file``: the image path relative to the root (``hero/happy.png``) or its bare file name;
- ``identity`` (optional);
- ``expression``: an AffectNet-8 class name (``happy``) or index (``1``) (optional);
- AU intensities ``au01, au02, ..., au45`` (any subset; divided by ``au_scale``, so 0-5
  OpenFace intensities become [0, 1] with ``au_scale=5``).

Missing labels stay NaN / -1 (the schema's "missing", never zero).
"""
from __future__ import annotations

import io
import posixpath
from typing import Optional

import numpy as np
import pandas as pd

from dcnn_flame.constants import AU_COLUMNS, EXPRESSION_CLASSES
from dcnn_flame.data.vggface2 import INDEX_COLUMNS
from dcnn_flame.io.storage import StorageOptions, get_fs, join, protocol_of, resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Extra index columns of characters (after INDEX_COLUMNS).
LABEL_COLUMNS = AU_COLUMNS + ("expression_class",)


def _expression_index(value) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return -1
    s = str(value).strip().lower()
    if s == "" or s == "nan":
        return -1
    if s.lstrip("-").isdigit():
        i = int(s)
        if -1 <= i < len(EXPRESSION_CLASSES):
            return i
        raise ValueError(f"expression index {i} is outside 0..{len(EXPRESSION_CLASSES) - 1}")
    if s not in EXPRESSION_CLASSES:
        raise ValueError(f"unknown expression {value!r}; use one of {EXPRESSION_CLASSES} or their index")
    return EXPRESSION_CLASSES.index(s)


def read_labels(uri: str, options: Optional[StorageOptions] = None, au_scale: float = 1.0) -> pd.DataFrame:
    """The labels CSV as a DataFrame with columns file, identity (maybe NaN), AU_COLUMNS
    (NaN = missing) and expression_class (-1 = missing)."""
    fs, path = get_fs(uri, options)
    with fs.open(path, "rb") as f:
        df = pd.read_csv(io.BytesIO(f.read()), dtype={"file": str, "identity": str})
    df.columns = [str(c).strip() for c in df.columns]
    if "file" not in df.columns:
        raise ValueError(f"{uri}: the labels CSV needs a 'file' column (image path relative to the root); "
                         f"header is {list(df.columns)}")
    out = pd.DataFrame({"file": df["file"].astype(str).str.strip()})
    out["identity"] = df["identity"] if "identity" in df.columns else np.nan
    for c in AU_COLUMNS:
        out[c] = (pd.to_numeric(df[c], errors="coerce") / float(au_scale)) if c in df.columns else np.nan
    col = "expression" if "expression" in df.columns else ("expression_class" if "expression_class" in df.columns
                                                           else None)
    out["expression_class"] = [_expression_index(v) for v in df[col]] if col else -1
    return out


def index_characters(root: str, options: Optional[StorageOptions] = None, labels_uri: Optional[str] = None,
                     au_scale: float = 1.0, max_identities: Optional[int] = None) -> pd.DataFrame:
    """One row per character image under ``root`` (recursive), with labels when available.

    Returns:
        DataFrame with INDEX_COLUMNS (box/lmk5 NaN: characters have no metadata boxes) and
        LABEL_COLUMNS; ``folder`` is "".
    """
    root = resolve(root)
    fs, path = get_fs(root, options)
    proto = protocol_of(root)
    if not fs.exists(path):
        raise FileNotFoundError(f"character folder {root!r} does not exist")
    found = fs.find(path, detail=True)
    prefix = path.rstrip("/") + "/"
    rows = []
    for p in sorted(found):
        info = found[p]
        if info.get("type", "file") != "file" or not p.lower().endswith(IMAGE_SUFFIXES):
            continue
        rel = p[len(prefix):] if p.startswith(prefix) else posixpath.basename(p)
        parts = rel.split("/")
        identity = parts[0] if len(parts) > 1 else posixpath.splitext(parts[0])[0]
        rows.append({"uri": p if proto == "file" else f"{proto}://{p}", "size": int(info.get("size") or 0),
                     "identity": identity, "folder": "", "name_id": rel})
    df = pd.DataFrame(rows, columns=["uri", "size", "identity", "folder", "name_id"])
    for c in INDEX_COLUMNS[5:]:
        df[c] = np.nan
    for c in AU_COLUMNS:
        df[c] = np.nan
    df["expression_class"] = -1

    if labels_uri is None and fs.exists(f"{prefix}labels.csv"):
        labels_uri = join(root, "labels.csv")
    if labels_uri is not None and len(df):
        labels = read_labels(labels_uri, options, au_scale)
        by_rel = {f: i for i, f in enumerate(labels["file"])}
        basenames = pd.Series([posixpath.basename(r) for r in df["name_id"]])
        by_base = {}
        for i, f in enumerate(labels["file"]):
            by_base.setdefault(posixpath.basename(f), i)
        hits = [by_rel.get(r, by_base.get(b)) for r, b in zip(df["name_id"], basenames)]
        for row, hit in enumerate(hits):
            if hit is None:
                continue
            lab = labels.iloc[hit]
            if isinstance(lab["identity"], str) and lab["identity"].strip():
                df.at[row, "identity"] = lab["identity"].strip()
            for c in AU_COLUMNS:
                df.at[row, c] = lab[c]
            df.at[row, "expression_class"] = int(lab["expression_class"])
    if max_identities is not None:
        keep = sorted(df["identity"].unique())[:max_identities]
        df = df[df["identity"].isin(keep)].reset_index(drop=True)
    return df[list(INDEX_COLUMNS) + list(LABEL_COLUMNS)]
