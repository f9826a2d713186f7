"""Loss functions: values against naive loops, masking of missing labels, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcnn_flame.losses.au import au_bce_loss, au_pos_weight
from dcnn_flame.losses.combine import TERM_NAMES, LossWeights, active_terms, combine
from dcnn_flame.losses.domain import mmd_loss
from dcnn_flame.losses.expression import au_expression_loss, expression_ce_loss, expression_kl_loss
from dcnn_flame.losses.feedback import feedback_loss
from dcnn_flame.losses.landmarks import landmark_loss
from dcnn_flame.losses.photometric import photometric_loss
from dcnn_flame.losses.regularizers import code_l2, displacement_l1, shape_consistency_loss
from dcnn_flame.losses.style import (
    color_moment_loss,
    content_loss,
    gram_matrix,
    kmeans_assign,
    prototype_covariance,
    style_consistency_loss,
    style_loss,
    style_transfer_loss,
)

NAN = float("nan")


def _finite_grad(loss, *tensors):
    assert torch.isfinite(loss), loss
    grads = torch.autograd.grad(loss, tensors, allow_unused=False)
    for g in grads:
        assert torch.isfinite(g).all()
    return grads


# ----------------------------------------------------------------- landmarks


@pytest.mark.parametrize("norm", ["l1", "l2", "l2sq"])
def test_landmark_loss_matches_naive(norm):
    g = torch.Generator().manual_seed(0)
    b, n = 2, 68
    pred = torch.rand(b, n, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    target[0, 5, 0] = NAN  # missing landmark
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    conf = torch.rand(b, n, generator=g, dtype=torch.float64)
    got = landmark_loss(pred, target, weights, conf, norm)
    num = den = 0.0
    for i in range(b):
        for k in range(n):
            if math.isnan(target[i, k, 0]) or math.isnan(target[i, k, 1]):
                continue
            dx = pred[i, k, 0].item() - target[i, k, 0].item()
            dy = pred[i, k, 1].item() - target[i, k, 1].item()
            d = {"l1": abs(dx) + abs(dy), "l2": math.hypot(dx, dy), "l2sq": dx * dx + dy * dy}[norm]
            w = weights[k].item() * conf[i, k].item() * target[i, k, 2].item()
            num += w * d
            den += w
    assert got.item() == pytest.approx(num / den, rel=1e-10)
    (grad,) = _finite_grad(got, pred)
    assert grad[0, 5].abs().sum() == 0


def test_landmark_loss_all_missing_is_zero_and_differentiable():
    pred = torch.rand(1, 68, 2, requires_grad=True)
    target = torch.full((1, 68, 2), NAN)
    loss = landmark_loss(pred, target, norm="l2")
    assert loss.item() == 0.0
    _finite_grad(loss, pred)
    with pytest.raises(ValueError, match="target"):
        landmark_loss(pred, torch.zeros(1, 67, 2))


# ----------------------------------------------------------------- photometric


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_photometric_loss_matches_naive(norm):
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 5, 4, generator=g, dtype=torch.float64)
    skin = (torch.rand(2, 1, 5, 4, generator=g) > 0.3).double()
    got = photometric_loss(pred, target, mask, skin, norm)
    num = den = 0.0
    for b in range(2):
        for y in range(5):
            for x in range(4):
                m = mask[b, y, x].item() * skin[b, 0, y, x].item()
                diffs = [pred[b, c, y, x].item() - target[b, c, y, x].item() for c in range(3)]
                e = sum(abs(d) if norm == "l1" else d * d for d in diffs) / 3
                num += m * e
                den += m
    assert got.item() == pytest.approx(num / den, rel=1e-10)
    _finite_grad(got, pred)
    torch.testing.assert_close(got, photometric_loss(pred, target, mask[:, None], skin, norm))


def test_photometric_empty_mask_and_shape_errors():
    pred = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = photometric_loss(pred, torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4))
    assert loss.item() == 0.0
    _finite_grad(loss, pred)
    with pytest.raises(ValueError, match="mask"):
        photometric_loss(pred, pred.detach(), torch.zeros(1, 3, 4))


# ----------------------------------------------------------------- style


def test_content_loss_norms():
    a = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert content_loss(a, b).item() == pytest.approx((a - b).abs().mean().item())
    assert content_loss(a, b, norm="l2").item() == pytest.approx(((a - b) ** 2).mean().item())
    assert content_loss(a, b, norm="l2", reduction="sum").item() == pytest.approx(((a - b) ** 2).sum().item())
    _finite_grad(content_loss(a, b), a)
    with pytest.raises(ValueError):
        content_loss(a, b, norm="l3")


def test_gram_matrix_matches_naive():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    g = gram_matrix(f)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                s = sum(f[b, i, y, x].item() * f[b, j, y, x].item() for y in range(4) for x in range(5))
                assert g[b, i, j].item() == pytest.approx(s / (3 * 4 * 5))


def test_style_loss_gram_matches_naive_and_is_differentiable():
    fx = [torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 5, 2, 2, dtype=torch.float64)]
    fs = [torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 2, 2, dtype=torch.float64)]
    got = style_loss(fx, fs, layer_weights=(0.25, 2.0))
    expect = 0.0
    for w, a, b in zip((0.25, 2.0), fx, fs):
        ga, gb = gram_matrix(a), gram_matrix(b)
        expect += w * sum(((ga[i] - gb[i]) ** 2).sum().item() for i in range(2)) / 2
    assert got.item() == pytest.approx(expect)
    assert style_loss(fs, fs).item() == 0.0
    _finite_grad(got, fx[0])
    assert style_transfer_loss(torch.tensor(2.0), torch.tensor(10.0)).item() == pytest.approx(0.7 * 2 + 0.3 * 10)


def naive_kmeans(x, k, iters):
    """Lloyd's algorithm for one image, with the same deterministic initialisation."""
    n = x.shape[0]
    k = min(k, n)
    centres = [x[round(i * (n - 1) / (k - 1)) if k > 1 else 0].clone() for i in range(k)]

    def assign():
        return [min(range(k), key=lambda c: float(((x[p] - centres[c]) ** 2).sum())) for p in range(n)]

    labels = assign()
    for _ in range(iters):
        for c in range(k):
            members = [x[p] for p in range(n) if labels[p] == c]
            if members:
                centres[c] = torch.stack(members).mean(0)
        labels = assign()
    return labels


