"""Shared fixtures: a real local Ray cluster and a real S3-compatible server on 127.0.0.1.

Environment settings follow ../shared/RAY.md (CI on a 2-core box).
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest

# Set before anything imports ray (these are read at ray.init / import time).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_env():
    """Dummy AWS credentials in the environment for the whole session, so s3fs/boto3 in this
    process and in Ray workers (which inherit the env) can reach the test S3 server."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(s3_env):
    """moto's S3 server on 127.0.0.1:<free port>; yields its endpoint URL.

    moto is a dev dependency (``make test`` installs it); where it is missing (e.g. a GPU
    machine with only the runtime packages) the S3 tests are skipped, the others still run.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto is not installed (pip install -e '.[dev]'): no S3 test server")

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh bucket on the test server; yields (s3://bucket, StorageOptions)."""
    import boto3

    from dcnn_flame.io.storage import StorageOptions

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    yield f"s3://{name}", StorageOptions(endpoint_url=s3_server)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory, s3_env):
    """One local Ray for the whole session (4 logical CPUs on 2 cores; see RAY.md).

    It depends on ``s3_env`` so that the test server's credentials are in the environment
    before Ray starts: Ray's processes inherit it, whatever order the tests run in."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tmp_path_factory.mktemp("ray")
    # Unix socket paths must stay short: use a short dir under /tmp.
    short = f"/tmp/rt{uuid.uuid4().hex[:6]}"
    os.makedirs(short, exist_ok=True)
    ray.init(address="local", num_cpus=4, object_store_memory=512 * 1024 * 1024,
             _temp_dir=short, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120"}})
    try:
        yield ray
    finally:
        ray.shutdown()
        del tmp
