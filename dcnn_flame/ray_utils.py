"""Connecting the driver to Ray (one place, so every job behaves the same).

``init_ray(cfg)``:
- already initialised -> nothing (idempotent; tests and Tune start Ray themselves);
- ``cfg.address`` None -> attach to ``RAY_ADDRESS`` when set (``ray job submit`` sets it),
  otherwise start a local Ray in this process (the embedded default);
- ``"auto"`` -> attach to a running cluster; ``"local"`` -> always start a local one.

Before starting or attaching it sets the environment defaults of ../shared/RAY.md (token
auth off for a fresh local cluster, no usage stats) unless the user set them. Ray Data's
no-progress timeout keeps Ray's 30-minute default (a CPU shard of large images, a long
validation pass or a slow checkpoint upload can leave a dataset idle for minutes); the jobs with
long per-block work raise it further through their ``stall_timeout_s``, and the tests lower it
to 2 minutes so a hang fails fast. A local Ray started here inherits this process' environment
(object-store credentials included); see :mod:`dcnn_flame.io.arrow_fs` for clusters started elsewhere.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from dcnn_flame.config import RayConfig

logger = logging.getLogger(__name__)

#: Defaults applied with ``os.environ.setdefault`` (never override the user's choice).
RAY_ENV_DEFAULTS: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}

def resolve_address(address: Optional[str]) -> Optional[str]:
    """The address ``ray.init`` gets: None/"" -> ``RAY_ADDRESS`` if set, else "local"."""
    if address:
        return address
    return os.environ.get("RAY_ADDRESS") or "local"


def init_ray(cfg: Optional[RayConfig] = None) -> None:
    """Start or attach to Ray as described in the module docstring (idempotent)."""
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    address = resolve_address(cfg.address)
    kwargs: dict = {}
    if address == "local":
        # Resource options are only valid when this process starts the cluster.
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory is not None:
            kwargs["object_store_memory"] = cfg.object_store_memory
        # Keep Ray's default dashboard: Ray Train V2 watches its controller through the State API,
        # which the dashboard serves (without it Train logs a warning loop).
    logger.info("ray.init(address=%r)", address)
    ray.init(address=address, **kwargs)
