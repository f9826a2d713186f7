"""pyarrow filesystems for Ray (``read_parquet(filesystem=)``, ``RunConfig(storage_filesystem=)``).

Ray reads and writes through pyarrow; the project configures object stores through fsspec
(:mod:`dcnn_flame.io.storage`). This wraps the fsspec filesystem of a URI for pyarrow, so the
endpoint and region of :class:`StorageOptions` apply to Ray exactly as to everything else.

Credentials: when the driver has static keys in its environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` [/ ``AWS_SESSION_TOKEN``]) they travel inside the (pickled)
filesystem object, because Ray processes that did not start from this shell (the Train
controller, workers of a cluster started earlier) do not have them. They never go to configs,
logs, runtime envs or the dashboard. Without static keys every process uses its own default
chain (instance roles, IRSA, profiles), the normal setup on a cloud cluster.
"""
from __future__ import annotations

import os
from typing import Optional

from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions


def fsspec_filesystem(uri: str, options: Optional[StorageOptions] = None):
    """The fsspec filesystem for ``uri`` (carrying static S3 keys from the env, see module doc)."""
    options = options or StorageOptions()
    proto = storage.protocol_of(uri)
    kwargs = options.for_protocol(proto)
    if proto in ("s3", "s3a") and not options.anon and os.environ.get("AWS_ACCESS_KEY_ID") \
            and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ["AWS_SECRET_ACCESS_KEY"])
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["token"] = os.environ["AWS_SESSION_TOKEN"]
    import fsspec

    return fsspec.filesystem(proto, **kwargs)


def arrow_filesystem(uri: str, options: Optional[StorageOptions] = None):
    """A pyarrow filesystem for ``uri``; None for local paths (Ray handles those itself)."""
    if storage.is_local(uri):
        return None
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_filesystem(uri, options)))


def strip_protocol(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key``: the path form used with an explicit filesystem."""
    return uri.split("://", 1)[1] if "://" in uri else uri
