"""Metrics (Eq. 15-19, SSIM, F1, AUMR, LPIPS) against naive loop implementations."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from dcnn_flame.metrics import (
    LPIPS_SCALE,
    LPIPS_SHIFT,
    accuracy,
    aumr,
    confusion_matrix,
    cosine_distance,
    eval_score,
    load_lpips,
    macro_f1,
    mean_face_vertex_error,
    mean_vertex_error,
    similarity_align,
    ssim,
)

NAN = float("nan")


def test_mean_vertex_error_matches_naive_and_scales():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    gt = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    got = mean_vertex_error(pred, gt)
    for b in range(2):
        e = sum(math.dist(pred[b, i].tolist(), gt[b, i].tolist()) for i in range(7)) / 7
        assert got[b].item() == pytest.approx(e)
    torch.testing.assert_close(mean_vertex_error(pred, gt, scale_to_mm=True), got * 1000)
    mask = torch.tensor([1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    sub = mean_vertex_error(pred[:, mask], gt[:, mask])
    torch.testing.assert_close(mean_vertex_error(pred, gt, vertex_mask=mask), sub)
    template = torch.randn(7, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(mean_face_vertex_error(gt, template), mean_vertex_error(template.expand(2, 7, 3), gt))
    assert mean_vertex_error(gt, gt).abs().max() == 0


def naive_ssim(x, y, win=11, sigma=1.5, data_range=1.0):
    """SSIM by explicit loops over every valid window of every channel."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = [[math.exp(-((i - (win - 1) / 2) ** 2 + (j - (win - 1) / 2) ** 2) / (2 * sigma**2)) for j in range(win)]
         for i in range(win)]
    tot = sum(map(sum, w))
    w = [[v / tot for v in row] for row in w]
    chans, h, wd = x.shape
    per_channel = []
    for c in range(chans):
        vals = []
        for top in range(h - win + 1):
            for left in range(wd - win + 1):
                mx = my = sxx = syy = sxy = 0.0
                for i in range(win):
                    for j in range(win):
                        a, b, k = x[c, top + i, left + j], y[c, top + i, left + j], w[i][j]
                        mx += k * a
                        my += k * b
                        sxx += k * a * a
                        syy += k * b * b
                        sxy += k * a * b
                vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
        per_channel.append(sum(vals) / len(vals))
    return sum(per_channel) / chans


def _rotation(rotvec):
    from scipy.spatial.transform import Rotation

    return torch.from_numpy(Rotation.from_rotvec(rotvec).as_matrix())


def test_similarity_align_recovers_a_known_transform_and_keeps_handedness():
    g = torch.Generator().manual_seed(1)
    gt = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
    rots = [_rotation([0.3, -1.2, 0.5]), _rotation([2.5, 0.1, -0.4]), torch.eye(3, dtype=torch.float64)]
    scales, shifts = [0.5, 2.0, 1.0], torch.randn(3, 1, 3, generator=g, dtype=torch.float64)
    # pred = (R^T (gt - t)) / s, so s R pred + t = gt exactly
    pred = torch.stack([(rots[b].T @ (gt[b] - shifts[b]).T).T / scales[b] for b in range(3)])
    torch.testing.assert_close(similarity_align(pred, gt), gt)
    # a mirror image cannot be aligned by a proper rotation: the error stays large
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert mean_vertex_error(similarity_align(mirrored, gt), gt).min() > 0.1
    # alignment never makes the error worse than no alignment
    noisy = gt + 0.3 * torch.randn(gt.shape, generator=g, dtype=torch.float64)
    assert (mean_vertex_error(similarity_align(noisy, gt), gt) <= mean_vertex_error(noisy, gt) + 1e-12).all()