def test_kmeans_matches_naive_lloyd():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(10, 4, generator=g) + off for off in (0.0, 4.0, -4.0)])[torch.randperm(30, generator=g)]
    got = kmeans_assign(x[None], k=3, iters=4)[0].tolist()
    assert got == naive_kmeans(x, 3, 4)


def test_prototype_covariance_with_one_pixel_per_prototype_is_feature_covariance():
    # N = 4 pixels <= K = 8: every pixel is its own prototype, so S = centred covariance / C.
    f = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    s = prototype_covariance(f, k=8)
    for b in range(2):
        pix = f[b].detach().reshape(3, 4).T  # [N, C]
        mu = pix.mean(0)
        for i in range(3):
            for j in range(3):
                cov = sum((pix[p, i] - mu[i]) * (pix[p, j] - mu[j]) for p in range(4)) / 4
                assert s[b, i, j].item() == pytest.approx(cov.item() / 3)
    _finite_grad(s.square().sum(), f)


def test_prototype_covariance_on_colour_blocks():
    # Three flat colour blocks of sizes 6, 4, 2 pixels (raster order keeps init one per block).
    colours = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    labels = [0] * 6 + [1] * 4 + [2] * 2
    f = colours[labels].T.reshape(1, 2, 3, 4)
    s = prototype_covariance(f, k=3, iters=3)[0]
    pi = torch.tensor([6, 4, 2], dtype=torch.float64) / 12
    mu = (pi[:, None] * colours).sum(0)
    expect = sum(pi[k] * torch.outer(colours[k] - mu, colours[k] - mu) for k in range(3)) / 2
    torch.testing.assert_close(s, expect)
    # Invariant to which cluster gets which index: permute the blocks' order in the image.
    f2 = colours[labels[::-1]].T.reshape(1, 2, 3, 4)
    torch.testing.assert_close(prototype_covariance(f2, k=3, iters=3)[0], expect)


def test_prototype_style_and_style_consistency_are_differentiable():
    fx = [torch.rand(2, 4, 6, 6, requires_grad=True), torch.rand(2, 8, 3, 3, requires_grad=True)]
    fy = [torch.rand(2, 4, 6, 6), torch.rand(2, 8, 3, 3)]
    loss = style_loss(fx, fy, mode="prototype")
    assert loss.item() > 0
    _finite_grad(loss, *fx)
    assert style_loss(fy, fy, mode="prototype").item() == 0.0
    img_x = torch.rand(2, 3, 8, 8, requires_grad=True)
    img_y = torch.rand(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.2).float()
    sc = style_consistency_loss(fx, fy, img_x, img_y, mask)
    _finite_grad(sc, img_x, *fx)
    assert sc.item() == pytest.approx(loss.item() + color_moment_loss(img_x, img_y, mask).item(), rel=1e-5)


