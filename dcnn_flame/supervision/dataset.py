"""Labelled images for training the teachers: shard views flattened into single images.

Every view of every shard row (``SAMPLE_SCHEMA``) is one training image with its AU vector
(``[17]`` in [0, 1], NaN = missing) and expression class (-1 = missing). Nothing here turns a
missing label into a value: NaN and -1 travel to the losses, which mask them.

Three pieces:

- :func:`read_view_index`: one pass over the shards reading only the small columns
  (identity, num_views, au, expression_class), so the labels of every image are in memory
  (~80 bytes per image) while the encoded images stay in the shards.
- :func:`split_by_identity`: the deterministic train/val/test split by identity.
- :class:`ImageStore`: decoded ``[3, S, S]`` uint8 images, resized once to the networks'
  input size. When they fit in ``cache_max_bytes`` all are decoded once and kept in memory
  (the usual case: labelled face sets are small, 10k images at 112 px = 376 MB); otherwise
  each epoch streams them shard by shard (shards in random order, images shuffled within a
  shard), decoding again every time.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from dcnn_flame.constants import NUM_AUS, NUM_EXPRESSION_CLASSES
from dcnn_flame.data import schema
from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions

log = logging.getLogger(__name__)

#: Columns read by :func:`read_view_index` (the images are read later, by :class:`ImageStore`).
LABEL_COLUMNS: tuple[str, ...] = ("schema_version", "identity", "num_views", "au", "expression_class")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class ViewIndex:
    """Labels and locations of N images (views), in shard/row/view order.

    Attributes:
        files: shard URIs; ``file`` indexes into it.
        file: [N] int64 shard of each image.
        row: [N] int64 row of the image in its shard.
        view: [N] int64 view of the image in its row.
        identity: [N] object (str) identity.
        au: [N, 17] float32 AU intensities in [0, 1], NaN = missing.
        expression: [N] int64 AffectNet-8 class, -1 = missing.
    """

    files: list[str]
    file: np.ndarray
    row: np.ndarray
    view: np.ndarray
    identity: np.ndarray
    au: np.ndarray
    expression: np.ndarray

    def __len__(self) -> int:
        return int(self.file.shape[0])


def shard_files(uri: str, options: Optional[StorageOptions] = None) -> list[str]:
    """Sorted ``.parquet`` URIs under ``uri`` (or ``[uri]`` when it is one file)."""
    uri = storage.resolve(uri)
    if uri.lower().endswith(".parquet"):
        if not storage.exists(uri, options):
            raise FileNotFoundError(f"shard file {uri} does not exist")
        return [uri]
    files = storage.list_files(uri, options, suffixes=(".parquet",))
    if not files:
        raise FileNotFoundError(
            f"no .parquet shards under {uri}. Create labelled shards first, e.g. "
            f"`python jobs/prepare.py source=synthetic` (then data_uri=<its output_uri>/shards)")
    return files


def _view_values(value, n: int) -> list:
    """A per-view list of length ``n`` (None / short lists -> None entries)."""
    if value is None:
        return [None] * n
    out = list(value)[:n]
    return out + [None] * (n - len(out))


def read_view_index(uri: str, options: Optional[StorageOptions] = None,
                    max_images: Optional[int] = None) -> ViewIndex:
    """Flatten the views of every shard under ``uri`` into a :class:`ViewIndex`.

    Args:
        uri: directory/prefix of shards, or one ``.parquet`` file (local, file://, s3://...).
        options: object-store settings.
        max_images: stop after this many images (shards sorted, then row, then view order).
    Raises:
        FileNotFoundError: no shards. ValueError: a file without the shard schema, another
        schema version, an AU vector of the wrong length or a class outside [-1, 8).
    """
    files = shard_files(uri, options)
    used: list[str] = []
    file_i, rows, views, idents, aus, classes = [], [], [], [], [], []
    total = 0
    for f in files:
        if max_images is not None and total >= max_images:
            break
        fs, path = storage.get_fs(f, options)
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            missing = [c for c in LABEL_COLUMNS + ("image",) if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{f} is not a dcnn-flame shard (missing columns {missing}); point data_uri "
                                 f"at the shards folder written by jobs/prepare.py (<output_uri>/shards)")
            table = pf.read(columns=list(LABEL_COLUMNS))
        versions = set(table.column("schema_version").to_pylist())
        if versions and versions != {schema.SCHEMA_VERSION}:
            raise ValueError(f"{f} has schema_version {sorted(versions)}, this code reads {schema.SCHEMA_VERSION}; "
                             f"re-create the shards with jobs/prepare.py")
        fi = len(used)
        used.append(f)
        cols = {c: table.column(c).to_pylist() for c in ("identity", "num_views", "au", "expression_class")}
        for r in range(table.num_rows):
            n = int(cols["num_views"][r])
            au_views = _view_values(cols["au"][r], n)
            cls_views = _view_values(cols["expression_class"][r], n)
            for v in range(n):
                if max_images is not None and total >= max_images:
                    break
                a = au_views[v]
                if a is None:
                    a = [float("nan")] * NUM_AUS
                elif len(a) != NUM_AUS:
                    raise ValueError(f"{f} row {r} view {v}: AU vector of length {len(a)}, expected {NUM_AUS}")
                c = cls_views[v]
                c = -1 if c is None else int(c)
                if not -1 <= c < NUM_EXPRESSION_CLASSES:
                    raise ValueError(f"{f} row {r} view {v}: expression_class {c} is outside "
                                     f"[0, {NUM_EXPRESSION_CLASSES}) and is not -1 (missing)")
                file_i.append(fi)
                rows.append(r)
                views.append(v)
                idents.append(str(cols["identity"][r]))
                aus.append([np.nan if x is None else x for x in a])
                classes.append(c)
                total += 1
    if total == 0:
        raise ValueError(f"the shards under {uri} hold no images")
    return ViewIndex(
        files=used,
        file=np.asarray(file_i, dtype=np.int64),
        row=np.asarray(rows, dtype=np.int64),
        view=np.asarray(views, dtype=np.int64),
        identity=np.asarray(idents, dtype=object),
        au=np.asarray(aus, dtype=np.float32).reshape(-1, NUM_AUS),
        expression=np.asarray(classes, dtype=np.int64),
    )


@dataclass
class IdentitySplit:
    """Identities of each split (sorted lists) and the image positions of each split."""

    identities: dict[str, list[str]]
    positions: dict[str, np.ndarray]


def split_by_identity(identity: Sequence[str] | np.ndarray, val_fraction: float, test_fraction: float,
                      seed: int) -> IdentitySplit:
    """Split images by identity: no identity is in two splits.

    The unique identities are sorted, permuted with ``numpy.random.default_rng(seed)``, and the
    first ``n_val`` of the permutation go to val, the next ``n_test`` to test, the rest to train,
    with ``n_val = max(1, round(val_fraction * n))`` (0 when the fraction is 0), likewise for
    test. The split depends only on the set of identities and the seed, not on shard order.

    Args:
        identity: [N] identity of each image.
    Returns: :class:`IdentitySplit` with positions (int64 indices into the N images, ascending).
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         f"and leave a training share")
    ident = np.asarray(identity, dtype=object)
    unique = sorted(set(ident.tolist()))
    n = len(unique)

    def count(frac: float) -> int:
        return 0 if frac <= 0 else max(1, int(round(frac * n)))

    n_val, n_test = count(val_fraction), count(test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} identities cannot be split into train/val/test with fractions "
                         f"{1 - val_fraction - test_fraction:.2f}/{val_fraction}/{test_fraction}: "
                         f"use more identities (>= 3) or set val_fraction/test_fraction to 0")
    perm = np.random.default_rng(seed).permutation(n)
    order = [unique[i] for i in perm]
    groups = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    positions = {}
    for name, ids in groups.items():
        mask = np.isin(ident, np.asarray(ids, dtype=object)) if ids else np.zeros(len(ident), dtype=bool)
        positions[name] = np.flatnonzero(mask).astype(np.int64)
    return IdentitySplit({k: sorted(v) for k, v in groups.items()}, positions)