def test_similarity_align_matches_a_numerical_least_squares_fit():
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(2)
    gt = torch.randn(1, 25, 3, generator=g, dtype=torch.float64)
    pred = 0.7 * gt @ _rotation([0.2, 0.4, -0.1]) + 0.2 + 0.05 * torch.randn(gt.shape, generator=g,
                                                                              dtype=torch.float64)
    w = torch.rand(25, generator=g, dtype=torch.float64)
    w[:5] = 0  # zero-weight vertices take no part in the fit
    p, t, wn = pred[0].numpy(), gt[0].numpy(), w.numpy()

    def energy(x):  # naive: sum_v w_v ||s R(rotvec) p_v + t - g_v||^2 over 7 numbers
        return float((wn * (((x[0] * (_rotation(x[1:4]).numpy() @ p.T)).T + x[4:7] - t) ** 2).sum(1)).sum())

    best = min((minimize(energy, x0, method="BFGS", options={"gtol": 1e-10}) for x0 in
                ([1, 0, 0, 0, 0, 0, 0], [1.4, 0.1, 0.1, 0.1, 0, 0, 0])), key=lambda r: r.fun)
    ours = similarity_align(pred, gt, weights=w)[0].numpy()
    ours_energy = float((wn * ((ours - t) ** 2).sum(1)).sum())
    assert ours_energy <= best.fun + 1e-9
    assert ours_energy == pytest.approx(best.fun, rel=1e-6)
    ref = (best.x[0] * (_rotation(best.x[1:4]).numpy() @ p.T)).T + best.x[4:7]
    assert abs(ours - ref).max() < 1e-4


def test_ssim_matches_naive_windows():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 13, 12, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 2, 13, 12, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y)
    for b in range(2):
        assert got[b].item() == pytest.approx(naive_ssim(x[b].numpy(), y[b].numpy()), rel=1e-10)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert ssim(x.float(), y.float()).dtype == torch.float32
    got255 = ssim(x * 255, y * 255, data_range=255.0)
    torch.testing.assert_close(got255, got)
    with pytest.raises(ValueError, match="smaller"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_cosine_distance_and_eval_score():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor([1.0, 0.0, 2.0]))
    assert eval_score(1.23, 0.5) == pytest.approx(0.6 * 1.23 + 0.4 * 0.5)
    assert eval_score(1.0, 1.0, lambda1=0.1, lambda2=0.2) == pytest.approx(0.3)


def test_aumr_matches_naive_loop():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(4, 17, generator=g)
    gt = (pred + 0.2 * torch.randn(4, 17, generator=g)).clamp(0, 1)
    gt[0, :3] = NAN
    pred[1, 5] = NAN
    gt[3, :] = NAN
    got = aumr(pred, gt, eps=0.1)
    for b in range(4):
        pairs = [(p, t) for p, t in zip(pred[b].tolist(), gt[b].tolist()) if not (math.isnan(p) or math.isnan(t))]
        if not pairs:
            assert math.isnan(got[b].item())
            continue
        assert got[b].item() == pytest.approx(sum(abs(p - t) < 0.1 for p, t in pairs) / len(pairs))
    assert aumr(gt[:3], gt[:3]).tolist() == [1.0, 1.0, 1.0]


def naive_f1(pred, target, num_classes):
    f1s = []
    for c in range(num_classes):
        tp = sum(1 for p, t in zip(pred, target) if p == c and t == c)
        fp = sum(1 for p, t in zip(pred, target) if p == c and t != c)
        fn = sum(1 for p, t in zip(pred, target) if p != c and t == c)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def test_accuracy_and_macro_f1_match_naive_counting():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (40,), generator=g)  # classes 6, 7 never appear
    pred = torch.where(torch.rand(40, generator=g) < 0.6, target, torch.randint(0, 6, (40,), generator=g))
    target[:4] = -1  # missing labels
    keep = target >= 0
    p, t = pred[keep].tolist(), target[keep].tolist()
    assert macro_f1(pred, target).item() == pytest.approx(naive_f1(p, t, 8), rel=1e-6)
    assert accuracy(pred, target).item() == pytest.approx(sum(a == b for a, b in zip(p, t)) / len(t))
    logits = torch.nn.functional.one_hot(pred, 8).float()
    assert macro_f1(logits, target).item() == pytest.approx(macro_f1(pred, target).item())
    cm = confusion_matrix(pred, target)
    assert cm.sum() == len(t) and cm[6:].sum() == 0
    # A class predicted but never a target counts (F1 = 0); classes in neither do not.
    assert macro_f1(torch.tensor([0, 1]), torch.tensor([0, 0])).item() == pytest.approx((2 / 3 + 0.0) / 2)
    assert math.isnan(accuracy(pred, torch.full_like(target, -1)).item())
    with pytest.raises(ValueError, match="labels"):
        macro_f1(torch.tensor([9]), torch.tensor([0]))


