"""A FLAME file as FLAME distributes it: no UVs, no landmark embedding, no AU map, maybe in a
bucket. Every job must either use it (with the files that supply what it lacks) or say which
setting supplies it."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from dcnn_flame.config import FlameConfig, HeadDemoConfig
from dcnn_flame.flame.assets import save_flame_pickle
from dcnn_flame.flame.factory import load_flame_data
from dcnn_flame.flame.procedural import build_procedural_flame
from dcnn_flame.flame.uv import UVLayoutError, load_uv_layout
from dcnn_flame.flame.unpickler import FlameAssetError


@pytest.fixture(scope="module")
def head():
    return build_procedural_flame(seed=0, n_shape=20, n_expr=20, resolution="low")


def _official(head, path, **keep):
    """``head`` written as an official-style pickle: no UVs, no landmarks, no extras (AU map, albedo)."""
    bare = dataclasses.replace(head, uv_coords=keep.get("uv") and head.uv_coords,
                               uv_faces=keep.get("uv") and head.uv_faces,
                               landmarks=head.landmarks if keep.get("landmarks") else None, extras={})
    return str(save_flame_pickle(bare, path))


def _uv_npz(head, path):
    np.savez(path, vt=head.uv_coords, ft=head.uv_faces.astype(np.uint32), mean=np.zeros((4, 4, 3)))
    return str(path)


def _uv_obj(head, path, faces=None):
    from dcnn_flame.io.meshes import obj_bytes

    path.write_bytes(obj_bytes(head.v_template, head.faces if faces is None else faces, head.uv_coords,
                               head.uv_faces))
    return str(path)


def test_uv_layout_from_an_npz_or_the_template_obj(head, tmp_path):
    for path in (_uv_npz(head, tmp_path / "FLAME_texture.npz"), _uv_obj(head, tmp_path / "head_template.obj")):
        vt, ft = load_uv_layout(path, head.faces)
        np.testing.assert_allclose(vt, head.uv_coords, atol=1e-6)
        np.testing.assert_array_equal(ft, head.uv_faces)
    swapped = head.faces.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(UVLayoutError, match=r"face 0 is .* the head model's is .* \(2 faces differ\)"):
        load_uv_layout(_uv_obj(head, tmp_path / "other.obj", faces=swapped), head.faces)
    np.savez(tmp_path / "short.npz", vt=head.uv_coords, ft=head.uv_faces[:-1])
    with pytest.raises(UVLayoutError, match="ft is .* the head model has"):
        load_uv_layout(str(tmp_path / "short.npz"), head.faces)
    np.savez(tmp_path / "none.npz", mean=np.zeros(3))
    with pytest.raises(UVLayoutError, match=r"needs arrays vt .* it has \['mean'\]"):
        load_uv_layout(str(tmp_path / "none.npz"), head.faces)


def test_an_official_file_builds_the_model_with_uv_and_landmark_files(head, tmp_path):
    from dcnn_flame.model.build import build_model
    from dcnn_flame.model.config import ModelConfig

    from dcnn_flame.flame.assets import save_flame_model

    model_path = _official(head, tmp_path / "generic_model.pkl")
    # the same head with its landmark embedding, but no UVs (our .npz layout)
    with_lmk = str(save_flame_model(dataclasses.replace(head, uv_coords=None, uv_faces=None, extras={}),
                                    tmp_path / "with_landmarks.npz"))
    small = ModelConfig(backbone="resnet18", image_size=64, use_detail=False, albedo_size=32,
                        albedo_path=None)
    bare = load_flame_data(FlameConfig(model_path=model_path, n_shape=20, n_expr=20))
    assert bare.uv_coords is None and bare.landmarks is None
    with pytest.raises(FlameAssetError, match="flame.uv_path"):
        build_model(FlameConfig(model_path=model_path, n_shape=20, n_expr=20), small, bare)
    with_uv = load_flame_data(FlameConfig(model_path=model_path, uv_path=_uv_npz(head, tmp_path / "tex.npz")))
    np.testing.assert_array_equal(with_uv.uv_faces, head.uv_faces)
    with pytest.raises(FlameAssetError, match="flame.landmark_path"):  # was an AttributeError in the forward
        build_model(FlameConfig(n_shape=20, n_expr=20), small, dataclasses.replace(with_uv, extras=head.extras))
    # with both the model builds and runs (the procedural albedo stands in for FLAME_texture.npz)
    full = load_flame_data(FlameConfig(model_path=with_lmk, uv_path=str(tmp_path / "tex.npz")))
    import torch

    model = build_model(FlameConfig(n_shape=20, n_expr=20), small, dataclasses.replace(full, extras=head.extras))
    out = model.eval()(torch.rand(1, 1, 3, 64, 64), render=False)
    assert out.landmarks2d.shape[-2:] == (68, 2)


def test_flame_files_in_a_bucket_are_fetched_once_per_machine(head, s3_bucket, tmp_path, monkeypatch):
    from dcnn_flame.io import storage

    bucket, options = s3_bucket
    monkeypatch.setenv("DCNN_FLAME_CACHE", str(tmp_path / "cache"))
    local = _official(head, tmp_path / "flame2023_Open.pkl", uv=True, landmarks=True)
    uri = f"{bucket}/assets/flame/flame2023_Open.pkl"
    storage.atomic_write_bytes(uri, open(local, "rb").read(), options)
    data = load_flame_data(FlameConfig(model_path=uri, uv_path=None), options)
    assert data.source == uri  # messages name the object
    np.testing.assert_array_equal(data.v_template, load_flame_data(FlameConfig(model_path=local)).v_template)
    cached = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache") for f in fs]
    assert [os.path.basename(c) for c in cached] == ["flame2023_Open.pkl"]  # the name kept (edition)
    mtime = os.stat(cached[0]).st_mtime_ns
    load_flame_data(FlameConfig(model_path=uri), options)
    assert os.stat(cached[0]).st_mtime_ns == mtime  # not fetched again
    # a changed object is fetched again, beside the old copy
    moved = dataclasses.replace(head, v_template=head.v_template + 0.01, uv_coords=head.uv_coords,
                                uv_faces=head.uv_faces, extras={})
    save_flame_pickle(moved, tmp_path / "v2.pkl")
    storage.atomic_write_bytes(uri, open(tmp_path / "v2.pkl", "rb").read(), options)
    again = load_flame_data(FlameConfig(model_path=uri), options)
    np.testing.assert_allclose(again.v_template, head.v_template + 0.01, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="flame.landmark_path 's3://.*/missing.npy' does not exist"):
        load_flame_data(FlameConfig(model_path=uri, landmark_path=f"{bucket}/missing.npy"), options)
    # the albedo model too (credentials and endpoint from the environment, as on a cluster node)
    from dcnn_flame.model.albedo import AlbedoLoadError, load_albedo_npz

    mean = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    _uv_npz(head, tmp_path / "tex.npz")
    np.savez(tmp_path / "FLAME_texture.npz", mean=mean, tex_dir=np.zeros((8, 8, 3, 2), np.float32))
    storage.atomic_write_bytes(f"{bucket}/assets/FLAME_texture.npz", (tmp_path / "FLAME_texture.npz").read_bytes(),
                               options)
    monkeypatch.setenv("AWS_ENDPOINT_URL", options.endpoint_url)
    got, basis = load_albedo_npz(f"{bucket}/assets/FLAME_texture.npz")
    np.testing.assert_allclose(got, mean[..., ::-1] / 255.0, rtol=1e-6)  # stored BGR, read as RGB
    assert basis.shape == (8, 8, 3, 2)
    with pytest.raises(AlbedoLoadError, match="model.albedo_path 's3://.*/nope.npz' does not exist"):
        load_albedo_npz(f"{bucket}/assets/nope.npz")


def read_obj(path) -> tuple[np.ndarray]:
    """The vertex positions of an OBJ file, [V, 3]."""
    rows = [line.split()[1:4] for line in open(path) if line.startswith("v ")]
    return (np.asarray(rows, dtype=np.float64),)


def test_head_demo_with_a_file_without_an_au_map(head, tmp_path, capsys):
    from dcnn_flame.head_demo import JAW_ONLY_OPEN_RAD, run

    model_path = _official(head, tmp_path / "generic_model.pkl", uv=True, landmarks=True)
    cfg = HeadDemoConfig(flame=FlameConfig(model_path=model_path, n_shape=20, n_expr=20),
                         out_dir=str(tmp_path / "out"))
    written = run(cfg)
    assert "carries no AU -> expression map" in capsys.readouterr().out
    assert sorted(os.path.basename(w) for w in written) == ["head_turn.obj", "neutral.obj", "smile_head_turn.obj",
                                                            "smile_jaw_open.obj"]
    neutral = read_obj(tmp_path / "out" / "neutral.obj")[0]
    smile = read_obj(tmp_path / "out" / "smile_jaw_open.obj")[0]
    moved = np.linalg.norm(smile - neutral, axis=1)
    assert moved.max() > 1e-3 and (moved < 1e-9).mean() > 0.3  # the jaw opened, the skull stayed
    assert JAW_ONLY_OPEN_RAD > 0
    # with a map file the smile is the AU smile (expression components too)
    from dcnn_flame.flame.au_map import AUExpressionMap

    AUExpressionMap.from_model_data(head).save_npz(tmp_path / "map.npz")
    run(dataclasses.replace(cfg, au_map_path=str(tmp_path / "map.npz"), out_dir=str(tmp_path / "out2")))
    au_smile = read_obj(tmp_path / "out2" / "smile_jaw_open.obj")[0]
    assert np.abs(au_smile - smile).max() > 1e-4


@pytest.mark.parametrize("layout", ["bfm", "flame_texture"])
def test_albedo_files_are_read_as_rgb(tmp_path, layout):
    """FLAME_albedo_from_BFM.npz is written by BFM_to_FLAME's col_to_tex (``img[y, x, ::-1] =
    rgb``, i.e. BGR) and FLAME_texture.npz is a cv2 (BGR) image; DECA reverses the channels of
    both. A skin tone and a basis vector that reddens must come out as such."""
    from dcnn_flame.model.albedo import load_albedo_npz

    side, skin, redden = 4, np.array([0.8, 0.6, 0.5]), np.array([0.1, 0.0, 0.0])
    mean_img = np.zeros((side, side, 3))
    basis_img = np.zeros((side, side, 3, 1))
    for y in range(side):
        for x in range(side):
            mean_img[y, x, ::-1] = skin  # as col_to_tex writes it
            basis_img[y, x, ::-1, 0] = redden
    if layout == "bfm":
        np.savez(tmp_path / "a.npz", MU=mean_img.reshape(-1), PC=basis_img.reshape(-1, 1))
    else:
        np.savez(tmp_path / "a.npz", mean=mean_img * 255.0, tex_dir=basis_img * 255.0)
    mean, basis = load_albedo_npz(str(tmp_path / "a.npz"))
    np.testing.assert_allclose(mean[1, 2], skin, atol=1e-6)
    np.testing.assert_allclose(basis[1, 2, :, 0], redden, atol=1e-6)
