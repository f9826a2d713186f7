"""Every Hydra config file composes and instantiates into its typed schema."""
from __future__ import annotations

import dataclasses
import inspect
import pathlib

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dcnn_flame import config as cfgmod

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())


def _group_defaults(primary: str) -> list[str]:
    import yaml

    data = yaml.safe_load((CONFIG_DIR / f"{primary}.yaml").read_text())
    groups = []
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            groups.extend(k.split("@")[0].lstrip("/") for k in entry if not k.startswith("override"))
    return groups


def _cases():
    for primary in PRIMARY:
        yield primary, None, None
        for group in _group_defaults(primary):
            for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
                yield primary, group, option


def _fill_missing(cfg):
    """Give ??? values a placeholder so the schema can be instantiated."""
    for key in list(cfg.keys()) if OmegaConf.is_dict(cfg) else []:
        if OmegaConf.is_missing(cfg, key):
            cfg[key] = "placeholder"
        elif OmegaConf.is_dict(cfg[key]):
            _fill_missing(cfg[key])


@pytest.mark.parametrize("primary,group,option", list(_cases()))
def test_config_composes(primary, group, option):
    cfgmod.register_configs()
    overrides = [f"{group}={option}"] if group else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=primary, overrides=overrides)
    _fill_missing(cfg)
    obj = OmegaConf.to_object(cfg)
    assert dataclasses.is_dataclass(obj)


def test_every_group_is_used_by_a_primary_config():
    used = {g for p in PRIMARY for g in _group_defaults(p)}
    assert set(GROUPS) <= used, f"config groups nobody selects: {set(GROUPS) - used}"


def test_every_config_field_has_a_docstring():
    """Each dataclass field in config.py is followed by a string literal (its docstring)."""
    import ast

    src = inspect.getsource(cfgmod)
    tree = ast.parse(src)
    missing = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "dataclass" or getattr(getattr(d, "func", None), "id", None) == "dataclass"
                for d in node.decorator_list):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    if not (isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                            and isinstance(nxt.value.value, str)):
                        missing.append(f"{node.name}.{stmt.target.id}")
    assert not missing, f"config fields without a docstring: {missing}"


def test_synthetic_au_preset_is_the_synthetic_source_with_detector_settings():
    """source=synthetic_au: the synthetic source (same job path) with the AU-detector settings;
    the command line still wins over the preset."""
    cfgmod.register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=["source=synthetic_au", "synthetic.image_size=112"])
        plain = compose(config_name="prepare", overrides=["source=synthetic"])
    obj = OmegaConf.to_object(cfg)
    assert (obj.source, obj.input_uri, obj.num_views) == (plain.source, plain.input_uri, plain.num_views)
    s = obj.synthetic
    assert (s.free_au_fraction, s.jaw_noise_deg, s.expr_noise, s.store_vertices) == (0.9, 0.25, 0.1, False)
    assert s.image_size == 112 and plain.synthetic.image_size == 224
    assert plain.synthetic.jaw_noise_deg == 1.0  # the plain world keeps its nuisance


def test_storage_s3_without_a_bucket_uri_is_refused_where_a_job_writes_under_it():
    """``storage=s3`` without ``storage.uri``: OmegaConf keeps the schema's local default when
    the group's ``???`` is merged, so outputs went to ./outputs without a word."""
    from dcnn_flame.data.ingest import output_uri_of
    from dcnn_flame.generation.pipeline import run as generate
    from dcnn_flame.query import run as query
    from dcnn_flame.training.trainer import runs_uri as storage_path

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        extra = {"prepare": ["input_uri=s3://b/library"]}
        composed = {name: OmegaConf.to_object(compose(config_name=name, overrides=["storage=s3", *extra.get(name, [])]))
                    for name in ("train", "generate", "prepare", "query")}
        bucket = OmegaConf.to_object(compose(config_name="train", overrides=["storage=s3",
                                                                             "storage.uri=s3://b/dcnn"]))
    assert {c.storage.kind for c in composed.values()} == {"s3"}
    assert composed["train"].storage.uri == "outputs"  # what the merge leaves
    for call in (lambda: storage_path(composed["train"]), lambda: output_uri_of(composed["prepare"]),
                 lambda: generate(composed["generate"]), lambda: query(composed["query"])):
        with pytest.raises(ValueError, match=r"storage=s3 but storage.uri is 'outputs', a local path.*"
                                             r"storage.uri=s3://<bucket>/<prefix>"):
            call()
    assert storage_path(bucket) == "s3://b/dcnn/runs"
    # an explicit output URI needs no storage.uri (jobs/generate.py's own example)
    explicit = dataclasses.replace(composed["prepare"], output_uri="s3://b/prepared/x")
    assert output_uri_of(explicit) == "s3://b/prepared/x"
    assert cfgmod.StorageConfig().root() == "outputs"  # local, the default
