"""The detector-based retargeting check (dcnn_flame.generation.au_check): ranking logic against a
naive loop, frontal renders of the bank, and the command line on a teachers file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dcnn_flame.constants import AU_IDS, NUM_AUS
from dcnn_flame.generation import emotions
from dcnn_flame.generation.au_check import (au_isolation, image_motion_px, main, rank_intended_aus, render_bank,
                                            single_au_bank, summarize)

SIZE = 64


def _naive(response, profiles, names):
    out = []
    for k, name in enumerate(names):
        intended = [i for i in range(NUM_AUS) if profiles[k][i] > 0]
        if not intended:
            continue
        # selection by repeated arg-max, ties to the lower index
        left, top = list(range(NUM_AUS)), []
        for _ in intended:
            best = max(left, key=lambda i: (response[k][i], -i))
            top.append(best)
            left.remove(best)
        out.append((name, [AU_IDS[i] for i in intended], [AU_IDS[i] for i in top],
                    len(set(top) & set(intended))))
    return out


def test_ranking_matches_a_naive_loop_and_the_extremes():
    bank = emotions.default_bank()
    prof = bank.matrix()
    rng = np.random.default_rng(0)
    for response in (rng.standard_normal(prof.shape), np.round(rng.standard_normal(prof.shape), 1)):
        got = rank_intended_aus(response, bank, character=5)
        want = _naive(response.tolist(), prof.tolist(), bank.names)
        assert [(r.expression, r.intended, r.top, r.hits) for r in got] == want
        assert all(r.character == 5 and r.exact == (r.hits == len(r.intended)) for r in got)
    named = [n for n in bank.names if (bank.vector(n) > 0).any()]
    perfect = rank_intended_aus(prof + 0.01 * rng.random(prof.shape), bank)
    assert [r.expression for r in perfect] == named and all(r.exact for r in perfect)
    assert all(r.hits == 0 for r in rank_intended_aus(-prof, bank) if len(r.intended) <= NUM_AUS // 2)
    s = summarize(perfect)
    assert (s["exact"], s["cases"], s["recall"]) == (len(named), len(named), 1.0)
    with pytest.raises(ValueError, match="one row per bank expression"):
        rank_intended_aus(prof[:3], bank)


def test_mean_response_verdict_matches_a_naive_average():
    bank = emotions.default_bank()
    prof = bank.matrix()
    rng = np.random.default_rng(3)
    responses = [prof + 0.3 * rng.standard_normal(prof.shape) for _ in range(4)]
    results = [r for c, resp in enumerate(responses) for r in rank_intended_aus(resp, bank, character=c)]
    s = summarize(results)
    mean = np.mean(responses, axis=0)
    want = _naive(mean.tolist(), prof.tolist(), bank.names)
    assert list(s["per_expression"]) == [w[0] for w in want]
    for name, intended, top, hits in want:
        e = s["per_expression"][name]
        assert e["mean_top"] == top and e["mean_exact"] == (hits == len(intended))
        assert e["cases"] == 4 and e["exact"] == sum(r.exact for r in results if r.expression == name)
        others = [m for m, i in zip(mean[bank.names.index(name)].tolist(), AU_IDS) if i not in intended]
        lowest = min(m for m, i in zip(mean[bank.names.index(name)].tolist(), AU_IDS) if i in intended)
        assert e["mean_margin"] == pytest.approx(lowest - max(others))
        assert (e["mean_margin"] > 0) == e["mean_exact"]
    assert s["expressions"] == len(want)
    assert s["expressions_exact_on_mean"] == sum(h == len(i) for _, i, _, h in want)
    # noise that fails single characters can average out: the mean verdict is not their AND
    assert 0 < s["expressions_exact_on_mean"] <= s["expressions"]
    assert any(e["mean_exact"] and e["exact"] < e["cases"] for e in s["per_expression"].values())


def test_flip_averages_the_image_and_its_mirror():
    from dcnn_flame.generation.au_check import detector_response
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig

    torch.manual_seed(0)
    net = AUDetector(AUDetectorConfig(input_size=SIZE)).train()
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        net.eval()
        p, q = net(images).probs.double().numpy(), net(images.flip(-1)).probs.double().numpy()
    net.train()
    got = detector_response(net, images, flip=True)
    np.testing.assert_allclose(got, 0.5 * (p + q)[1:] - 0.5 * (p + q)[:1], atol=1e-6)
    np.testing.assert_allclose(detector_response(net, images), p[1:] - p[:1], atol=1e-6)
    assert net.training  # the caller's mode is restored
    assert np.abs(got - detector_response(net, images)).max() > 1e-4  # a random net is not mirror-symmetric
    # a mirror-symmetric batch gives the same answer either way
    sym = torch.cat([images[..., : SIZE // 2], images[..., : SIZE // 2].flip(-1)], dim=-1)
    np.testing.assert_allclose(detector_response(net, sym, flip=True), detector_response(net, sym), atol=1e-6)


def test_isolation_report_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    response = np.round(rng.standard_normal((NUM_AUS, NUM_AUS)), 1)  # ties included
    motion = rng.random(NUM_AUS)
    rows = au_isolation(response, motion, confusions=4)
    assert [r["au"] for r in rows] == list(AU_IDS)
    for i, r in enumerate(rows):
        # rank: 1 + how many outputs rise more, ties to the lower index (a stable sort)
        rank = 1 + sum(1 for j in range(NUM_AUS) if response[i][j] > response[i][i]
                       or (response[i][j] == response[i][i] and j < i))
        others = sorted((j for j in range(NUM_AUS) if j != i), key=lambda j: (-response[i][j], j))[:4]
        assert r["self"] == response[i][i] and r["rank"] == rank and r["motion_px"] == motion[i]
        assert r["confused_with"] == [[AU_IDS[j], response[i][j]] for j in others]
    perfect = au_isolation(np.eye(NUM_AUS) + 0.01 * rng.random((NUM_AUS, NUM_AUS)))
    assert all(r["rank"] == 1 and "motion_px" not in r for r in perfect)
    with pytest.raises(ValueError, match="one row per rendered AU"):
        au_isolation(response[:5])
    bank = single_au_bank(0.4)
    assert bank.names == tuple(f"au{a}" for a in AU_IDS)
    np.testing.assert_allclose(bank.matrix(), 0.4 * np.eye(NUM_AUS))
    with pytest.raises(ValueError, match="intensity"):
        single_au_bank(0.0)


@pytest.fixture(scope="module")
def world_and_retargeter():
    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.data.synthetic import world_for
    from dcnn_flame.generation.retarget import Retargeter, load_au_map

    world = world_for(SyntheticConfig(image_size=SIZE))
    return world, Retargeter(world.data, n_shape=world.cfg.n_shape, n_expr=world.cfg.n_expr,
                             au_map=load_au_map(world.data))


def test_bank_renders_move_the_face_only_where_the_expression_acts(world_and_retargeter):
    world, retargeter = world_and_retargeter
    bank = emotions.default_bank()
    images = render_bank(world, 0, bank, retargeter, seed=7)
    names = list(bank.names)
    assert images.shape == (len(names) + 1, 3, SIZE, SIZE)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # the bank's neutral is the character's neutral; deterministic
    torch.testing.assert_close(images[1 + names.index("neutral")], images[0])
    torch.testing.assert_close(render_bank(world, 0, bank, retargeter, seed=7), images)
    # surprise opens the jaw: the lower face changes, the background corners do not
    diff = (images[1 + names.index("surprise")] - images[0]).abs().mean(0)
    assert float(diff[SIZE // 2:, SIZE // 4: -SIZE // 4].mean()) > 0.02
    assert float(diff[-6:, :6].max()) < 1e-6 and float(diff[-6:, -6:].max()) < 1e-6
    # another character looks different
    assert float((render_bank(world, 1, bank, retargeter, seed=7)[0] - images[0]).abs().mean()) > 0.02


def test_turned_views_and_their_average(world_and_retargeter):
    from dcnn_flame.generation.au_check import check_detector, detector_response, turn_head
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig

    c = torch.tensor([1.0, 2.0, 3.0])
    pts = c + torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    torch.testing.assert_close(turn_head(pts, c, 90.0), c + torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0],
                                                                         [0.0, 5.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(turn_head(pts, c, 0.0), pts)
    torch.testing.assert_close(turn_head(turn_head(pts, c, 25.0), c, -25.0), pts, atol=1e-6, rtol=0)
    world, retargeter = world_and_retargeter
    bank = emotions.ExpressionBank({"happy": emotions.default_bank().vector("happy").tolist()})
    front = render_bank(world, 0, bank, retargeter, seed=7)
    turned = render_bank(world, 0, bank, retargeter, seed=7, yaw_deg=20.0)
    assert float((turned - front).abs().mean()) > 0.01  # the face turned
    torch.testing.assert_close(turned[:, :, -4:, :4], front[:, :, -4:, :4])  # the background did not
    torch.manual_seed(0)
    net = AUDetector(AUDetectorConfig(input_size=SIZE))
    got = check_detector(net, world, bank, retargeter, [0], seed=7, yaws=(0.0, 20.0))
    want = 0.5 * (detector_response(net, front) + detector_response(net, turned))
    np.testing.assert_allclose(got[0].response, want[0], atol=1e-6)
    with pytest.raises(ValueError, match="at least one view"):
        check_detector(net, world, bank, retargeter, [0], yaws=())


def test_image_motion_is_the_largest_vertex_motion_in_rendered_pixels(world_and_retargeter):
    from dcnn_flame.render.camera import OrthographicCamera, to_pixels

    world, retargeter = world_and_retargeter
    bank = single_au_bank(0.5)
    got = image_motion_px(world, 2, bank, retargeter, seed=7)
    # naive: frame the neutral landmark box to 0.72 of the image, project every vertex to
    # pixels with the renderer's camera, largest distance per expression
    shape = torch.zeros(retargeter.n_shape)
    s = world.sample(7, 2).shape
    shape[: min(len(s), len(shape))] = torch.from_numpy(s[: len(shape)]).float()
    with torch.no_grad():
        lmk = retargeter.flame(shape=shape[None]).landmarks[0, :, :2]
        lo, hi = lmk.min(0).values, lmk.max(0).values
        cam = OrthographicCamera(torch.tensor([[2 * 0.72 / float((hi - lo).max()), *(-(lo + hi) / 2).tolist()]]))
        out = retargeter.retarget_bank(shape, torch.from_numpy(bank.matrix()).float())
        base = to_pixels(cam.project(out.neutral[None]), SIZE, SIZE)[0]
        for k in range(len(bank)):
            moved = to_pixels(cam.project(out.vertices[k][None]), SIZE, SIZE)[0]
            assert got[k] == pytest.approx(float((moved - base).norm(dim=-1).max()), rel=1e-4, abs=1e-6)
    # the jaw drop (AU26) moves the face most, far more than the chin raiser (AU17)
    assert got[AU_IDS.index(26)] == got.max() and got[AU_IDS.index(26)] > 5 * got[AU_IDS.index(17)]
    # the image of a neutral bank entry does not move
    assert image_motion_px(world, 2, emotions.ExpressionBank({"neutral": [0.0] * NUM_AUS}), retargeter, 7)[0] == 0


def test_command_line_on_a_teachers_file(tmp_path, world_and_retargeter, capsys):
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
    from dcnn_flame.supervision.bundle import teachers_to_bytes
    from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

    torch.manual_seed(0)
    path = tmp_path / "teachers.pt"
    path.write_bytes(teachers_to_bytes(AUDetector(AUDetectorConfig(input_size=SIZE)),
                                       ExpressionClassifier(ExpressionClassifierConfig(input_size=SIZE))))
    out = tmp_path / "check.json"
    assert main(["--teachers", str(path), "--identities", "1", "--json", str(out), "--single-au", "0.5",
                 "--flip", "--yaw", "0,15"]) == 0
    report = json.loads(out.read_text())
    named = [n for n in emotions.default_bank().names if (emotions.default_bank().vector(n) > 0).any()]
    assert report["summary"]["cases"] == len(named) == len(report["results"])
    assert 0.0 <= report["summary"]["recall"] <= 1.0
    printed = capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's error exit, before any work
        main(["--teachers", str(tmp_path / "missing.pt"), "--single-au", "2"])
    assert "--single-au must be an AU intensity in (0, 1], got 2.0" in capsys.readouterr().err
    assert "[au_check] exact top sets" in printed and "[au_check] single AUs ranked first" in printed
    assert "expressions exact on the mean response" in printed and ", flip, yaw 0,15)" in printed
    assert report["views"] == {"yaw_deg": [0.0, 15.0], "flip": True}
    for bad in ("", "x", "0,95"):
        with pytest.raises(SystemExit):
            main(["--teachers", str(path), "--yaw", bad])
        assert "--yaw must be comma-separated angles" in capsys.readouterr().err
    assert report["summary"]["expressions"] == len(named)
    iso = report["isolation"]
    assert iso["intensity"] == 0.5 and [r["au"] for r in iso["aus"]] == list(AU_IDS)
    assert all(1 <= r["rank"] <= NUM_AUS and r["motion_px"] > 0 for r in iso["aus"])


@pytest.mark.slow
def test_the_shipped_detector_sees_every_bank_expression(tmp_path, capsys):
    """The issue's check on the shipped two-input detector: for every expression of the built-in
    bank, the response averaged over 8 frontal characters ranks the intended AUs highest
    (measured: 13/13, smallest margin +0.043 (fear); 87/104 per character; docs/generation.md).
    A change to the retargeting, the head, the renderer or the bank that breaks what the
    detector sees fails it."""
    out = tmp_path / "check.json"
    assert main(["--identities", "8", "--json", str(out)]) == 0
    assert "au_reference_112.pt" in capsys.readouterr().out
    summary = json.loads(out.read_text())["summary"]
    assert summary["expressions"] == len([n for n in emotions.default_bank().names
                                          if (emotions.default_bank().vector(n) > 0).any()])
    missed = {k: (e["mean_top"], round(e["mean_margin"], 3)) for k, e in summary["per_expression"].items()
              if not e["mean_exact"]}
    assert not missed, missed
    assert summary["exact"] >= 80 and summary["recall"] >= 0.94, (summary["exact"], summary["recall"])
