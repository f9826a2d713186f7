"""Character image libraries (PNG/JPG/WebP under a folder or URI prefix) as an index table.

Identity of an image: the ``identity`` column of the labels CSV when given, else its first
folder below the root (``<root>/<character>/<image>``), else its file stem (one character
per image).

Optional labels CSV (``labels_uri``, or ``<root>/labels.csv`` when present), one row per image:

- ``file``: the image path relative to the root (``hero/happy.png``), or its bare file name
  when no other image of the library has that name (a bare name shared by several images is
  refused; a path never labels another folder's image of the same name);
- ``identity`` (optional);
- ``expression``: an AffectNet-8 class name (``happy``) or index (``1``) (optional);
- AU intensities ``au01, au02, ..., au45`` (any subset; divided by ``au_scale``, so 0-5
  OpenFace intensities become [0, 1] with ``au_scale=5``).

Missing labels stay NaN / -1 (the schema's "missing", never zero).
"""
from __future__ import annotations

import collections
import io
import posixpath
from typing import Optional

import numpy as np
import pandas as pd

from dcnn_flame.constants import AU_COLUMNS, EXPRESSION_CLASSES
from dcnn_flame.data.vggface2 import INDEX_COLUMNS
from dcnn_flame.io.storage import StorageOptions, find_files, get_fs, join, protocol_of, resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Extra index columns of characters (after INDEX_COLUMNS).
LABEL_COLUMNS = AU_COLUMNS + ("expression_class",)


def _expression_index(value) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return -1
    s = str(value).strip().lower()
    if s == "" or s == "nan":
        return -1
    try:  # an index, also as a spreadsheet writes it ("1.0")
        f = float(s)
    except ValueError:
        f = None
    if f is not None and f.is_integer():
        i = int(f)
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
        df = pd.read_csv(io.BytesIO(f.read()), dtype={"file": str, "identity": str, "expression": str,
                                                       "expression_class": str})
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
    out["expression_class"] = [_labelled(uri, k, f, _expression_index, v) for k, (f, v) in
                               enumerate(zip(out["file"], df[col]))] if col else -1
    return out


def _labelled(uri: str, k: int, file: str, parse, value):
    """``parse(value)``, with a ValueError naming the CSV, its line and the image."""
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{uri}, line {k + 2} (file {file!r}): {exc}") from None


def _label_rows(images: list[str], files: list[str], labels_uri: str, root: str) -> list[Optional[int]]:
    """The labels row of each image (its path relative to the root), or None.

    A row names its image by that relative path, or by its bare file name (no ``/``) when
    exactly one image of the library has that name. A path never falls back to its file name
    (``hero/happy.png`` does not label ``sidekick/happy.png``), and a bare name that several
    images share is refused: which image it labels cannot be known.
    """
    by_rel: dict[str, int] = {}
    bare: dict[str, int] = {}
    for i, f in enumerate(files):
        by_rel.setdefault(f, i)
        if "/" not in f:
            bare.setdefault(f, i)
    names = collections.Counter(posixpath.basename(r) for r in images)
    hits: list[Optional[int]] = []
    ambiguous: dict[str, list[str]] = {}
    for rel in images:
        hit = by_rel.get(rel)
        base = posixpath.basename(rel)
        if hit is None and base in bare:
            if names[base] > 1:
                ambiguous.setdefault(base, []).append(rel)
            else:
                hit = bare[base]
        hits.append(hit)
    if ambiguous:
        base, paths = next(iter(ambiguous.items()))
        raise ValueError(f"{labels_uri}: the file name {base!r} labels {len(paths)} images of {root} "
                         f"({', '.join(paths[:3])}){f' and {len(ambiguous) - 1} more such names' if len(ambiguous) > 1 else ''}; "
                         f"name each image by its path relative to {root} in the 'file' column")
    return hits


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
    prefix = path.rstrip("/") + "/"
    rows = []
    for p, size in find_files(path, fs).items():  # symbolic links followed (local folders)
        if not p.lower().endswith(IMAGE_SUFFIXES):
            continue
        rel = p[len(prefix):] if p.startswith(prefix) else posixpath.basename(p)
        parts = rel.split("/")
        identity = parts[0] if len(parts) > 1 else posixpath.splitext(parts[0])[0]
        rows.append({"uri": p if proto == "file" else f"{proto}://{p}", "size": size,
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
        hits = _label_rows(list(df["name_id"]), list(labels["file"]), labels_uri, root)
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
