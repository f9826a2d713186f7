"""Within-face AU training (dcnn_flame.supervision.pairs): pair rendering, the loss against a naive
computation, synchronised augmentation, the metrics, the split and the command line."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from dcnn_flame.config import SyntheticConfig
from dcnn_flame.constants import NUM_AUS
from dcnn_flame.supervision.pairs import (PairSet, augment_pairs, contrast_metrics, fine_tune, main, neutral_of,
                                          pair_loss, render_pairs, render_pairs_parallel, split_pairs)

SIZE = 32


def _cfg(**kw) -> SyntheticConfig:
    base = dict(image_size=SIZE, free_au_fraction=0.9, au_intensity=[0.15, 1.0], max_yaw_deg=30,
                max_pitch_deg=15, jaw_noise_deg=0.25, expr_noise=0.1, store_vertices=False)
    return SyntheticConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def world():
    from dcnn_flame.data.synthetic import world_for

    return world_for(_cfg())


@pytest.fixture(scope="module")
def pairs(world):
    return render_pairs(world, 3, 0, 6)


def _net(seed: int = 0):
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig

    torch.manual_seed(seed)
    return AUDetector(AUDetectorConfig(input_size=SIZE))


def test_pairs_differ_only_in_the_face(world, pairs):
    assert len(pairs) == 6 * world.num_views
    assert pairs.neutral.shape == pairs.expressed.shape == (len(pairs), SIZE, SIZE, 3)
    assert pairs.neutral.dtype == np.uint8 and pairs.au.shape == (len(pairs), NUM_AUS)
    assert pairs.identity.tolist() == [i for i in range(6) for _ in range(world.num_views)]
    params = world.sample(3, 2)
    np.testing.assert_array_equal(pairs.au[8:12], params.au)
    n = neutral_of(params)
    assert not n.au.any() and not n.expr_extra.any() and not n.jaw_noise.any()
    np.testing.assert_array_equal(n.head_angles, params.head_angles)
    np.testing.assert_array_equal(n.light, params.light)
    # one camera for both, the neutral's framing: the expressed view is the world's render of
    # the view with that camera (the world alone frames each view by its own landmark box)
    neutral = world.render(n)
    expressed = world.render(params, camera=torch.from_numpy(neutral.camera))
    np.testing.assert_array_equal(pairs.neutral[8:12], neutral.images)
    np.testing.assert_array_equal(pairs.expressed[8:12], expressed.images)
    np.testing.assert_array_equal(expressed.camera, neutral.camera)
    assert np.abs(world.render(params).camera - neutral.camera).max() > 1e-4
    # so most of the image (the background) is the same pixel for pixel, and the face moves
    d = np.abs(pairs.expressed.astype(int) - pairs.neutral.astype(int)).max(-1)
    assert ((d == 0).reshape(len(pairs), -1).mean(1) > 0.4).all()
    moved = d.reshape(len(pairs), -1).mean(1)
    assert (moved[pairs.au.sum(1) > 0.5] > 0.1).all()
    # a view without AU and nuisance renders exactly its neutral
    from dcnn_flame.data.synthetic import world_for

    still = world_for(_cfg(free_au_fraction=0.0, class_weights=[1, 0, 0, 0, 0, 0, 0, 0], neutral_au_noise=0.0,
                           expr_noise=0.0, jaw_noise_deg=0.0))
    quiet = render_pairs(still, 3, 0, 1)
    assert not quiet.au.any()
    np.testing.assert_array_equal(quiet.expressed, quiet.neutral)
    with pytest.raises(ValueError, match="camera must be"):
        world.render(params, camera=torch.zeros(2, 3))


def test_parallel_rendering_is_the_serial_rendering(world, pairs):
    threads = torch.get_num_threads()
    # The worker processes render with one torch thread each, so their reference is the serial
    # rendering with one thread: a float reduction split over another number of threads may
    # round differently (seen: 1 of 73,728 values off by one level between 1 and 2 threads on
    # one CPU, none on another), which is no property of the chunking under test.
    torch.set_num_threads(1)
    try:
        one_thread = render_pairs(world, 3, 0, 6)
    finally:
        torch.set_num_threads(threads)
    for got, ref in ((render_pairs_parallel(_cfg(), 3, 6, processes=2, chunk=2), one_thread),
                     (render_pairs_parallel(_cfg(), 3, 6, processes=1), pairs)):  # the caller's threads
        for f in dataclasses.fields(PairSet):
            np.testing.assert_array_equal(getattr(got, f.name), getattr(ref, f.name))
    assert torch.get_num_threads() == threads  # the caller's torch threads are left alone


def test_pair_loss_matches_a_naive_computation(pairs):
    net = _net().eval()  # eval: BatchNorm does not depend on how the batch is put together
    n = torch.from_numpy(pairs.neutral[:5]).permute(0, 3, 1, 2).float() / 255
    e = torch.from_numpy(pairs.expressed[:5]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(pairs.au[:5])
    pw = torch.linspace(0.5, 3.0, NUM_AUS)
    loss, parts = pair_loss(net, n, e, y, pw, contrast_weight=2.5)
    with torch.no_grad():
        ln, le = net(n).logits.double(), net(e).logits.double()
    yd = y.double()

    def bce(logit, t):  # -[w t log s + (1 - t) log(1 - s)], mean over entries
        s = torch.sigmoid(logit)
        return float((-(pw.double() * t * torch.log(s) + (1 - t) * torch.log(1 - s))).mean())

    want_bce = bce(le, yd) + bce(ln, torch.zeros_like(yd))
    g = pw.double() * yd / (pw.double() * yd + 1 - yd)  # the weighted BCE's own optimum of y
    want_con = float(((torch.sigmoid(le) - torch.sigmoid(ln) - g) ** 2).mean())
    assert parts["bce"] == pytest.approx(want_bce, rel=1e-4)
    assert parts["contrast"] == pytest.approx(want_con, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(want_bce + 2.5 * want_con, rel=1e-4)
    with pytest.raises(ValueError, match="pairs need"):
        pair_loss(net, n, e[:4], y)


def test_the_contrast_target_is_the_minimum_of_the_weighted_bce():
    from dcnn_flame.supervision.pairs import bce_optimum

    p = torch.linspace(1e-4, 1 - 1e-4, 200001, dtype=torch.float64)
    for w in (1.0, 4.8, 10.0):
        for y in (0.0, 0.15, 0.5, 0.9, 1.0):
            loss = -(w * y * torch.log(p) + (1 - y) * torch.log(1 - p))
            got = float(bce_optimum(torch.full((1, NUM_AUS), y, dtype=torch.float64),
                                    torch.full((NUM_AUS,), w, dtype=torch.float64))[0, 0])
            assert got == pytest.approx(float(p[loss.argmin()]), abs=2e-4)
    y = torch.rand(3, NUM_AUS)
    assert bce_optimum(y, None) is y


def test_augmentation_is_the_same_for_both_images_of_a_pair():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, SIZE, SIZE)
    aug = dict(flip_prob=0.5, crop_scale_min=0.8, color_jitter=0.2)
    a, b = augment_pairs(x, x.clone(), gen, aug)
    torch.testing.assert_close(a, b)
    assert (a - x).abs().max() > 0.01  # it did augment
    a2, _ = augment_pairs(x, x, gen, aug)  # the generator moved on: new draws next time
    assert (a2 - a).abs().max() > 0.01


def test_contrast_metrics_match_a_naive_loop(pairs):
    net = _net(1)
    m = contrast_metrics(net, pairs, batch_size=7)
    net.eval()
    rows = []
    with torch.no_grad():
        for i in range(len(pairs)):
            n = torch.from_numpy(pairs.neutral[i:i + 1]).permute(0, 3, 1, 2).float() / 255
            e = torch.from_numpy(pairs.expressed[i:i + 1]).permute(0, 3, 1, 2).float() / 255
            rows.append((net(e).probs - net(n).probs)[0].double().numpy())
    resp = np.stack(rows)
    y = pairs.au.astype(np.float64)
    assert m["contrast_mae"] == pytest.approx(float(np.abs(resp - y).mean()), abs=1e-5)
    a = 5  # AU column 5 = au07
    slope = float((resp[:, a] * y[:, a]).sum() / (y[:, a] ** 2).sum())
    assert m["response_per_au_at_half"]["au07"] == pytest.approx(0.5 * slope, abs=1e-5)
    assert len(m["contrast_mae_per_au"]) == NUM_AUS
    off = y[:, a] == 0
    assert m["false_response"]["au07"] == pytest.approx(float(resp[off, a].mean()), abs=1e-5)
    # against the BCE optimum of a positive weight: g(y) = w y / (w y + 1 - y)
    w = 3.0
    g = w * y / (w * y + 1 - y)
    m3 = contrast_metrics(net, pairs, pos_weight=torch.full((NUM_AUS,), w))
    assert m3["contrast_mae"] == pytest.approx(float(np.abs(resp - g).mean()), abs=1e-5)


def test_split_keeps_each_face_on_one_side(pairs):
    train, val = split_pairs(pairs, 0.34, seed=0)
    assert len(train) + len(val) == len(pairs)
    assert set(train.identity.tolist()).isdisjoint(val.identity.tolist())
    assert len(set(val.identity.tolist())) == 2
    assert split_pairs(pairs, 0.34, seed=0)[1].identity.tolist() == val.identity.tolist()
    assert len(split_pairs(pairs, 0.0, seed=0)[1]) == 0


def test_fine_tuning_learns_a_change_between_the_images_of_a_pair():
    # pairs whose only difference is a square brightened by y (column au01): a detector that
    # learns the contrast must answer y for au01
    rng = np.random.default_rng(0)
    n = 64
    neutral = rng.integers(60, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.zeros((n, NUM_AUS), np.float32)
    y[:, 0] = rng.uniform(0.0, 1.0, n)
    expressed = neutral.astype(np.float32)
    expressed[:, 8:24, 8:24] += 110.0 * y[:, 0, None, None, None]
    pairs = PairSet(neutral, expressed.clip(0, 255).astype(np.uint8), y, np.arange(n))
    net = _net(2)
    for m in net.modules():  # running BatchNorm statistics = the average over all steps (few steps here)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    before = contrast_metrics(net, pairs)["contrast_mae_per_au"]["au01"]
    best, history = fine_tune(net, pairs, pairs, epochs=6, lr=2e-3, batch_size=8, seed=0, log=lambda s: None)
    after = contrast_metrics(net, pairs)
    assert len(history) == 6 and 1 <= best <= 6
    # the best epoch's weights are kept
    assert after["contrast_mae"] == pytest.approx(min(h["val"]["contrast_mae"] for h in history), abs=1e-6)
    assert history[-1]["train"]["contrast"] < 0.3 * history[0]["train"]["contrast"]
    assert after["contrast_mae_per_au"]["au01"] < 0.6 * before
    # without val pairs the last epoch is kept (not the starting weights)
    net2 = _net(2)
    start = copy.deepcopy(net2.state_dict())
    best, _ = fine_tune(net2, pairs.take(np.arange(16)), pairs.take(np.arange(0)), epochs=2, lr=2e-3,
                        batch_size=8, seed=0, log=lambda s: None)
    assert best == 2 and any((start[k] != v).any() for k, v in net2.state_dict().items())


def test_ridge_probe_and_what_the_within_face_change_shows():
    from dcnn_flame.supervision.pairs import feature_probe, ridge_r2

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20))
    y = np.stack([x @ rng.standard_normal(20), rng.standard_normal(300)], 1)
    lam, r2 = ridge_r2(x[:200], y[:200], x[200:], y[200:], lambdas=(0.1, 1.0))
    assert lam in (0.1, 1.0) and r2[0] > 0.99 and r2[1] < 0.1  # a linear target, then pure noise
    # naive: the closed form at that lambda
    mu, sd = x[:200].mean(0), x[:200].std(0) + 1e-6
    xt, xv = (x[:200] - mu) / sd, (x[200:] - mu) / sd
    w = np.linalg.solve(xt.T @ xt + lam * np.eye(20), xt.T @ (y[:200] - y[:200].mean(0)))
    pred = xv @ w + y[:200].mean(0)
    want = 1 - ((pred - y[200:]) ** 2).sum(0) / ((y[200:] - y[200:].mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(r2, want, rtol=1e-9)

    # faces whose own shade of a square varies, an "AU" that brightens that square by y: from
    # one image the AU is confounded with the face; against the face's own neutral it is not
    n = 160
    base = rng.uniform(40, 160, n)[:, None, None, None] + rng.integers(0, 20, (n, SIZE, SIZE, 3))
    base[:, 8:24, 8:24] += rng.uniform(-40, 40, n)[:, None, None, None]  # each face's own shade there
    yv = np.zeros((n, NUM_AUS), np.float32)
    yv[:, 0] = rng.uniform(0, 1, n)
    expressed = base + 0.0
    expressed[:, 8:24, 8:24] += 60.0 * yv[:, 0, None, None, None]
    pairs = PairSet(base.clip(0, 255).astype(np.uint8), expressed.clip(0, 255).astype(np.uint8), yv, np.arange(n))
    train, val = pairs.take(np.arange(120)), pairs.take(np.arange(120, n))
    report = feature_probe(_net(4), train, val, grid=2)
    single, diff = report["single"]["r2"]["au01"], report["difference"]["r2"]["au01"]
    assert diff > 0.8 and diff > single + 0.2


def test_save_load_and_the_command_line(tmp_path, pairs, capsys):
    from dcnn_flame.supervision.bundle import load_teachers, teachers_to_bytes
    from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

    path = str(tmp_path / "p.npz")
    pairs.save(path, {"seed": 3})
    back = PairSet.load(path, expect_meta={"seed": 3})
    np.testing.assert_array_equal(back.expressed, pairs.expressed)
    with pytest.raises(ValueError, match="seed: 3.*this run: seed: 4"):
        PairSet.load(path, expect_meta={"seed": 4})
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a pair cache"):
        PairSet.load(str(tmp_path / "bad.npz"))

    init = tmp_path / "init.pt"
    init.write_bytes(teachers_to_bytes(_net(3), ExpressionClassifier(ExpressionClassifierConfig(input_size=SIZE))))
    out, cache = tmp_path / "out.pt", tmp_path / "cache.npz"
    args = ["--init", str(init), "--output", str(out), "--identities", "3", "--epochs", "1", "--processes", "1",
            "--val-fraction", "0.34", "--cache", str(cache)]
    assert main(args) == 0
    assert "rendered 12 pairs of 3 identities" in capsys.readouterr().out and cache.exists()
    au, _, meta = load_teachers(str(out))
    assert au.cfg.input_size == SIZE and meta["pairs"]["pairs"] == 12 and meta["pairs"]["val_pairs"] == 4
    report = json.loads((tmp_path / "out.metrics.json").read_text())
    assert report["best_epoch"] == 1 and len(report["history"]) == 1
    assert main(args) == 0  # the second run reads the cache
    assert "12 pairs read from" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # ... but not one rendered from other settings
        main(args + ["--max-yaw", "5"])
    assert "rendered with other settings (synthetic.max_yaw_deg: 30.0; this run: synthetic.max_yaw_deg: 5.0)" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--init", str(init), "--output", str(out), "--identities", "1"])
    probe = tmp_path / "probe.json"
    assert main(args[:2] + ["--output", str(probe)] + args[4:] + ["--probe"]) == 0
    assert "probe difference" in capsys.readouterr().out
    got = json.loads(probe.read_text())
    assert set(got["probe"]) == {"single", "difference"} and len(got["probe"]["single"]["r2"]) == NUM_AUS
