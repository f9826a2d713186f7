"""fsspec-based storage: URIs, atomic writes, deterministic safe keys.

Every byte the project writes goes through here, so local paths, ``file://``, ``s3://``
(s3fs) and ``gs://`` behave the same. Writes are atomic: a reader never sees a partial
object (local: temp file + rename in the same directory; object stores: one PUT, which is
atomic per object).
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import fsspec

_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_KEY_LEN = 120


@dataclass(frozen=True)
class StorageOptions:
    """Connection settings for object stores (never holds secrets).

    Attributes:
        endpoint_url: S3-compatible endpoint, or None for AWS / ``AWS_ENDPOINT_URL``.
        region: S3 region or None.
        anon: anonymous access.
    """

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    anon: bool = False

    def for_protocol(self, protocol: str) -> dict[str, Any]:
        """fsspec ``storage_options`` for ``protocol`` ("s3", "file", ...)."""
        if protocol in ("s3", "s3a"):
            opts: dict[str, Any] = {"anon": self.anon}
            endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            client_kwargs: dict[str, Any] = {}
            if endpoint:
                client_kwargs["endpoint_url"] = endpoint
            if self.region:
                client_kwargs["region_name"] = self.region
            if client_kwargs:
                opts["client_kwargs"] = client_kwargs
            return opts
        return {}


def protocol_of(uri: str) -> str:
    """'s3' for s3://..., 'file' for plain paths and file://."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    return protocol_of(uri) == "file"


def resolve(uri: str) -> str:
    """Absolute form of ``uri``: local paths become absolute (workers run elsewhere)."""
    if is_local(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path))
    return uri.rstrip("/")


def join(uri: str, *parts: str) -> str:
    """Join key parts onto ``uri`` with '/' (parts must already be safe keys)."""
    out = uri.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def get_fs(uri: str, options: Optional[StorageOptions] = None):
    """(filesystem, path) for ``uri``."""
    options = options or StorageOptions()
    proto = protocol_of(uri)
    fs, path = fsspec.core.url_to_fs(uri, **options.for_protocol(proto))
    return fs, path


def safe_key(name: str) -> str:
    """A deterministic key component that cannot escape its prefix.

    Keeps ``[A-Za-z0-9._-]``; anything else (``/``, ``..``, spaces, unicode) is replaced
    and a short hash of the original is appended, so two different ids never collide
    (``a/b`` and ``a_b`` map to different keys). Leading dots are removed, so ``.`` and
    ``..`` can never be produced.

    >>> safe_key("hero_01")
    'hero_01'
    >>> safe_key("../x").startswith("x-")
    True
    """
    if not isinstance(name, str):
        name = str(name)
    cleaned = _SAFE_RE.sub("_", name)
    if cleaned == name and not name.startswith(".") and 0 < len(name) <= _MAX_KEY_LEN:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = cleaned.strip("._")[: _MAX_KEY_LEN - 11] or "id"
    cleaned = f"{stem}-{digest}"
    return cleaned


def exists(uri: str, options: Optional[StorageOptions] = None) -> bool:
    fs, path = get_fs(uri, options)
    return fs.exists(path)


def read_bytes(uri: str, options: Optional[StorageOptions] = None) -> bytes:
    fs, path = get_fs(uri, options)
    with fs.open(path, "rb") as f:
        return f.read()


def atomic_write_bytes(uri: str, data: bytes, options: Optional[StorageOptions] = None) -> str:
    """Write ``data`` to ``uri`` atomically; returns the resolved URI.

    Local: a temp file in the same directory, fsync, then ``os.replace`` (atomic on POSIX).
    Object stores: one PUT (atomic per object; never multipart for these sizes).
    """
    uri = resolve(uri)
    if is_local(uri):
        directory = os.path.dirname(uri)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(uri)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, uri)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return uri
    fs, path = get_fs(uri, options)
    fs.pipe_file(path, data)
    return uri


def find_files(path: str, fs: Any) -> dict[str, int]:
    """Every file below ``path`` of ``fs`` (recursive) -> its size in bytes (-1 = unknown), sorted.

    Object stores: ``fs.find``. Local folders: a walk that follows symbolic links, as libraries
    assembled from links into an asset store need (fsspec's local ``find`` reports a link as
    type "other" and does not enter a linked folder, so the images behind links were skipped
    without a word). A link is listed under its own path (the library's layout names the
    characters), with its target's size; a dangling link is listed with size -1, so that
    reading it fails as a missing file where the caller records failures. A folder reached
    twice (a link cycle, or two links to one folder) is walked once.
    """
    if not _is_local_fs(fs):
        found = fs.find(path, detail=True)
        return {p: int(i["size"]) if i.get("size") is not None else -1
                for p, i in sorted(found.items()) if i.get("type", "file") == "file"}
    out: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    root = os.path.abspath(path)
    if os.path.isfile(root):
        return {root: os.path.getsize(root)}
    for d, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(d)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in files:
            p = os.path.join(d, name)
            try:
                out[p] = os.stat(p).st_size
            except OSError:  # a dangling link: listed, so that reading it is a recorded failure
                out[p] = -1
    return dict(sorted(out.items()))


def _is_local_fs(fs: Any) -> bool:
    protocol = getattr(fs, "protocol", "")
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def list_files(prefix: str, options: Optional[StorageOptions] = None, suffixes: tuple[str, ...] = ()) -> list[str]:
    """All file URIs under ``prefix`` (recursive, sorted), optionally filtered by suffix."""
    prefix = resolve(prefix)
    fs, path = get_fs(prefix, options)
    if not fs.exists(path):
        return []
    proto = protocol_of(prefix)
    out = []
    for p in find_files(path, fs):
        if suffixes and not p.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        out.append(p if proto == "file" else f"{proto}://{p}")
    return out


def cache_dir() -> str:
    """Where :func:`local_copy` keeps files: ``$DCNN_FLAME_CACHE`` or ``~/.cache/dcnn_flame``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("DCNN_FLAME_CACHE") or "~/.cache/dcnn_flame"))


def local_copy(uri: str, options: Optional[StorageOptions] = None, what: str = "file") -> str:
    """A local path holding the bytes of ``uri``: a local path is returned as it is; an object
    (``s3://...``) is downloaded once into :func:`cache_dir` (``assets/<digest>/<its name>``, the
    digest covering the URI and the object's ETag/size/modification time, so a changed object is
    fetched again and the file keeps its name, which some loaders read the edition from).

    Raises:
        FileNotFoundError: naming ``what`` and the URI when the object does not exist.
    """
    if is_local(uri):
        return resolve(uri)
    fs, path = get_fs(uri, options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {uri!r} does not exist (or these credentials cannot see it)") from None
    stamp = [uri, info.get("ETag") or info.get("etag"), info.get("size"),
             str(info.get("LastModified") or info.get("mtime") or info.get("updated") or "")]
    digest = hashlib.sha1("\x00".join(str(x) for x in stamp).encode()).hexdigest()[:16]
    name = os.path.basename(path.rstrip("/")) or "asset"
    local = os.path.join(cache_dir(), "assets", digest, name)
    if not os.path.isfile(local):
        atomic_write_bytes(local, fs.cat_file(path))  # atomic: concurrent workers never read half a file
    return local