def test_color_moment_loss_matches_naive():
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    y = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    expect = 0.0
    for c in range(2):
        a, b = x[0, c].flatten(), y[0, c].flatten()
        expect += abs(a.mean() - b.mean()) + abs(a.std(unbiased=False) - b.std(unbiased=False))
    assert color_moment_loss(x, y).item() == pytest.approx(float(expect) / 2, abs=1e-6)


# ----------------------------------------------------------------- AU / expression


def test_au_bce_matches_naive_and_masks_nan():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 17, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 17, generator=g, dtype=torch.float64)
    target[1, 3] = NAN
    target[2, :] = NAN
    pw = torch.rand(17, generator=g, dtype=torch.float64) * 3
    aw = torch.rand(17, generator=g, dtype=torch.float64)
    got = au_bce_loss(logits, target, pw, aw)
    num = den = 0.0
    for b in range(3):
        for k in range(17):
            t = target[b, k].item()
            if math.isnan(t):
                continue
            p = 1 / (1 + math.exp(-logits[b, k].item()))
            bce = -(pw[k].item() * t * math.log(p) + (1 - t) * math.log(1 - p))
            num += aw[k].item() * bce
            den += aw[k].item()
    assert got.item() == pytest.approx(num / den, rel=1e-9)
    (grad,) = _finite_grad(got, logits)
    assert grad[2].abs().sum() == 0 and grad[1, 3] == 0
    empty = au_bce_loss(logits, torch.full((3, 17), NAN, dtype=torch.float64))
    assert empty.item() == 0.0
    _finite_grad(empty, logits)


def test_au_pos_weight_matches_naive():
    t = torch.tensor([[1.0, 0.0, NAN], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, NAN]])
    w = au_pos_weight(t, max_weight=10.0)
    # AU0: pos 2.5, neg 1.5; AU1: no positive -> max; AU2: pos 1, neg 1.
    torch.testing.assert_close(w, torch.tensor([1.5 / 2.5, 10.0, 1.0]))


def test_expression_ce_masks_missing_labels():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 8, generator=g, requires_grad=True)
    labels = torch.tensor([1, -1, 7, 0, -1])
    keep = labels >= 0
    got = expression_ce_loss(logits, labels)
    torch.testing.assert_close(got, F.cross_entropy(logits[keep], labels[keep]))
    cw = torch.rand(8, generator=g) + 0.1
    torch.testing.assert_close(expression_ce_loss(logits, labels, cw), F.cross_entropy(logits[keep], labels[keep], weight=cw))
    (grad,) = _finite_grad(got, logits)
    assert grad[1].abs().sum() == 0 and grad[4].abs().sum() == 0
    none = expression_ce_loss(logits, torch.full((5,), -1))
    assert none.item() == 0.0
    _finite_grad(none, logits)


def test_expression_kl_zero_for_same_logits():
    a = torch.randn(3, 8, requires_grad=True)
    assert expression_kl_loss(a, a).abs().item() < 1e-6
    loss = expression_kl_loss(a, torch.randn(3, 8))
    assert loss.item() > 0
    _finite_grad(loss, a)


def test_au_expression_loss_matrix_masking_matches_naive():
    g = torch.Generator().manual_seed(5)
    k, e = 4, 6
    m = torch.randn(k, e, generator=g, dtype=torch.float64)
    m[0, :3] = 0.0  # AU0 drives only dims 3..5
    m[2, :] = 0.0
    m[2, 1] = 1.0  # AU2 drives only dim 1
    pred = torch.randn(3, e, generator=g, dtype=torch.float64, requires_grad=True)
    au = torch.rand(3, k, generator=g, dtype=torch.float64)
    au[0, 0] = NAN  # sample 0: dims 3..5 unusable
    au[1, 2] = NAN  # sample 1: dim 1 unusable
    au[2, :] = NAN  # sample 2: nothing usable
    got = au_expression_loss(pred, au, m)
    total, samples = 0.0, 0
    for b in range(3):
        used = False
        s = 0.0
        for j in range(e):
            drivers = [i for i in range(k) if m[i, j] != 0]
            if any(math.isnan(au[b, i]) for i in drivers):
                continue
            e_au = sum(au[b, i].item() * m[i, j].item() for i in drivers)
            s += (pred[b, j].item() - e_au) ** 2
            used = True
        if used:
            total += s
            samples += 1
    assert samples == 2
    assert got.item() == pytest.approx(total / samples, rel=1e-10)
    (grad,) = _finite_grad(got, pred)
    assert grad[2].abs().sum() == 0 and grad[0, 3:].abs().sum() == 0 and grad[1, 1] == 0


