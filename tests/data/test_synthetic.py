"""The synthetic face world: sampling, ground truth, and its Parquet shards."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dcnn_flame.config import PrepareConfig, SyntheticConfig
from dcnn_flame.constants import AU_IDS, EXPRESSION_CLASSES, NUM_AUS, NUM_LANDMARKS
from dcnn_flame.data import schema
from dcnn_flame.data.synthetic import (
    SyntheticWorld, affectnet_au_prototypes, identity_name, procedural_head, sh_from_lights, world_for)
from dcnn_flame.data.synthetic_shards import plan_shards, write_synthetic_shards

SIZE = 96
CFG = SyntheticConfig(image_size=SIZE, antialias=False)
SMALL = SyntheticConfig(image_size=48, antialias=False, store_vertices=False)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small renders: intra-op threads only add synchronisation
    yield world_for(CFG)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def views(world):
    """8 identities = 32 views of seed 11."""
    return world.generate(11, 0, 8)


def _cat(ids, name):
    return np.concatenate([getattr(i, name) for i in ids])


# ------------------------------------------------------------------------------- lighting


def test_sh_from_lights_is_ambient_plus_order2_clamped_cosine():
    from dcnn_flame.render.shading import sh_shading

    rng = np.random.default_rng(0)
    amb, strength = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    normals = rng.normal(size=(50, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.concatenate([normals, d[None], -d[None]])
    sh = sh_from_lights(amb, strength, d)
    got = sh_shading(torch.tensor(normals.T[None, :, :, None]), torch.tensor(sh[None]))[0, :, :, 0].numpy().T
    for k, n in enumerate(normals):  # naive per normal: E = a + I (1/4 + c / 2 + 5/16 P2(c))
        c = float(n @ d)
        want = amb + strength * (0.25 + 0.5 * c + 5.0 / 16.0 * (3 * c * c - 1) / 2)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[-2], amb + 1.0625 * strength, rtol=1e-6)  # facing the light
    np.testing.assert_allclose(got[-1], amb + 0.0625 * strength, rtol=1e-6)  # facing away


def test_albedo_map_adds_the_basis_texel_by_texel(world):
    mean = world.data.extras["albedo_mean"].astype(np.float64)  # [Ht, Wt, 3]
    basis = world.data.extras["albedo_basis"].astype(np.float64)  # [Ht, Wt, 3, K]
    code = np.random.default_rng(0).standard_normal(basis.shape[-1]) * 2.0
    got = world.albedo_map(torch.from_numpy(code).float())[0].numpy()  # [3, Ht, Wt]
    for y, x, c in [(40, 200, 0), (131, 111, 1), (150, 120, 2), (131, 112, 0), (200, 64, 1)]:
        want = mean[y, x, c] + sum(code[k] * basis[y, x, c, k] for k in range(basis.shape[-1]))
        assert got[c, y, x] == pytest.approx(min(max(want, 0.0), 1.0), abs=1e-5), (y, x, c)
    # Skin is smooth: no texel-scale pattern (a channel-order mix-up makes one).
    skin = got[0, 120:140, 100:140]
    assert np.abs(np.diff(skin, axis=1)).mean() < 0.01


# ----------------------------------------------------------------------------- sampling


def test_an_identity_depends_only_on_seed_and_index(world):
    batch = world.generate(7, 0, 3)
    alone = world.generate(7, 2, 1)[0]
    a = batch[2]
    assert a.identity == alone.identity == identity_name(7, 2)
    for name in ("images", "landmarks", "au", "expression_class", "shape", "albedo", "expression", "pose",
                 "camera", "light", "vertices"):
        np.testing.assert_array_equal(getattr(a, name), getattr(alone, name), err_msg=name)
    other = world.generate(8, 2, 1)[0]
    assert not np.array_equal(other.shape, a.shape)
    assert not np.array_equal(other.images, a.images)
    # The image size only changes the background noise stream, not the face.
    small = world_for(SMALL).sample(7, 2)
    big = world.sample(7, 2)
    for name in ("shape", "albedo", "au", "global_pose", "neck_pose", "eye_pose", "light", "face_fill"):
        np.testing.assert_array_equal(getattr(small, name), getattr(big, name), err_msg=name)


def test_views_share_the_identity_and_vary_pose_expression_light(views):
    for ident in views:
        assert ident.num_views == 4
        assert ident.images.shape == (4, SIZE, SIZE, 3) and ident.images.dtype == np.uint8
        assert ident.shape.shape == (CFG.n_shape,) and ident.expression.shape == (4, CFG.n_expr)
        assert len({tuple(p) for p in ident.pose.round(6)}) == 4
        assert len({tuple(x) for x in ident.light.round(6)}) == 4
    assert len({tuple(i.shape[:3].round(6)) for i in views}) == len(views)


def test_head_pose_stays_in_the_stated_ranges(world, views):
    params = [world.sample(11, i) for i in range(len(views))]
    yaw_sampled = np.concatenate([p.head_angles[:, 0] for p in params])
    # FlameLayer's head yaw (global then neck) is exactly the sampled yaw: the neck's share
    # is compensated by the global rotation.
    np.testing.assert_allclose(_cat(views, "head_yaw"), yaw_sampled, atol=1e-3)
    assert np.abs(yaw_sampled).max() <= CFG.max_yaw_deg
    angles = np.concatenate([p.head_angles for p in params])
    assert np.all(np.abs(angles[:, 1]) <= CFG.max_pitch_deg) and np.all(np.abs(angles[:, 2]) <= CFG.max_roll_deg)
    # Naive check of the composition with rotation matrices: R_global R_neck = R_y R_x R_z.
    from scipy.spatial.transform import Rotation

    for p in params[:2]:
        for v in range(4):
            head = Rotation.from_rotvec(p.global_pose[v]).as_matrix() @ Rotation.from_rotvec(p.neck_pose[v]).as_matrix()
            y, x, z = np.deg2rad(p.head_angles[v])
            ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
            rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
            rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
            np.testing.assert_allclose(head, ry @ rx @ rz, atol=1e-9)


def test_aus_follow_the_class_prototype_and_drive_the_expression(world, views):
    from dcnn_flame.flame.au_map import AUExpressionMap

    protos = affectnet_au_prototypes()
    au, cls = _cat(views, "au"), _cat(views, "expression_class")
    assert au.shape == (32, NUM_AUS) and au.dtype == np.float32
    assert au.min() >= 0.0 and au.max() <= 1.0
    assert set(cls.tolist()) <= set(range(len(EXPRESSION_CLASSES))) and len(set(cls.tolist())) >= 4
    for a, c in zip(au, cls):
        p = protos[c]
        if not p.any():  # neutral: noise only
            assert a.max() < 0.25
            continue
        k = float(a @ p / (p @ p))  # least-squares intensity of the prototype
        assert 0.3 < k < 1.25, (EXPRESSION_CLASSES[c], k)
        assert np.abs(a - k * p).mean() < 0.15
    # The stored AUs are exactly what drove the face: the AU map of them gives the first
    # 17 expression components and (up to the sampled jaw noise) the jaw.
    expr, jaw = AUExpressionMap.from_model_data(world.data)(torch.from_numpy(au))
    np.testing.assert_allclose(_cat(views, "expression")[:, :NUM_AUS], expr[:, :NUM_AUS].numpy(), atol=1e-6)
    jaw_err = np.abs(_cat(views, "pose")[:, 6:9] - jaw.numpy())
    assert jaw_err.max() < math.radians(5 * CFG.jaw_noise_deg)


def test_free_au_views_decorrelate_the_aus_and_leave_the_rest_unchanged(world):
    from dataclasses import replace

    free = SyntheticWorld(replace(SMALL, free_au_fraction=0.5, free_au_rate=0.3), world.data)
    base = SyntheticWorld(SMALL, world.data)
    lo, hi = SMALL.au_intensity
    rows_free, rows_class = [], []
    for i in range(150):  # 600 views, parameters only (no rendering)
        a, b = free.sample(3, i), base.sample(3, i)
        for name in ("shape", "albedo", "global_pose", "eye_pose", "light", "face_fill", "expr_extra"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for v in range(len(a.au)):
            if a.expression_class[v] == -1:
                rows_free.append(a.au[v])
            else:  # a class view is exactly the view of the world without free views
                assert a.expression_class[v] == b.expression_class[v]
                np.testing.assert_array_equal(a.au[v], b.au[v])
                rows_class.append(a.au[v])
    free_au, class_au = np.array(rows_free), np.array(rows_class)
    assert 0.4 < len(free_au) / 600 < 0.6
    active = free_au > 0
    assert abs(active.mean() - 0.3) < 0.03
    assert free_au[active].min() >= lo and free_au.max() <= hi
    # AU6 (cheek raiser) and AU12 (lip corner puller) come together in joy; free views untie them
    i6, i12 = AU_IDS.index(6), AU_IDS.index(12)
    assert np.corrcoef(class_au[:, i6], class_au[:, i12])[0, 1] > 0.5
    assert abs(np.corrcoef(free_au[:, i6], free_au[:, i12])[0, 1]) < 0.15
    with pytest.raises(ValueError, match="free_au_fraction"):
        SyntheticWorld(replace(SMALL, free_au_fraction=1.5), world.data)


# --------------------------------------------------------------------------- geometry


def test_ground_truth_reproduces_through_flame_and_the_camera(world, views):
    ident = views[0]
    out = world.flame(shape=torch.from_numpy(ident.shape).expand(4, -1), expression=torch.from_numpy(ident.expression),
                      pose=torch.from_numpy(ident.pose))
    np.testing.assert_allclose(out.vertices.numpy(), ident.vertices, atol=1e-6)
    np.testing.assert_allclose(out.landmarks.numpy(), ident.landmarks3d, atol=1e-6)
    for v in range(4):  # naive projection: x_ndc = s (x + tx); u = (x_ndc + 1) W / 2; v = (1 - y_ndc) H / 2
        s, tx, ty = ident.camera[v].astype(np.float64)
        for k in range(NUM_LANDMARKS):
            x, y, _ = ident.landmarks3d[v, k]
            want = ((s * (x + tx) + 1) * SIZE / 2, (1 - s * (y + ty)) * SIZE / 2)
            np.testing.assert_allclose(ident.landmarks[v, k], want, atol=1e-3)
    lmk = _cat(views, "landmarks")
    extent = (lmk.max(axis=1) - lmk.min(axis=1)).max(axis=1) / SIZE  # the camera's fit: face_fill
    assert np.all(extent > CFG.face_fill[0] - 1e-3) and np.all(extent < CFG.face_fill[1] + 1e-3)


def test_landmarks_fall_on_the_rendered_face(world, views):
    lmk, mask, depth = _cat(views, "landmarks"), _cat(views, "mask"), _cat(views, "depth")
    l3d, yaw = _cat(views, "landmarks3d"), _cat(views, "head_yaw")
    pitch = np.concatenate([world.sample(11, i).head_angles[:, 1] for i in range(len(views))])
    col = np.clip(np.floor(lmk[..., 0]).astype(int), 0, SIZE - 1)
    row = np.clip(np.floor(lmk[..., 1]).astype(int), 0, SIZE - 1)
    rows = np.arange(len(lmk))[:, None]
    inside = mask[rows, row, col]
    frontal = (np.abs(yaw) < 25) & (np.abs(pitch) < 20)
    assert frontal.sum() >= 5
    # All 51 inner landmarks of near-frontal views lie on the head (at 30 degrees of yaw the
    # outer end of a brow already reaches the silhouette); far-side contour points at
    # large yaw may sit on the silhouette, so overall we ask for >= 90%.
    assert inside[frontal][:, 17:].all()
    assert inside.mean() >= 0.9, inside.mean()
    # And they are *visible*: the rendered depth at the nose tip (30) and the inner eye corners
    # (39, 42) of near-frontal views is the landmark's own depth (-z), not a surface in front.
    for k in (30, 39, 42):
        got = depth[rows[:, 0], row[:, k], col[:, k]][frontal]
        want = -l3d[frontal, k, 2]
        assert np.abs(got - want).max() < 4e-3, (k, np.abs(got - want).max())


def test_rows_follow_the_schema(world, views):
    import pyarrow as pa

    ident = views[1]
    row = ident.to_row("train")
    table = pa.Table.from_pylist([row], schema=schema.SAMPLE_SCHEMA)
    schema.check_table(table)
    got = table.to_pylist()[0]
    assert got["num_views"] == 4 and got["landmark_source"] == ["ground_truth"] * 4
    assert got["sample_id"] == f"synthetic/{ident.identity}/00000"
    for v in range(4):
        np.testing.assert_array_equal(schema.decode_image(got["image"][v]), ident.images[v])
        np.testing.assert_allclose(np.reshape(got["landmarks"][v], (68, 2)), ident.landmarks[v], atol=1e-4)
        np.testing.assert_allclose(np.reshape(got["landmarks5"][v], (5, 2)),
                                   schema.landmarks5_from_68(ident.landmarks[v]), atol=1e-4)
        np.testing.assert_array_equal(schema.vertices_from_bytes(got["gt_vertices"][v]), ident.vertices[v])
        assert got["crop_box"][v] == [0.0, 0.0, float(SIZE), float(SIZE)]
        np.testing.assert_allclose(got["gt_light"][v], ident.light[v], rtol=1e-6)
    assert got["expression_class"] == ident.expression_class.tolist()
    assert ident.to_row("val", store_vertices=False)["gt_vertices"] is None


# ------------------------------------------------------------------------------- shards


def test_plan_splits_the_last_identities_into_val():
    specs = plan_shards(10, 3, 0.2)
    assert [(s.name, s.start, s.count) for s in specs] == [
        ("synthetic-train-00000", 0, 3), ("synthetic-train-00001", 3, 3), ("synthetic-train-00002", 6, 2),
        ("synthetic-val-00000", 8, 2)]
    with pytest.raises(ValueError, match="rows_per_shard"):
        plan_shards(10, 0, 0.2)


def _mtimes(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


def test_shards_read_back_and_a_rerun_writes_nothing(tmp_path):
    out = str(tmp_path / "synth")
    run = write_synthetic_shards(out, 5, rows_per_shard=2, seed=3, val_fraction=0.2, world=SMALL,
                                 parallel="serial", progress=False, contact_sheet_samples=3)
    assert (run.shards_total, run.shards_written, run.rows_written, run.images_written) == (3, 3, 5, 20)
    manifest = json.loads((tmp_path / "synth" / "manifest.json").read_text())
    assert manifest["rows"] == {"train": 4, "val": 1} and manifest["complete"] is True
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    train = pq.read_table(tmp_path / "synth" / "shards" / "train")
    val = pq.read_table(tmp_path / "synth" / "shards" / "val")
    schema.check_table(train)
    assert train.schema.equals(schema.SAMPLE_SCHEMA)
    assert train.schema.metadata[schema.SCHEMA_METADATA_KEY] == str(schema.SCHEMA_VERSION).encode()
    assert sorted(train.column("identity").to_pylist()) == [identity_name(3, i) for i in range(4)]
    assert val.column("identity").to_pylist() == [identity_name(3, 4)]
    assert set(val.column("split").to_pylist()) == {"val"}
    for row in train.to_pylist() + val.to_pylist():
        assert row["num_views"] == 4 and len(row["image"]) == 4 and row["gt_vertices"] is None
        assert schema.decode_image(row["image"][0]).shape == (48, 48, 3)
    # Same bytes as generating the identity directly.
    direct = world_for(SMALL).generate(3, 1, 1)[0].to_row("train", store_vertices=False)
    stored = [r for r in train.to_pylist() if r["identity"] == identity_name(3, 1)][0]
    assert stored["image"] == direct["image"] and stored["au"] == direct["au"]
    sheet = tmp_path / "synth" / "contact_sheet.png"
    from PIL import Image

    with Image.open(sheet) as im:  # 3 identities x 4 views of 48 px, 2 px padding
        assert im.size == (4 * 50 + 2, 3 * 50 + 2)

    before = _mtimes(out)
    again = write_synthetic_shards(out, 5, rows_per_shard=2, seed=3, val_fraction=0.2, world=SMALL,
                                   parallel="serial", progress=False, contact_sheet_samples=3)
    assert (again.shards_written, again.shards_skipped, again.images_written) == (0, 3, 0)
    assert _mtimes(out) == before
    with pytest.raises(ValueError, match="other settings"):
        write_synthetic_shards(out, 5, rows_per_shard=2, seed=4, val_fraction=0.2, world=SMALL,
                               parallel="serial", progress=False)


@pytest.mark.ray
def test_prepare_source_synthetic_with_ray_data(ray_local, tmp_path):
    import ray

    from dcnn_flame.data.ingest import run

    out = str(tmp_path / "prep")
    cfg = PrepareConfig(source="synthetic", input_uri="procedural", output_uri=out, rows_per_shard=2,
                        val_fraction=0.25, num_workers=2, progress=False, contact_sheet_samples=2,
                        synthetic=SyntheticConfig(num_identities=4, image_size=48, antialias=False))
    summary = run(cfg)
    # train: 3 rows -> 2 shards of <= 2 rows; val: 1 row -> 1 shard
    assert (summary.shards_total, summary.shards_written, summary.rows) == (3, 3, 4)
    assert summary.rows_per_split == {"train": 3, "val": 1}
    ds = ray.data.read_parquet(os.path.join(out, "shards"))
    rows = ds.take_all()
    assert len(rows) == 4
    assert all(r["num_views"] == 4 and len(r["image"]) == 4 and len(r["gt_vertices"]) == 4 for r in rows)
    assert sorted(r["identity"] for r in rows) == [identity_name(0, i) for i in range(4)]
    assert os.path.exists(os.path.join(out, "contact_sheet.png"))
    assert run(cfg).shards_written == 0  # the rerun skips every shard


@pytest.mark.slow
@pytest.mark.ray
def test_slow_shards_outlive_ray_datas_no_progress_guard(ray_local, tmp_path):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.execution_no_progress_timeout_s
    # Every shard takes longer than this (the writer actor builds its world first): the
    # process-wide guard stands for a busy machine where one shard takes minutes.
    ctx.execution_no_progress_timeout_s = 0.5
    kw = dict(num_identities=2, rows_per_shard=1, val_fraction=0.0, world=SMALL, parallel="ray", num_workers=1,
              progress=False, contact_sheet_samples=0)
    try:
        with pytest.raises(Exception, match="no progress"):
            write_synthetic_shards(str(tmp_path / "guarded"), **kw)
        run = write_synthetic_shards(str(tmp_path / "job"), stall_timeout_s=600.0, **kw)
    finally:
        ctx.execution_no_progress_timeout_s = saved
    assert run.shards_written == 2


@pytest.mark.slow
def test_process_pool_writes_the_same_shards_as_serial(tmp_path):
    a = write_synthetic_shards(str(tmp_path / "a"), 4, rows_per_shard=1, seed=5, val_fraction=0.0, world=SMALL,
                               parallel="serial", progress=False, contact_sheet_samples=0)
    b = write_synthetic_shards(str(tmp_path / "b"), 4, rows_per_shard=1, seed=5, val_fraction=0.0, world=SMALL,
                               parallel="process", num_workers=2, progress=False, contact_sheet_samples=0)
    assert a.manifest == b.manifest and b.shards_written == 4
    ta = pq.read_table(tmp_path / "a" / "shards" / "train").sort_by("identity")
    tb = pq.read_table(tmp_path / "b" / "shards" / "train").sort_by("identity")
    assert ta.equals(tb)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="class_weights"):
        SyntheticWorld(SyntheticConfig(image_size=32, class_weights=[1.0, 2.0]), procedural_head(0))
    with pytest.raises(ValueError, match="n_expr"):
        SyntheticWorld(SyntheticConfig(image_size=32, n_expr=10), procedural_head(0))
    with pytest.raises(ValueError, match="parallel"):
        write_synthetic_shards("/nonexistent", 1, parallel="threads")