def decode_resized(data: bytes, size: int) -> np.ndarray:
    """[3, size, size] uint8 from PNG/JPEG bytes (antialiased bilinear resize when needed).

    Raises ValueError for undecodable data.
    """
    img = schema.decode_image(data)
    if img.shape[0] != size or img.shape[1] != size:
        from PIL import Image

        # Pillow widens the bilinear kernel by the scale factor when shrinking: antialiased.
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(img.transpose(2, 0, 1))


class ImageStore:
    """Decoded images of a :class:`ViewIndex` at one size, cached in memory or streamed.

    Args:
        index: the images.
        size: side of the decoded square images.
        options: object-store settings.
        cache_max_bytes: cache everything when ``len(index) * 3 * size**2`` fits.
        decode_threads: threads decoding images (Pillow releases the GIL while decoding).
    Attributes:
        cached: whether images live in memory.
        bad: positions whose image could not be decoded (skipped; logged once).
    """

    def __init__(self, index: ViewIndex, size: int, options: Optional[StorageOptions] = None,
                 cache_max_bytes: int = 4 * 1024**3, decode_threads: int = 4):
        self.index = index
        self.size = int(size)
        self.options = options
        self.decode_threads = max(1, int(decode_threads))
        self.bad: set[int] = set()
        self.cached = len(index) * 3 * self.size**2 <= cache_max_bytes
        self._cache: Optional[Tensor] = None
        if self.cached:
            self._cache = torch.zeros(len(index), 3, self.size, self.size, dtype=torch.uint8)
            everything = np.arange(len(index), dtype=np.int64)
            for pos, imgs in self._decode_by_file(everything):
                self._cache[torch.from_numpy(pos)] = imgs

    @property
    def nbytes(self) -> int:
        """Bytes held by the in-memory cache (0 when streaming)."""
        return 0 if self._cache is None else self._cache.numel()

    def _read_file(self, fi: int, rows: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, Tensor]:
        """Decode the images (rows[i], views[i]) of shard ``fi`` -> (ok mask [n], uint8 [n_ok, 3, S, S])."""
        uri = self.index.files[fi]
        fs, path = storage.get_fs(uri, self.options)
        with fs.open(path, "rb") as fh:
            table = pq.ParquetFile(fh).read(columns=["image"])
        uniq, inv = np.unique(rows, return_inverse=True)
        row_images = table.column("image").take(pa.array(uniq)).to_pylist()

        def one(i: int) -> Optional[np.ndarray]:
            imgs = row_images[inv[i]]
            try:
                if imgs is None or views[i] >= len(imgs) or imgs[views[i]] is None:
                    raise ValueError("no image for this view")
                return decode_resized(imgs[views[i]], self.size)
            except ValueError as exc:
                log.warning("skipping image %s row %d view %d: %s", uri, rows[i], views[i], exc)
                return None

        with ThreadPoolExecutor(self.decode_threads) as pool:
            out = list(pool.map(one, range(len(rows))))
        ok = np.asarray([o is not None for o in out], dtype=bool)
        good = [o for o in out if o is not None]
        arr = torch.from_numpy(np.stack(good)) if good else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
        return ok, arr

    def _decode_by_file(self, positions: np.ndarray, file_order: Optional[np.ndarray] = None
                        ) -> Iterator[tuple[np.ndarray, Tensor]]:
        """Yield (positions, uint8 [n, 3, S, S]) per shard, in ``file_order`` (default ascending)."""
        files = self.index.file[positions]
        order = np.unique(files) if file_order is None else file_order
        for fi in order:
            pos = positions[files == fi]
            if pos.size == 0:
                continue
            ok, imgs = self._read_file(int(fi), self.index.row[pos], self.index.view[pos])
            self.bad.update(int(p) for p in pos[~ok])
            yield pos[ok], imgs

    def valid(self, positions: np.ndarray) -> np.ndarray:
        """``positions`` without the images known to be undecodable."""
        if not self.bad:
            return positions
        return positions[~np.isin(positions, np.fromiter(self.bad, dtype=np.int64))]

    def batches(self, positions: np.ndarray, batch_size: int,
                rng: Optional[np.random.Generator] = None) -> Iterator[tuple[np.ndarray, Tensor]]:
        """Yield (positions [b], uint8 images [b, 3, S, S]) covering ``positions`` once.

        With ``rng`` the order is shuffled: a full permutation when cached; when streaming, the
        shard order is permuted and images are shuffled within each shard. Without ``rng``
        the order is deterministic. The last batch may be smaller.
        """
        positions = self.valid(np.asarray(positions, dtype=np.int64))
        if self._cache is not None:
            order = rng.permutation(positions) if rng is not None else positions
            for s in range(0, len(order), batch_size):
                pos = order[s:s + batch_size]
                yield pos, self._cache[torch.from_numpy(pos)]
            return
        files = np.unique(self.index.file[positions])
        file_order = rng.permutation(files) if rng is not None else files
        buf_pos: list[np.ndarray] = []
        buf_img: list[Tensor] = []
        n_buf = 0
        for pos, imgs in self._decode_by_file(positions, file_order):
            if rng is not None:
                perm = rng.permutation(len(pos))
                pos, imgs = pos[perm], imgs[torch.from_numpy(perm)]
            buf_pos.append(pos)
            buf_img.append(imgs)
            n_buf += len(pos)
            if n_buf >= batch_size:
                all_pos, all_img = np.concatenate(buf_pos), torch.cat(buf_img)
                full = (n_buf // batch_size) * batch_size
                for s in range(0, full, batch_size):
                    yield all_pos[s:s + batch_size], all_img[s:s + batch_size]
                buf_pos, buf_img, n_buf = [all_pos[full:]], [all_img[full:]], n_buf - full
        if n_buf:
            yield np.concatenate(buf_pos), torch.cat(buf_img)
