"""The VGGFace2 layout and its metadata, as an index table (one row per image).

Layout (as distributed by the VGGFace2 authors)::

    <root>/train/n000002/0001_01.jpg        identity folders of JPEGs
    <root>/test/n000001/0001_01.jpg
    <root>/bb_landmark/loose_bb_train.csv   NAME_ID,X,Y,W,H
    <root>/bb_landmark/loose_landmark_train.csv   NAME_ID,P1X,P1Y,...,P5X,P5Y
    (and the same two files for test)

``NAME_ID`` is ``"n000002/0001_01"`` (identity/file stem, quoted); X, Y, W, H is the loose
face box in pixels; P1..P5 are the right eye, left eye, nose tip, right and left mouth
corner of the subject (image left to right for a frontal face), which is the order of the
``landmarks5`` column of the shard schema. Metadata files are optional: images without a
row get a box from the face detector.
"""
from __future__ import annotations

import io
import posixpath
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from dcnn_flame.io.storage import StorageOptions, find_files, get_fs, join, protocol_of, resolve

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
BB_COLUMNS = ("X", "Y", "W", "H")
LMK_COLUMNS = tuple(f"P{i}{a}" for i in range(1, 6) for a in ("X", "Y"))

#: Columns of an image index (shared with characters.py); missing numbers are NaN.
INDEX_COLUMNS = ("uri", "size", "identity", "folder", "name_id",
                 "box_x0", "box_y0", "box_x1", "box_y1") + tuple(f"lmk5_{i}" for i in range(10))


def _full_uri(fs_path: str, proto: str) -> str:
    return fs_path if proto == "file" else f"{proto}://{fs_path}"


def read_metadata_csv(uri: str, columns: Sequence[str], options: Optional[StorageOptions] = None
                      ) -> Optional[pd.DataFrame]:
    """A VGGFace2 metadata CSV as a DataFrame indexed by NAME_ID (None when the file is absent).

    Raises a ValueError naming the file when the header lacks ``columns``.
    """
    fs, path = get_fs(uri, options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        data = f.read()
    df = pd.read_csv(io.BytesIO(data), dtype={"NAME_ID": str})
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("NAME_ID", *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"{uri}: expected columns NAME_ID,{','.join(columns)} (VGGFace2 layout), "
                         f"missing {missing}; header is {list(df.columns)}")
    df["NAME_ID"] = df["NAME_ID"].str.strip().str.strip('"')
    df = df.drop_duplicates("NAME_ID", keep="first").set_index("NAME_ID")
    return df[list(columns)].astype(np.float64)


def _list_folder(root: str, folder: str, options: Optional[StorageOptions]) -> pd.DataFrame:
    base = join(root, folder)
    fs, path = get_fs(base, options)
    proto = protocol_of(base)
    if not fs.exists(path):
        return pd.DataFrame({"uri": [], "size": [], "identity": [], "name_id": []})
    prefix = path.rstrip("/") + "/"
    uris, sizes, ids, names = [], [], [], []
    for p, size in find_files(path, fs).items():  # symbolic links followed (local folders)
        if not p.lower().endswith(IMAGE_SUFFIXES):
            continue
        rel = p[len(prefix):] if p.startswith(prefix) else posixpath.basename(p)
        parts = rel.split("/")
        if len(parts) != 2:  # only <identity>/<image>
            continue
        identity, fname = parts
        uris.append(_full_uri(p, proto))
        sizes.append(size)
        ids.append(identity)
        names.append(f"{identity}/{posixpath.splitext(fname)[0]}")
    return pd.DataFrame({"uri": uris, "size": sizes, "identity": ids, "name_id": names})


def index_vggface2(root: str, options: Optional[StorageOptions] = None,
                   folders: Sequence[str] = ("train", "test"), index: str = "files",
                   max_identities: Optional[int] = None) -> pd.DataFrame:
    """One row per image of a VGGFace2-shaped tree, joined with its box and 5 landmarks.

    Args:
        root: local path or fsspec URI of the dataset root.
        options: object-store settings.
        folders: sub-folders to read ("train", "test").
        index: "files" lists the image files (robust to partial copies); "metadata" takes
            the image names from loose_bb_<folder>.csv without listing (fast on object
            stores for the full 3.3M images; a name whose file is missing becomes a
            failure row "missing").
        max_identities: keep only the first N identities (sorted) of each folder.

    Returns:
        DataFrame with :data:`INDEX_COLUMNS`; box as x0, y0, x1, y1; ``size`` -1 when unknown.
    """
    if index not in ("files", "metadata"):
        raise ValueError(f"index must be 'files' or 'metadata', got {index!r}")
    root = resolve(root)
    proto = protocol_of(root)
    frames = []
    for folder in folders:
        bb = read_metadata_csv(join(root, "bb_landmark", f"loose_bb_{folder}.csv"), BB_COLUMNS, options)
        lm = read_metadata_csv(join(root, "bb_landmark", f"loose_landmark_{folder}.csv"), LMK_COLUMNS, options)
        if index == "metadata":
            if bb is None:
                raise FileNotFoundError(f"index=metadata needs {join(root, 'bb_landmark', f'loose_bb_{folder}.csv')}; "
                                        f"use index=files to list the images instead.")
            names = sorted(bb.index)
            base = get_fs(join(root, folder), options)[1].rstrip("/")
            df = pd.DataFrame({"uri": [_full_uri(f"{base}/{n}.jpg", proto) for n in names],
                               "size": -1, "identity": [n.split("/", 1)[0] for n in names], "name_id": names})
        else:
            df = _list_folder(root, folder, options)
        if max_identities is not None:
            keep = sorted(df["identity"].unique())[:max_identities]
            df = df[df["identity"].isin(keep)]
        df = df.copy()
        df["folder"] = folder
        box = np.full((len(df), 4), np.nan)
        lmk = np.full((len(df), 10), np.nan)
        if bb is not None and len(df):
            xywh = bb.reindex(df["name_id"]).to_numpy(dtype=np.float64)
            box = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)
        if lm is not None and len(df):
            lmk = lm.reindex(df["name_id"]).to_numpy(dtype=np.float64)
        for i, c in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
            df[c] = box[:, i]
        for i in range(10):
            df[f"lmk5_{i}"] = lmk[:, i]
        frames.append(df)
    if not frames:
        return pd.DataFrame({c: [] for c in INDEX_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    return out[list(INDEX_COLUMNS)].reset_index(drop=True)
