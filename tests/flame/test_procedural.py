"""The procedural FLAME-format head: layout, determinism, semantics, round trip through the loader."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from dcnn_flame.constants import AU_IDS, NUM_AUS, au_index
from dcnn_flame.flame.assets import load_flame_model
from dcnn_flame.flame.au_map import AUExpressionMap
from dcnn_flame.flame.layer import FlameLayer
from dcnn_flame.flame.procedural import build_procedural_flame, main


@functools.lru_cache(maxsize=None)
def head(seed: int = 0):
    return build_procedural_flame(seed=seed)


def test_arrays_have_the_flame_layout():
    d = head()
    v = d.num_vertices
    assert 4000 <= v <= 7000, v
    assert d.faces.shape[1] == 3 and d.faces.min() == 0 and d.faces.max() == v - 1
    assert d.shapedirs.shape == (v, 3, 300) and d.exprdirs.shape == (v, 3, 100)
    assert d.posedirs.shape == (v, 3, 36)
    assert d.j_regressor.shape == (5, v) and d.lbs_weights.shape == (v, 5)
    np.testing.assert_allclose(d.lbs_weights.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(d.j_regressor.sum(1), 1.0, atol=1e-6)
    assert d.kintree_table.tolist()[0] == [-1, 0, 1, 1, 1]
    assert d.uv_faces.shape == d.faces.shape and d.uv_coords.min() >= 0 and d.uv_coords.max() <= 1
    assert d.eyelid_dirs.shape == (2, v, 3)
    lm = d.landmarks
    assert lm.static_faces.shape == (51,) and lm.full_faces.shape == (68,)
    assert lm.dynamic_faces.shape == (79, 17)
    np.testing.assert_allclose(lm.full_bary.sum(1), 1.0, atol=1e-6)
    assert (lm.full_bary >= -1e-6).all()
    alb = d.extras["albedo_mean"]
    assert alb.ndim == 3 and alb.shape[2] == 3 and 0 <= alb.min() and alb.max() <= 1


def test_same_seed_same_arrays_other_seed_other_identity_basis():
    a, b = build_procedural_flame(seed=3, n_shape=20, n_expr=30, resolution="low"), \
        build_procedural_flame(seed=3, n_shape=20, n_expr=30, resolution="low")
    for name in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    c = build_procedural_flame(seed=4, n_shape=20, n_expr=30, resolution="low")
    np.testing.assert_array_equal(a.v_template, c.v_template)  # same mean head and topology
    np.testing.assert_array_equal(a.exprdirs[..., :NUM_AUS], c.exprdirs[..., :NUM_AUS])  # AUs are fixed
    assert not np.allclose(a.shapedirs[..., 10:], c.shapedirs[..., 10:])  # random components differ
    assert not np.allclose(a.exprdirs[..., NUM_AUS:], c.exprdirs[..., NUM_AUS:])


def test_geometry_is_face_like():
    """Face looks along +z, head ~ human size, nose tip in front, eyes above mouth, symmetric."""
    d = head()
    v = d.v_template
    ext = v.max(0) - v.min(0)
    assert 0.12 < ext[0] < 0.25 and 0.18 < ext[1] < 0.40 and 0.15 < ext[2] < 0.30, ext
    pts = FlameLayer(d, n_shape=10, n_expr=10)().landmarks[0].numpy()
    nose_tip, chin = pts[30], pts[8]
    eye_l, eye_r = pts[36:42].mean(0), pts[42:48].mean(0)
    mouth = pts[48:68].mean(0)
    assert nose_tip[2] > max(eye_l[2], eye_r[2], mouth[2], chin[2])  # nose sticks out
    assert eye_l[1] > nose_tip[1] > mouth[1] > chin[1]  # vertical order
    assert abs(eye_l[0] + eye_r[0]) < 5e-3 and abs(eye_l[0] - eye_r[0]) > 0.04  # symmetric, apart
    # The mirror of the template (x -> -x) is the template itself, to within mesh spacing.
    mirrored = v * np.array([-1, 1, 1])
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(v).query(mirrored)
    assert np.percentile(dist, 95) < 3e-3


def _au_displacement(d, au: int) -> np.ndarray:
    return np.linalg.norm(d.exprdirs[:, :, au_index(au)], axis=1)


def test_au_components_are_localised_where_the_au_acts():
    d = head()
    layer = FlameLayer(d, n_shape=10, n_expr=NUM_AUS)
    lm = layer().landmarks[0].numpy()
    v = d.v_template
    brow_y = lm[17:27, 1].mean()
    mouth_c = lm[48:68].mean(0)

    def moved(au):
        disp = _au_displacement(d, au)
        return disp > 0.2 * disp.max(), disp

    for au in AU_IDS:
        mask, disp = moved(au)
        assert disp.max() > 1e-3, f"AU{au} barely moves anything ({disp.max():.2e} m)"
        assert mask.mean() < 0.25, f"AU{au} moves {mask.mean():.0%} of the head: not localised"
    for au in (1, 2, 4):  # brow actions act on the brows, far above the mouth
        mask, _ = moved(au)
        assert v[mask, 1].mean() > brow_y - 0.02, au
    for au in (12, 15, 20, 23, 25):  # lip actions act around the mouth
        mask, _ = moved(au)
        assert np.linalg.norm(v[mask].mean(0)[:2] - mouth_c[:2]) < 0.04, au
    # AU12 (lip corner puller) raises the lip corners; AU15 (depressor) lowers them.
    for au, sign in ((12, +1), (15, -1)):
        e = torch.zeros(1, NUM_AUS)
        e[0, au_index(au)] = 1.0
        moved_lm = layer(expression=e).landmarks[0].numpy()
        corners = moved_lm[[48, 54], 1] - lm[[48, 54], 1]
        assert (sign * corners > 1e-3).all(), (au, corners)


def _vertex_normals(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] area-weighted unit vertex normals (naive scatter of face normals)."""
    n = np.zeros_like(v)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


