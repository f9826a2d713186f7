"""Structured configs (typed dataclasses) registered in Hydra's ConfigStore.

Only job assembly (``jobs/*.py`` -> ``run(cfg)``) sees a whole config; library code takes
the small dataclass it needs (``FlameConfig``, ``StorageConfig``, ...) or plain arguments.
YAML files under ``configs/`` only select and override these schemas.

Each field has a docstring underneath it (read by ``python jobs/<job>.py --help`` users and
by the tests that check every field is documented).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class FlameConfig:
    """Which head model to use and how many of its components."""

    model_path: Optional[str] = None
    """FLAME model file (generic_model.pkl, flame2023*.pkl, or our .npz). None = the
    project's procedural FLAME-format head (no download needed)."""
    landmark_path: Optional[str] = None
    """68-landmark embedding: DECA ``landmark_embedding.npy`` or RingNet
    ``flame_static_embedding.pkl``. None = the embedding inside the model file, if any."""
    dynamic_landmark_path: Optional[str] = None
    """RingNet ``flame_dynamic_embedding.npy`` (contour by yaw); only with a RingNet static file."""
    eyelids_path: Optional[str] = None
    """Optional FLAME 2023 eyelid blendshapes (.npy/.npz with left and right arrays)."""
    n_shape: int = 100
    """Identity shape components used (<= 300 in FLAME files)."""
    n_expr: int = 50
    """Expression components used (<= 100 in FLAME files)."""
    use_eyelids: bool = False
    """Use eyelid blendshapes (needs a model that has them)."""
    dynamic_contour: bool = True
    """Pick the 17 contour landmarks by head yaw (needs a dynamic embedding)."""
    procedural_seed: int = 0
    """Seed of the procedural head (ignored when model_path is set)."""


@dataclass
class StorageConfig:
    """Where outputs go and how to reach the object store (fsspec URIs)."""

    uri: str = "outputs"
    """Root URI for outputs: a local path (default), file://, s3://bucket/prefix, gs://..."""
    endpoint_url: Optional[str] = None
    """S3-compatible endpoint (MinIO, Ceph, a test server). None = AWS default. The env var
    ``AWS_ENDPOINT_URL`` is used when this is None."""
    region: Optional[str] = None
    """S3 region; None = from the environment."""
    anon: bool = False
    """Anonymous access (public buckets). Credentials otherwise come from the standard
    AWS environment/config chain and are never written to configs or logs."""


@dataclass
class RayConfig:
    """How the driver reaches Ray."""

    address: Optional[str] = None
    """None = attach to ``RAY_ADDRESS`` when set (e.g. under ``ray job submit``), otherwise
    start a local Ray. "auto" = attach to a running cluster; "local" = always start one."""
    num_cpus: Optional[int] = None
    """Logical CPUs of a locally started Ray (None = all cores)."""
    object_store_memory: Optional[int] = None
    """Object store bytes of a locally started Ray (None = Ray's default)."""


@dataclass
class HeadDemoConfig:
    """The head-posing demo: build the head, pose it, write meshes."""

    flame: FlameConfig = field(default_factory=FlameConfig)
    """Head model."""
    out_dir: str = "demo_out"
    """Output directory or URI prefix for the OBJ/PLY files."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Object-store settings used when out_dir is a remote URI."""


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore (idempotent; called by jobs)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="head_demo_schema", node=HeadDemoConfig)
    cs.store(group="flame", name="flame_schema", node=FlameConfig)
    cs.store(group="storage", name="storage_schema", node=StorageConfig)
    cs.store(group="ray", name="ray_schema", node=RayConfig)
