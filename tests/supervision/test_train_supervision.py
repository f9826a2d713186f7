"""Training the supervision teachers (dcnn_flame.supervision.train / dataset / augment).

The tiny shards encode their labels visibly: AU12 = brightness of a mouth-region bar, AU1 =
brightness of a brow-region bar, the class = colour of a centre square (4 classes). A small
network can learn that in a few epochs, so "it learns" is a real, failing-when-broken check.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dcnn_flame.config import SupervisionTrainConfig
from dcnn_flame.constants import AU_COLUMNS, NUM_AUS, au_index
from dcnn_flame.data.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, decode_image, encode_png
from dcnn_flame.supervision import train as T
from dcnn_flame.supervision.augment import augment_batch
from dcnn_flame.supervision.bundle import load_teachers
from dcnn_flame.supervision.dataset import ImageStore, read_view_index, split_by_identity

REPO = pathlib.Path(__file__).resolve().parents[2]
COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
I12, I1 = au_index(12), au_index(1)


def make_rows(n_ident: int, views: int = 4, size: int = 32, seed: int = 0, au_missing: float = 0.0,
              cls_missing: float = 0.0) -> list[dict]:
    """Shard rows whose labels are painted into the images (see module docstring)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ident):
        imgs, aus, classes = [], [], []
        for _ in range(views):
            a12, a1 = rng.uniform(0, 1, 2)
            c = int(rng.integers(0, len(COLOURS)))
            img = np.clip(0.35 + 0.03 * rng.standard_normal((size, size, 3)), 0, 1)
            s = size
            img[int(.65 * s):int(.85 * s), int(.3 * s):int(.7 * s)] = 0.1 + 0.8 * a12
            img[int(.1 * s):int(.25 * s), int(.2 * s):int(.8 * s)] = 0.1 + 0.8 * a1
            img[int(.35 * s):int(.6 * s), int(.35 * s):int(.65 * s)] = COLOURS[c]
            au = np.full(NUM_AUS, np.nan, np.float32)  # AUs not painted are missing, not 0
            if rng.uniform() >= au_missing:
                au[I12], au[I1] = a12, a1
            imgs.append(encode_png(img))
            aus.append(au.tolist())
            classes.append(c if rng.uniform() >= cls_missing else -1)
        rows.append(dict(schema_version=SCHEMA_VERSION, sample_id=f"s{i}", identity=f"id{i:03d}", source="test",
                         split="train", num_views=views, image=imgs, au=aus, expression_class=classes))
    return rows