def test_lower_face_aus_change_shading_and_au14_au23_au17_have_their_own_cues():
    """On plain skin an image detector sees an AU through the surface normals it turns
    (shading) more than through a smooth shift, which in one image looks like another
    identity. Every AU of the nose, mouth and chin at intensity 1 turns some normal by 20+
    degrees (AU17 and AU23 once turned theirs by 12-14 degrees; brow, lid and cheek AUs also
    move the brows' and lids' own colour edges), and AU23 (lip tightener) no longer shares AU14's
    corner pull (their fields had cosine 0.60)."""
    d = head()
    v, faces = d.v_template.astype(np.float64), d.faces.astype(np.int64)
    n0 = _vertex_normals(v, faces)
    for au in (9, 10, 12, 14, 15, 17, 20, 23):
        n1 = _vertex_normals(v + d.exprdirs[:, :, au_index(au)], faces)
        turn = np.degrees(np.arccos(np.clip((n0 * n1).sum(1), -1.0, 1.0)))
        assert turn.max() > 20.0, f"AU{au} turns surface normals by {turn.max():.1f} deg at most"
    a14, a23 = (d.exprdirs[:, :, au_index(a)].ravel() for a in (14, 23))
    cos = float(a14 @ a23 / (np.linalg.norm(a14) * np.linalg.norm(a23)))
    assert cos < 0.4, f"AU14 and AU23 fields have cosine {cos:.2f}"
    # AU17 pushes the lower lip and the chin boss forward, the furrow between them much less
    # (it deepens): along the face's outer midline (z > 75 mm excludes the mouth's inside;
    # the head's slit is at y = -50 mm, its chin at -83 mm) forward, back, forward.
    mid = (np.abs(v[:, 0]) < 0.004) & (v[:, 2] > 0.075)
    dz = d.exprdirs[:, 2, au_index(17)]

    def peak(lo, hi):
        return dz[mid & (v[:, 1] > lo) & (v[:, 1] < hi)].max()

    lip, furrow, boss = peak(-0.060, -0.054), peak(-0.066, -0.061), peak(-0.075, -0.069)
    assert furrow < 0.5 * min(lip, boss), \
        f"AU17 forward motion: lip {lip:.4f}, furrow {furrow:.4f}, boss {boss:.4f} m"