def test_au_expression_loss_callable_uses_complete_rows():
    pred = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    au = torch.tensor([[0.1, 0.2], [NAN, 0.5], [0.3, 0.4]], dtype=torch.float64)

    def au_map(a):
        return torch.stack([a[:, 0] + a[:, 1], a[:, 0] - a[:, 1]], 1)

    got = au_expression_loss(pred, au, au_map)
    rows = [0, 2]
    expect = ((pred[rows] - au_map(au[rows])) ** 2).sum(1).mean()
    torch.testing.assert_close(got, expect)
    _finite_grad(got, pred)
    with pytest.raises(ValueError, match="au_map"):
        au_expression_loss(pred, au, torch.zeros(3, 2))


# ----------------------------------------------------------------- feedback


def test_feedback_loss_eq14():
    fe_i, fe_r = torch.randn(3, 5), torch.randn(3, 5, requires_grad=True)
    fa_i, fa_r = torch.randn(3, 7), torch.randn(3, 7, requires_grad=True)
    got = feedback_loss(fe_i, fe_r, fa_i, fa_r, au_lambda=0.3)
    expect = sum((fe_i[b] - fe_r[b]).abs().sum() + 0.3 * ((fa_i[b] - fa_r[b]) ** 2).sum() for b in range(3)) / 3
    torch.testing.assert_close(got, expect)
    _finite_grad(got, fe_r, fa_r)
    # the "w/o Expr" ablation keeps only the AU part
    only_au = feedback_loss(fe_i, fe_r, fa_i, fa_r, au_lambda=0.3, expr_lambda=0.0)
    torch.testing.assert_close(only_au, sum(0.3 * ((fa_i[b] - fa_r[b]) ** 2).sum() for b in range(3)) / 3)
    src = torch.randn(3, 5, requires_grad=True)
    feedback_loss(src, fe_r, fa_i, fa_r).backward()
    assert src.grad is None  # input features are targets


# ----------------------------------------------------------------- MMD


def naive_mmd(x, y, mults, h, unbiased):
    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (m * h)) for m in mults)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not unbiased or i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not unbiased or i != j)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    nx = n * (n - 1) if unbiased else n * n
    ny = m * (m - 1) if unbiased else m * m
    return sxx / nx + syy / ny - 2 * sxy / (n * m)


def naive_median_sq_dist(z):
    d = sorted(float(((z[i] - z[j]) ** 2).sum()) for i in range(len(z)) for j in range(len(z)) if i != j)
    return d[(len(d) - 1) // 2]  # lower median, as torch.median


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_matches_naive_double_loop(unbiased):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) + 0.7
    mults = (0.5, 1.0, 2.0)
    got = mmd_loss(x, y, mults, bandwidth=1.3, unbiased=unbiased)
    assert got.item() == pytest.approx(naive_mmd(x.detach(), y, mults, 1.3, unbiased), rel=1e-10)
    h = naive_median_sq_dist(torch.cat([x.detach(), y]))
    got_med = mmd_loss(x, y, mults, unbiased=unbiased)
    assert got_med.item() == pytest.approx(naive_mmd(x.detach(), y, mults, h, unbiased), rel=1e-9)
    _finite_grad(got_med, x)


def test_mmd_grows_with_domain_shift():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 8, generator=g)
    same = mmd_loss(x, torch.randn(64, 8, generator=g), bandwidth=16.0)
    shifted = mmd_loss(x, torch.randn(64, 8, generator=g) + 1.5, bandwidth=16.0)
    assert abs(same.item()) < 0.05 < shifted.item()
    assert mmd_loss(x, x, unbiased=False).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=">= 2"):
        mmd_loss(x[:1], x)


# ----------------------------------------------------------------- regularizers