def write_shards(root: pathlib.Path, rows: list[dict], n_files: int = 2) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        pq.write_table(pa.Table.from_pylist(rows[f::n_files], schema=SAMPLE_SCHEMA), root / f"part{f}.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """40 identities x 4 views of 32x32 images in 2 shards."""
    return write_shards(tmp_path_factory.mktemp("sup") / "shards", make_rows(40))


def cfg_for(data, out, **kw) -> SupervisionTrainConfig:
    base = dict(data_uri=str(data), output_uri=str(out), input_size=32, decode_threads=2, device="cpu")
    base.update(kw)
    return SupervisionTrainConfig(**base)


# ----------------------------------------------------------------------------- split


def test_split_is_80_10_10_by_identity_and_deterministic():
    ids = np.asarray([f"p{i:02d}" for i in range(20) for _ in range(3)], dtype=object)  # 3 images each
    s = split_by_identity(ids, 0.1, 0.1, seed=42)
    assert [len(s.identities[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    sets = {k: set(v) for k, v in s.identities.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(ids.tolist())
    for k in ("train", "val", "test"):  # every image of an identity lands in that identity's split
        assert set(ids[s.positions[k]].tolist()) == sets[k]
        assert len(s.positions[k]) == 3 * len(sets[k])
    assert sum(len(p) for p in s.positions.values()) == len(ids)
    # Same identities in another order -> the same split; another seed -> another split.
    rev = split_by_identity(ids[::-1], 0.1, 0.1, seed=42)
    assert rev.identities == s.identities
    assert split_by_identity(ids, 0.1, 0.1, seed=43).identities != s.identities
    # Small sets keep one identity per non-empty split; impossible splits say so.
    assert [len(v) for v in split_by_identity(["a", "b", "c"], 0.1, 0.1, 0).identities.values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="identities"):
        split_by_identity(["a", "b"], 0.1, 0.1, 0)


# ----------------------------------------------------------------------------- reading


def test_read_view_index_flattens_views_and_keeps_missing_labels(tmp_path):
    rows = make_rows(5, views=3, seed=1)
    rows[1]["au"] = None  # a row without AU labels
    rows[2]["expression_class"] = None
    rows[3]["au"][1] = [float("nan")] * NUM_AUS
    rows[3]["expression_class"][2] = -1
    rows[4]["num_views"] = 2  # a shorter row: only its first 2 views are images
    write_shards(tmp_path / "d", rows, n_files=2)
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    idx = read_view_index(str(tmp_path / "d"))
    assert len(idx) == 4 * 3 + 2
    assert idx.au.shape == (14, NUM_AUS) and idx.au.dtype == np.float32
    # Files sorted (part0 = rows 0, 2, 4; part1 = rows 1, 3), then row and view order.
    assert [(idx.file[i], idx.row[i], idx.view[i]) for i in range(4)] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    assert idx.identity.tolist() == ["id000"] * 3 + ["id002"] * 3 + ["id004"] * 2 + ["id001"] * 3 + ["id003"] * 3
    for i in range(len(idx)):
        row = rows[int(idx.identity[i][2:])]
        v = idx.view[i]
        want_au = np.full(NUM_AUS, np.nan) if row["au"] is None else np.asarray(row["au"][v], dtype=np.float32)
        np.testing.assert_array_equal(idx.au[i], want_au)  # NaN stays NaN, never 0
        want_c = -1 if row["expression_class"] is None else row["expression_class"][v]
        assert idx.expression[i] == want_c
    assert np.isnan(idx.au[8:11]).all()  # row 1 had au=None
    assert (idx.expression[3:6] == -1).all()  # row 2 had no classes
    assert len(read_view_index(str(tmp_path / "d"), max_images=5)) == 5


def test_read_view_index_rejects_bad_inputs(tmp_path):
    rows = make_rows(2, views=1, seed=2)
    rows[0]["expression_class"] = [9]
    write_shards(tmp_path / "bad", rows, n_files=1)
    with pytest.raises(ValueError, match="expression_class 9"):
        read_view_index(str(tmp_path / "bad"))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        read_view_index(str(tmp_path / "other.parquet"))
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        read_view_index(str(tmp_path / "empty"))


def test_image_store_cached_and_streamed_agree_and_skip_bad_images(tmp_path):
    rows = make_rows(6, views=2, size=40, seed=3)
    rows[4]["image"][1] = b"not an image"
    write_shards(tmp_path / "d", rows, n_files=3)
    idx = read_view_index(str(tmp_path / "d"))
    cached = ImageStore(idx, 24, decode_threads=2)
    streamed = ImageStore(idx, 24, cache_max_bytes=0, decode_threads=2)
    assert cached.cached and not streamed.cached
    bad = [i for i in range(len(idx)) if idx.identity[i] == "id004" and idx.view[i] == 1]
    assert cached.bad == set(bad)
    everything = np.arange(len(idx))

    def collect(store, rng):
        got = {}
        for pos, imgs in store.batches(everything, 5, rng):
            assert imgs.dtype == torch.uint8 and imgs.shape[1:] == (3, 24, 24) and len(pos) == len(imgs) <= 5
            for p, im in zip(pos.tolist(), imgs):
                assert p not in got
                got[p] = im
        return got

    a, b = collect(cached, np.random.default_rng(0)), collect(streamed, np.random.default_rng(0))
    assert streamed.bad == set(bad)
    assert set(a) == set(b) == set(everything.tolist()) - set(bad)
    for p in a:
        assert torch.equal(a[p], b[p])
    # Each image = its PNG decoded and resized by Pillow (naive reference, one at a time).
    from PIL import Image

    for p in (0, 6):
        r = rows[int(idx.identity[p][2:])]
        ref = np.asarray(Image.fromarray(decode_image(r["image"][idx.view[p]])).resize((24, 24), Image.BILINEAR))
        np.testing.assert_array_equal(a[p].permute(1, 2, 0).numpy(), ref)
    # Shuffled orders differ from the plain order but cover the same images.
    plain = np.concatenate([p for p, _ in cached.batches(everything, 5)])
    shuffled = np.concatenate([p for p, _ in cached.batches(everything, 5, np.random.default_rng(1))])
    assert not np.array_equal(plain, shuffled) and sorted(plain) == sorted(shuffled)


# ----------------------------------------------------------------------------- augmentation


def test_augment_batch_flip_crop_and_jitter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 10)
    same = augment_batch(x, g, flip_prob=0.0, crop_scale_min=1.0, color_jitter=0.0)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)
    flipped = augment_batch(x, g, flip_prob=1.0, crop_scale_min=1.0, color_jitter=0.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-6, rtol=0)
    out = augment_batch(x, g, flip_prob=0.5, crop_scale_min=0.8, color_jitter=0.2)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    # A crop of a constant image stays constant; brightness-only jitter keeps a grey image grey.
    grey = torch.full((2, 3, 8, 8), 0.5)
    out = augment_batch(grey, g, crop_scale_min=0.5, color_jitter=0.1)
    assert (out - out[:, :1, :1, :1]).abs().max() < 1e-5
    assert ((out - 0.5).abs() <= 0.05 + 1e-5).all()
    # Same seed -> same augmentation.
    a = augment_batch(x, torch.Generator().manual_seed(5), crop_scale_min=0.8)
    b = augment_batch(x, torch.Generator().manual_seed(5), crop_scale_min=0.8)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- metrics


def test_au_metrics_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(9, NUM_AUS, generator=g)
    gt = torch.rand(9, NUM_AUS, generator=g)
    gt[torch.rand(9, NUM_AUS, generator=g) < 0.3] = float("nan")
    gt[:, 5] = float("nan")  # an AU never labelled
    gt[0] = float("nan")  # an image without labels
    m = T.au_metrics(pred, gt, threshold=0.5, eps=0.1)
    errs, rates, f1s = [], [], []
    for i in range(9):
        hits = [abs(pred[i, k] - gt[i, k]) < 0.1 for k in range(NUM_AUS) if not math.isnan(gt[i, k])]
        errs += [abs(float(pred[i, k] - gt[i, k])) for k in range(NUM_AUS) if not math.isnan(gt[i, k])]
        if hits:
            rates.append(sum(map(bool, hits)) / len(hits))
    for k in range(NUM_AUS):
        tp = fp = fn = 0
        for i in range(9):
            if math.isnan(gt[i, k]):
                continue
            p, t = bool(pred[i, k] >= 0.5), bool(gt[i, k] >= 0.5)
            tp, fp, fn = tp + (p and t), fp + (p and not t), fn + (t and not p)
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
        f1s.append(f1)
        assert (math.isnan(f1) and math.isnan(m["au_f1_per_au"][AU_COLUMNS[k]])) or \
            m["au_f1_per_au"][AU_COLUMNS[k]] == pytest.approx(f1)
    assert m["au_mae"] == pytest.approx(np.mean(errs), rel=1e-5)
    assert m["aumr"] == pytest.approx(np.mean(rates), rel=1e-6)
    assert m["au_f1"] == pytest.approx(np.nanmean(f1s), rel=1e-6)
    assert m["au_labels"] == len(errs)
    empty = T.au_metrics(pred[:2], torch.full((2, NUM_AUS), float("nan")))
    assert math.isnan(empty["au_mae"]) and math.isnan(empty["aumr"]) and empty["au_labels"] == 0

    # Baselines: the training mean per AU and the majority class, against a loop.
    train_au = torch.rand(6, NUM_AUS, generator=g)
    train_au[0, 3] = float("nan")
    b = T.baselines(train_au, torch.tensor([2, 2, 1, -1, -1, -1]), gt, torch.tensor([2, 1, 1, -1, 2, 2, 0, 3, 1]), 0.1)
    mean = [np.nanmean(train_au[:, k].numpy()) for k in range(NUM_AUS)]
    errs = [abs(mean[k] - float(gt[i, k])) for i in range(9) for k in range(NUM_AUS) if not math.isnan(gt[i, k])]
    assert b["au_mae_mean_baseline"] == pytest.approx(np.mean(errs), rel=1e-5)
    assert b["accuracy_majority_baseline"] == pytest.approx(3 / 8)
    assert T.expression_metrics(torch.eye(8)[[0, 1, 1]], torch.tensor([0, 1, -1]))["accuracy"] == 1.0


# ----------------------------------------------------------------------------- masking


def _nets(size=32):
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
    from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

    torch.manual_seed(0)
    au = AUDetector(AUDetectorConfig(input_size=size))
    ex = ExpressionClassifier(ExpressionClassifierConfig(input_size=size))
    return au, ex, torch.optim.Adam(au.parameters(), 1e-3), torch.optim.Adam(ex.parameters(), 1e-3)


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_missing_labels_reach_the_losses_as_missing(tmp_path, monkeypatch):
    """Half the labels missing: the losses get NaN / -1 for them (never 0) and training still steps."""
    write_shards(tmp_path / "d", make_rows(6, seed=4, au_missing=0.5, cls_missing=0.5), n_files=1)
    idx = read_view_index(str(tmp_path / "d"))
    assert 0 < np.isnan(idx.au[:, I12]).sum() < len(idx) and 0 < (idx.expression == -1).sum() < len(idx)
    store = ImageStore(idx, 32)
    seen = {"au": [], "cls": []}

    def spy_au(logits, targets, **kw):
        seen["au"].append(targets.clone())
        return T.__dict__["_real_au"](logits, targets, **kw)

    def spy_ce(logits, labels, **kw):
        seen["cls"].append(labels.clone())
        return T.__dict__["_real_ce"](logits, labels, **kw)

    monkeypatch.setitem(T.__dict__, "_real_au", T.au_bce_loss)
    monkeypatch.setitem(T.__dict__, "_real_ce", T.expression_ce_loss)
    monkeypatch.setattr(T, "au_bce_loss", spy_au)
    monkeypatch.setattr(T, "expression_ce_loss", spy_ce)
    au, ex, oa, oe = _nets()
    before = _state(au)
    pos_w = T.au_pos_weight(torch.from_numpy(idx.au), 10.0)
    # One batch holding every image: the targets the losses see are exactly the index's labels.
    out = T.train_epoch(au, ex, oa, oe, store, np.arange(len(idx)), len(idx), pos_w, np.random.default_rng(0),
                        torch.Generator().manual_seed(0), None)
    assert out["au_steps"] == out["expr_steps"] == 1
    got_au, got_cls = seen["au"][0], seen["cls"][0]
    assert got_au.shape == (len(idx), NUM_AUS)
    assert int(torch.isnan(got_au).sum()) == int(np.isnan(idx.au).sum())  # every missing AU is NaN ...
    assert int((got_au == 0).sum()) == 0  # ... and none became 0
    np.testing.assert_array_equal(np.sort(got_au[:, I12][~torch.isnan(got_au[:, I12])].numpy()),
                                  np.sort(idx.au[:, I12][~np.isnan(idx.au[:, I12])]))
    assert sorted(got_cls.tolist()) == sorted(idx.expression.tolist())  # -1 kept as -1
    assert math.isfinite(out["au_loss"]) and math.isfinite(out["ce_loss"])
    assert any(not torch.equal(before[k], v) for k, v in au.state_dict().items())


def test_all_au_labels_missing_never_moves_the_au_detector(tmp_path):
    write_shards(tmp_path / "d", make_rows(4, seed=5, au_missing=1.0), n_files=1)
    idx = read_view_index(str(tmp_path / "d"))
    assert np.isnan(idx.au).all()
    store = ImageStore(idx, 32)
    au, ex, oa, oe = _nets()
    au_before, ex_before = _state(au), _state(ex)
    out = T.train_epoch(au, ex, oa, oe, store, np.arange(len(idx)), 4, T.au_pos_weight(torch.from_numpy(idx.au)),
                        np.random.default_rng(0), torch.Generator().manual_seed(0), {"flip_prob": 0.5})
    assert out["au_steps"] == 0 and math.isnan(out["au_loss"]) and out["expr_steps"] == 4
    assert all(torch.equal(au_before[k], v) for k, v in au.state_dict().items())  # weights and BN stats
    assert any(not torch.equal(ex_before[k], v) for k, v in ex.state_dict().items())


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_training_learns_and_writes_loadable_teachers(tiny_shards, tmp_path):
    out = tmp_path / "out" / "teachers.pt"
    res = T.run(cfg_for(tiny_shards, out, epochs=4, lr=1e-3, lr_schedule="cosine"))
    test, val = res.metrics["test"], res.metrics["val"]
    assert res.metrics["identities"] == {"train": 32, "val": 4, "test": 4}
    assert res.metrics["images"] == {"train": 128, "val": 16, "test": 16}
    # Learning: well below predicting the training mean; far above the majority class.
    for m in (val, test):
        assert m["au_labels"] == 2 * 16
        assert m["au_mae"] < 0.6 * m["au_mae_mean_baseline"], m
        assert m["aumr"] > m["aumr_mean_baseline"], m
        assert m["accuracy"] >= max(0.75, m["accuracy_majority_baseline"] + 0.3), m
    # The teachers file reproduces the returned networks exactly.
    au, ex, meta = load_teachers(str(out))
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(au.eval()(x).probs, res.au_net(x).probs, rtol=0, atol=0)
        torch.testing.assert_close(ex.eval()(x).logits, res.expr_net(x).logits, rtol=0, atol=0)
    assert au.cfg.input_size == ex.cfg.input_size == 32
    assert meta["epochs"] == 4 and meta["data_uri"] == str(tiny_shards)
    assert meta["metrics"]["test"]["au_mae"] == pytest.approx(test["au_mae"])
    assert meta["config"]["lr"] == 1e-3
    report = json.loads((tmp_path / "out" / "teachers.metrics.json").read_text())
    assert report["format"] == T.METRICS_FORMAT and len(report["history"]) == 4
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # 1e-3, 8.5e-4, 5e-4, 1.5e-4
    assert [h["lr"] for h in report["history"]] == pytest.approx(cosine)
    assert set(report["split_identities"]["val"]).isdisjoint(report["split_identities"]["train"])
    assert report["best_epoch"]["au"] in range(1, 5)
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".tmp")]


@pytest.mark.slow
def test_init_from_starts_both_networks_from_a_teachers_file(tiny_shards, tmp_path, monkeypatch):
    first = tmp_path / "first.pt"
    T.run(cfg_for(tiny_shards, first, epochs=1))
    au_src, ex_src, _ = load_teachers(str(first))
    seen = {}
    real_fit = T.fit

    def spy(au_net, expr_net, *args, **kwargs):  # the networks as training starts
        seen["au"] = {k: v.clone() for k, v in au_net.state_dict().items()}
        seen["expr"] = {k: v.clone() for k, v in expr_net.state_dict().items()}
        return real_fit(au_net, expr_net, *args, **kwargs)

    monkeypatch.setattr(T, "fit", spy)
    T.run(cfg_for(tiny_shards, tmp_path / "second.pt", epochs=1, seed=7, init_from=str(first)))
    for name, src in (("au", au_src), ("expr", ex_src)):
        assert seen[name].keys() == src.state_dict().keys()
        assert all(torch.equal(seen[name][k], v) for k, v in src.state_dict().items()), name
    T.run(cfg_for(tiny_shards, tmp_path / "scratch.pt", epochs=1, seed=7))  # without it: another start
    assert not torch.equal(seen["au"]["fc2.weight"], au_src.state_dict()["fc2.weight"])
    assert not torch.equal(seen["au"]["trunk.layers.0.0.weight"], au_src.state_dict()["trunk.layers.0.0.weight"])
    # Progressive resizing: a file trained at 32 px starts a run at 48 px with the same weights,
    # and the networks run at the new size.
    T.run(cfg_for(tiny_shards, tmp_path / "bigger.pt", epochs=1, seed=7, input_size=48, init_from=str(first)))
    for name, src in (("au", au_src), ("expr", ex_src)):
        assert all(torch.equal(seen[name][k], v) for k, v in src.state_dict().items()), name
    au_big, ex_big, _ = load_teachers(str(tmp_path / "bigger.pt"))
    assert au_big.cfg.input_size == ex_big.cfg.input_size == 48
    # Anything but the input size must match, and the error names the file.
    other = T.AUDetector(T.AUDetectorConfig(input_size=32, channels=(8, 16, 32, 64, 64)))
    with pytest.raises(ValueError, match=r"first\.pt.*only input_size may differ"):
        T.init_from_teachers(other, ex_src, str(first))


@pytest.mark.slow
def test_hydra_compose_run_and_job_script(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dcnn_flame.config import register_configs

    data = write_shards(tmp_path / "shards", make_rows(10, views=2, seed=6), n_files=1)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train_supervision",
                      overrides=[f"storage.uri={tmp_path / 'store'}", "epochs=1", "input_size=32", "batch_size=8",
                                 "max_images=16", f"data_uri={data}"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, SupervisionTrainConfig) and obj.lr == 1e-4 and obj.seed == 42
    res = T.run(obj)
    assert res.output_uri == str(tmp_path / "store" / "teachers" / "teachers.pt")  # default under storage.uri
    assert res.metrics["images"]["train"] + res.metrics["images"]["val"] + res.metrics["images"]["test"] == 16
    assert pathlib.Path(res.metrics_uri).exists()

    out = tmp_path / "job" / "t.pt"
    env = dict(os.environ, DCNN_FLAME_HYDRA_DIR=str(tmp_path / "hydra"))
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train_supervision.py"), f"data_uri={data}",
                           f"output_uri={out}", "epochs=1", "input_size=32", "num_threads=1", "max_images=12"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout and out.exists() and (tmp_path / "job" / "t.metrics.json").exists()
    load_teachers(str(out))


@pytest.mark.slow
def test_reads_and_writes_s3(s3_bucket, tmp_path):
    import fsspec

    bucket, opts = s3_bucket
    local = write_shards(tmp_path / "shards", make_rows(6, views=2, seed=7), n_files=2)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": opts.endpoint_url})
    for p in sorted(local.iterdir()):
        fs.put_file(str(p), f"{bucket[5:]}/data/shards/{p.name}")
    cfg = cfg_for(f"{bucket}/data/shards", f"{bucket}/teachers/t.pt", epochs=1, batch_size=4)
    cfg.storage.endpoint_url = opts.endpoint_url
    res = T.run(cfg)
    assert res.metrics_uri == f"{bucket}/teachers/t.metrics.json"
    au, _, meta = load_teachers(f"{bucket}/teachers/t.pt", opts)
    assert meta["data_uri"] == f"{bucket}/data/shards" and sum(meta["metrics"]["images"].values()) == 12
    assert json.loads(fs.cat_file(f"{bucket[5:]}/teachers/t.metrics.json"))["cached"] is True
