"""Fixtures of the ingest tests (import them: ``from ingest_fixtures import fan_hub, ray_s3  # noqa``).

``ray_s3``: the local Ray of the session, started *after* the S3 test server put its dummy
credentials in the environment, so Ray workers can sign S3 requests (workers inherit the
environment Ray started with). When another test started Ray earlier, S3 tests skip.

``fan_hub``: random-weight face-alignment files in the exact format face-alignment 1.5.0 loads.

``2DFAN4-11f355bf06.pth.tar`` = ``torch.save(FAN(4).state_dict())`` (the package loads it with
``torch.load(weights_only=True)`` + ``load_state_dict``) and ``s3fd-619a316812.pth`` =
``torch.save(s3fd().state_dict())``, both under ``<hub>/checkpoints``. Written once per
session (~185 MB).
"""
from __future__ import annotations

import os

import pytest


def write_fan_weights(hub_dir: str, seed: int = 0, detector: bool = True) -> str:
    """Write random FAN (and S3FD) weights under ``hub_dir/checkpoints``; returns hub_dir."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from dcnn_flame.data.landmarks import FAN_2D_FILE, S3FD_FILE

    ckpt = os.path.join(hub_dir, "checkpoints")
    os.makedirs(ckpt, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(FAN(4).state_dict(), os.path.join(ckpt, FAN_2D_FILE))
    if detector:
        torch.save(s3fd().state_dict(), os.path.join(ckpt, S3FD_FILE))
    return hub_dir


@pytest.fixture(scope="session")
def fan_hub(tmp_path_factory) -> str:
    """``<TORCH_HOME>/hub`` holding random FAN + S3FD weights (session-wide, written once);
    ``TORCH_HOME`` = its parent makes ``torch.hub.get_dir()`` point at it."""
    return write_fan_weights(str(tmp_path_factory.mktemp("torch_home") / "hub"))


@pytest.fixture()
def ray_s3(s3_bucket, request):
    """(ray module, (s3://bucket, StorageOptions)) with Ray workers able to reach the S3 server."""
    ray = request.getfixturevalue("ray_local")

    @ray.remote
    def worker_key():
        return os.environ.get("AWS_ACCESS_KEY_ID")

    if ray.get(worker_key.remote()) is None:
        pytest.skip("Ray workers have no AWS_* env: the session's Ray started before the S3 fixture")
    return ray, s3_bucket


@pytest.fixture()
def ray_local_s3_env(s3_server, ray_local):
    """ray_local, but started after the S3 server's env (so later S3 tests in the session work)."""
    return ray_local