def test_jaw_opening_parts_the_lips_and_au_map_drives_the_jaw():
    d = head()
    layer = FlameLayer(d, n_shape=10, n_expr=NUM_AUS)
    amap = AUExpressionMap.from_model_data(d).truncated(NUM_AUS)
    au = torch.zeros(1, NUM_AUS)
    au[0, au_index(26)] = 1.0
    expr, jaw = amap(au)
    assert jaw[0, 0] > 0.2 and torch.allclose(jaw[0, 1:], torch.zeros(2))
    pose = torch.zeros(1, 15)
    pose[:, 6:9] = jaw
    lm0 = layer().landmarks[0]
    lm1 = layer(expression=expr, pose=pose).landmarks[0]
    gap0 = lm0[62, 1] - lm0[66, 1]  # inner upper lip above inner lower lip
    gap1 = lm1[62, 1] - lm1[66, 1]
    assert gap1 - gap0 > 0.01, (gap0, gap1)
    assert lm1[8, 1] < lm0[8, 1] - 0.01  # the chin drops


def test_eyeball_rotation_turns_the_eyes_only():
    d = head()
    layer = FlameLayer(d, n_shape=10, n_expr=NUM_AUS)
    pose = torch.zeros(1, 15)
    pose[:, 10] = 0.3  # left eye yaw
    moved = (layer(pose=pose).vertices[0] - layer().vertices[0]).norm(dim=1).numpy()
    part = d.extras["vertex_part"]
    assert moved[part == 1].max() > 1e-3
    assert moved[part != 1].max() < moved[part == 1].max() * 0.5


def test_pickle_and_npz_round_trip_through_the_loader(tmp_path):
    out = tmp_path / "head.pkl"
    assert main(["--out", str(out), "--seed", "1", "--resolution", "low", "--n-shape", "40",
                 "--n-expr", "30"]) == 0
    want = build_procedural_flame(seed=1, n_shape=40, n_expr=30, resolution="low")
    got = load_flame_model(out)
    for name in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "lbs_weights", "uv_faces"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    np.testing.assert_array_equal(got.landmarks.dynamic_faces, want.landmarks.dynamic_faces)
    # The loaded model poses exactly like the built one.
    params = dict(shape=torch.randn(2, 40), expression=torch.randn(2, 30) * 0.5,
                  pose=torch.randn(2, 15) * 0.2)
    a, b = FlameLayer(want, 40, 30)(**params), FlameLayer(got, 40, 30)(**params)
    torch.testing.assert_close(a.vertices, b.vertices)
    torch.testing.assert_close(a.landmarks, b.landmarks)
    npz = tmp_path / "head.npz"
    assert main(["--out", str(npz), "--npz", "--resolution", "low", "--n-shape", "20", "--n-expr", "20"]) == 0
    assert load_flame_model(npz).num_vertices == want.num_vertices


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="n_expr"):
        build_procedural_flame(n_expr=5)
    with pytest.raises(ValueError, match="resolution"):
        build_procedural_flame(resolution="ultra")


def test_au_map_from_npz_and_errors(tmp_path):
    amap = AUExpressionMap.from_model_data(head())
    path = amap.save_npz(tmp_path / "map.npz")
    again = AUExpressionMap.from_npz(path)
    torch.testing.assert_close(again.au_to_expr, amap.au_to_expr)
    assert amap.truncated(10).num_expression == 10 and amap.truncated(120).num_expression == 120
    with pytest.raises(ValueError, match="17"):
        amap(torch.zeros(2, 5))
    np.savez(tmp_path / "bad.npz", au_to_expr=np.zeros((17, 3)))
    with pytest.raises(ValueError, match="au_to_jaw"):
        AUExpressionMap.from_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        AUExpressionMap.from_npz(tmp_path / "missing.npz")