def test_code_and_detail_regularizers():
    c = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    assert code_l2(c).item() == pytest.approx(sum((c[b] ** 2).sum().item() for b in range(4)) / 4)
    assert code_l2(c, squared=False).item() == pytest.approx(sum(c[b].norm().item() for b in range(4)) / 4)
    zero = torch.zeros(2, 3, requires_grad=True)
    _finite_grad(code_l2(zero, squared=False), zero)
    u = torch.randn(2, 1, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert displacement_l1(u, mask).item() == pytest.approx(u[..., :2, :].abs().mean().item(), rel=1e-6)
    _finite_grad(displacement_l1(u), u)


@pytest.mark.parametrize("mode", ["variance", "distance"])
def test_shape_consistency_matches_naive(mode):
    g = torch.Generator().manual_seed(8)
    s = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    vm = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    got = shape_consistency_loss(s, vm, mode)
    per = []
    for b in range(3):
        views = [s[b, v].detach() for v in range(4) if vm[b, v]]
        if len(views) < 2:
            continue
        mean = torch.stack(views).mean(0)
        d = [((v - mean) ** 2).sum().item() if mode == "variance" else (v - mean).norm().item() for v in views]
        per.append(sum(d) / len(d))
    assert got.item() == pytest.approx(sum(per) / len(per), rel=1e-10)
    (grad,) = _finite_grad(got, s)
    assert grad[2].abs().sum() == 0 and grad[1, 1].abs().sum() == 0
    same = torch.ones(2, 4, 5, requires_grad=True)
    assert shape_consistency_loss(same, mode=mode).item() == 0.0
    _finite_grad(shape_consistency_loss(same, mode=mode), same)


# ----------------------------------------------------------------- combine


def test_loss_weights_defaults_and_active_terms():
    w = LossWeights()
    assert (w.content, w.style) == (0.7, 0.3)
    assert "feedback_au_lambda" not in TERM_NAMES and "feedback_expr_lambda" not in TERM_NAMES
    assert set(TERM_NAMES) == {"landmark", "photometric", "content", "style", "expression", "au", "feedback", "mmd",
                               "shape_reg", "expr_reg", "eye_pose_reg", "detail_reg", "shape_consistency",
                               "style_consistency"}
    act = active_terms(w)
    assert "mmd" not in act and "style_consistency" not in act and "au" in act
    assert active_terms(LossWeights(au=0.0, feedback=0.0)) == tuple(n for n in act if n not in ("au", "feedback"))
    with pytest.raises(ValueError, match="landmark"):
        LossWeights(landmark=-1.0)
    with pytest.raises(ValueError, match="style"):
        LossWeights(style=float("nan"))


def test_combine_weights_and_sums_eq13():
    w = LossWeights(landmark=1.0, photometric=0.0, content=0.7, style=0.3, expression=0.5, au=0.25, feedback=0.0,
                    mmd=0.0, shape_reg=0.0, expr_reg=0.0, eye_pose_reg=0.0, detail_reg=0.0, shape_consistency=0.0,
                    style_consistency=0.0)
    x = torch.tensor(2.0, requires_grad=True)
    terms = {"landmark": x, "content": x * 3, "style": x * 5, "expression": x * 7, "au": x * 11,
             "photometric": torch.tensor(float("nan"))}  # zero weight: ignored even if present
    out = combine(terms, w)
    assert set(out) == {"landmark", "content", "style", "expression", "au", "total"}
    expect = 2.0 * (1.0 + 0.7 * 3 + 0.3 * 5 + 0.5 * 7 + 0.25 * 11)
    assert out["total"].item() == pytest.approx(expect)
    assert out["au"].item() == pytest.approx(0.25 * 22)
    _finite_grad(out["total"], x)
    del terms["au"]
    with pytest.raises(KeyError, match="au"):
        combine(terms, w)
    with pytest.raises(KeyError, match="landmarks"):
        combine({"landmarks": x}, w)
    with pytest.raises(ValueError, match="scalar"):
        combine({**terms, "au": torch.ones(2)}, w)
    zero = LossWeights(**{n: 0.0 for n in TERM_NAMES})
    with pytest.raises(ValueError, match="0"):
        combine({}, zero)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_and_teachers_run_on_cuda_in_bf16():
    from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
    from dcnn_flame.supervision.vgg import VGGFeatures

    dev = torch.device("cuda")
    img = torch.rand(2, 3, 64, 64, device=dev, requires_grad=True)
    vgg = VGGFeatures().to(dev)
    au_net = AUDetector(AUDetectorConfig(input_size=64)).to(dev).eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fx, fy = vgg(img), vgg(torch.rand(2, 3, 64, 64, device=dev))
        names = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
        terms = {
            "content": content_loss(fx["conv4_2"], fy["conv4_2"]),
            "style": style_loss([fx[n] for n in names], [fy[n] for n in names], mode="prototype"),
            "au": au_bce_loss(au_net(img).logits, torch.rand(2, 17, device=dev)),
            "mmd": mmd_loss(fx["conv5_1"].mean(dim=(2, 3)), fy["conv5_1"].mean(dim=(2, 3))),
            "photometric": photometric_loss(img, torch.rand_like(img), torch.ones(2, 64, 64, device=dev)),
        }
    for name, value in terms.items():
        assert value.device.type == "cuda" and torch.isfinite(value), name
    sum(terms.values()).backward()
    assert torch.isfinite(img.grad).all()