def test_lpips_needs_user_files(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_lpips(None, None) is None
    assert "LPIPS not computed" in caplog.text
    # The LPIPS input scaling equals ImageNet normalisation for [0, 1] inputs.
    assert [(1 + s) / 2 for s in LPIPS_SHIFT] == pytest.approx([0.485, 0.456, 0.406])
    assert [s / 2 for s in LPIPS_SCALE] == pytest.approx([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    g = torch.Generator().manual_seed(4)
    d = tmp_path_factory.mktemp("lpips")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, d / "vgg_lin.pth")
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    feats = {}
    for i, ci, co in zip(convs, [3] + widths[:-1], widths):
        feats[f"features.{i}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * (2.0 / (9 * ci)) ** 0.5
        feats[f"features.{i}.bias"] = torch.zeros(co)
    torch.save(feats, d / "vgg16_features.pth")
    return d / "vgg_lin.pth", d / "vgg16_features.pth", lin


def test_lpips_from_files_matches_naive(lpips_files, tmp_path):
    lin_path, vgg_path, lin = lpips_files
    model = load_lpips(lin_path, vgg_path)
    assert model is not None and model.features.arch == "vgg16"
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    d = model(x, y)
    fx, fy = model.features(x), model.features(y)
    names = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
    for b in range(2):
        expect = 0.0
        for li, name in enumerate(names):
            a, c = fx[name][b], fy[name][b]
            w = lin[f"lin{li}.model.1.weight"].flatten()
            _, h, wd = a.shape
            acc = 0.0
            for i in range(h):
                for j in range(wd):
                    na = a[:, i, j] / (a[:, i, j].norm() + 1e-10)
                    nc = c[:, i, j] / (c[:, i, j].norm() + 1e-10)
                    acc += float((w * (na - nc) ** 2).sum())
            expect += acc / (h * wd)
        assert d[b].item() == pytest.approx(expect, rel=1e-4)
    assert (d > 0).all()
    torch.testing.assert_close(model(x, x), torch.zeros(2))
    torch.testing.assert_close(model(y, x), d)
    torch.save({"lin0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        load_lpips(tmp_path / "wrong.pth", vgg_path)
    with pytest.raises(FileNotFoundError):
        load_lpips(tmp_path / "absent.pth", vgg_path)


def test_masked_ssim_is_the_mean_of_the_map_over_the_mask():
    import torch.nn.functional as F

    from dcnn_flame import metrics as M

    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64), torch.rand(2, 3, 40, 40, generator=g,
                                                                                     dtype=torch.float64)
    y[1] = x[1]  # identical outside the face, as a render pasted over its input
    mask = torch.zeros(2, 1, 40, 40, dtype=torch.bool)
    mask[:, :, 10:30, 12:28] = True
    y[1][:, 10:30, 12:28] = torch.rand(3, 20, 16, generator=g, dtype=torch.float64)
    # naive: the full SSIM map, averaged over channels, then over the masked window centres
    win = M.gaussian_window(11, 1.5, torch.float64)
    k = (win[:, None] * win[None, :])[None, None].expand(3, 1, 11, 11)

    def f(t):
        return F.conv2d(t, k, groups=3)

    mu_x, mu_y = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mu_x ** 2, f(y * y) - mu_y ** 2, f(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))).mean(1)
    centres = mask[:, 0, 5:35, 5:35]
    ref = torch.stack([smap[i][centres[i]].mean() for i in range(2)])
    torch.testing.assert_close(M.ssim(x, y, mask=mask), ref)
    assert M.ssim(x, y)[1] > M.ssim(x, y, mask=mask)[1] + 0.3  # the background inflated the whole-image score
    assert torch.isnan(M.ssim(x, y, mask=torch.zeros_like(mask))).all()


def test_macro_f1_from_summed_confusion_matrices_is_the_sets():
    from dcnn_flame import metrics as M

    g = torch.Generator().manual_seed(2)
    pred, target = torch.randint(0, 8, (64,), generator=g), torch.randint(0, 8, (64,), generator=g)
    cms = [M.confusion_matrix(pred[i:i + 16], target[i:i + 16]) for i in range(0, 64, 16)]
    assert float(M.macro_f1_from_confusion(sum(cms))) == pytest.approx(float(M.macro_f1(pred, target)))
    per_batch = sum(float(M.macro_f1(pred[i:i + 16], target[i:i + 16])) for i in range(0, 64, 16)) / 4
    assert per_batch != pytest.approx(float(M.macro_f1(pred, target)), abs=1e-3)  # why batches are summed
