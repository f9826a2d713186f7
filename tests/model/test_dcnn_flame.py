"""DCNN-FLAME forward/backward: gradients reach every trainable parameter, teachers stay
frozen, and every ablation of the paper is a working switch."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dcnn_flame.config import FlameConfig
from dcnn_flame.losses.combine import LossWeights
from dcnn_flame.model.build import DCNNFlameTask
from dcnn_flame.model.config import ABLATIONS as PAPER_ABLATIONS
from dcnn_flame.model.config import ModelConfig, SupervisionConfig, apply_ablation

IMG = 64
FLAME = FlameConfig(n_shape=20, n_expr=20)

# every ablation of the paper (config.ABLATIONS) plus the stage-2 fine-tuning terms
ABLATIONS = {**PAPER_ABLATIONS, "finetune_terms": ({}, {"mmd": 0.1, "style_consistency": 0.1})}


def _batch(B=2, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lmk = torch.rand(B, V, 68, 2, generator=g) * IMG
    lmk[0, 1] = float("nan")  # a view without landmarks
    au = torch.rand(B, V, 17, generator=g)
    au[1, :, 3] = float("nan")  # a missing AU label
    return {
        "images": torch.rand(B, V, 3, IMG, IMG, generator=g),
        "landmarks": lmk,
        "landmarks5": torch.full((B, V, 5, 2), float("nan")),
        "au": au,
        "expression_class": torch.tensor([[1, 2, -1, 0], [3, -1, 4, 5]])[:B, :V],
        "domain": torch.tensor([0, 1])[:B],
    }


def _task(model_kw, loss_kw, backbone="resnet18"):
    return DCNNFlameTask(flame=FLAME,
                         model=ModelConfig(backbone=backbone, image_size=IMG, uv_size=16, albedo_size=64,
                                           **model_kw),
                         loss=LossWeights(**loss_kw), supervision=SupervisionConfig())


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_every_trainable_parameter_gets_a_gradient(variant):
    torch.manual_seed(0)
    model_kw, loss_kw = ABLATIONS[variant]
    parts = _task(model_kw, loss_kw, backbone="resnet50" if variant == "full" else "resnet18").build(
        torch.device("cpu"))
    model, criterion = parts.model.train(), parts.criterion.train()
    teacher_stats = _bn_stats(criterion)
    batch = _batch()
    out = model(batch["images"])
    terms = criterion(out, batch)
    assert torch.isfinite(terms["total"]), terms
    for name in ("landmark", "photometric"):
        assert name in terms and terms[name] > 0
    if loss_kw.get("expression", 1.0) == 0:
        assert "expression" not in terms
    if loss_kw.get("content", 1.0) == 0:
        assert criterion.vgg is None and "content" not in terms
    if loss_kw.get("au", 1.0) == 0:
        assert "au" not in terms
    if variant == "wo_expr_wo_au":
        assert "feedback" not in terms and criterion.au_net is None and criterion.expr_net is None
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{variant}: parameters without gradient: {missing[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{variant}: non-finite gradients in {bad[:10]}"
    # teachers: frozen, no gradients, BN statistics untouched even in train() mode
    for n, p in criterion.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    after = _bn_stats(criterion)
    for k, v in teacher_stats.items():
        assert torch.equal(v, after[k]), f"teacher BN statistic {k} moved"
    # metrics run on the same outputs
    metrics = parts.evaluate(out, batch)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"ssim", "landmark_error_px"} <= set(metrics)


def test_views_share_one_identity_and_outputs_have_documented_shapes():
    torch.manual_seed(0)
    parts = _task({}, {}).build(torch.device("cpu"))
    model = parts.model.eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch["images"])
    B, V = 2, 4
    N = B * V
    assert out.shape.shape == (B, FLAME.n_shape)
    assert out.expression.shape == (N, FLAME.n_expr) and out.pose.shape == (N, 15)
    assert out.camera.shape == (N, 3) and out.light.shape == (N, 9, 3)
    assert out.image.shape == (N, 3, IMG, IMG) and out.mask.shape == (N, 1, IMG, IMG)
    assert out.landmarks2d.shape == (N, 68, 2) and out.shape_per_view.shape == (B, V, FLAME.n_shape)
    assert out.displacement.shape == (N, 1, 16, 16)
    # an untrained model predicts a framed, frontal mean face: the render covers the centre
    assert out.mask[:, 0, IMG // 2, IMG // 2].all()
    assert out.camera[:, 0].min() > 0
    # single-view input works too
    with torch.no_grad():
        single = model(batch["images"][:, 0])
    assert single.num_views == 1 and single.shape.shape == (B, FLAME.n_shape)


def test_task_is_plain_picklable_config():
    import pickle

    task = _task({}, {})
    back = pickle.loads(pickle.dumps(task))
    assert dataclasses.asdict(back) == dataclasses.asdict(task)


def test_ablation_switches_cover_figure_9():
    # Figure 9 of the paper + the detail branch (issue 4); each is a config switch
    assert set(PAPER_ABLATIONS) == {"full", "wo_expr", "wo_au", "wo_expr_wo_au", "wo_style", "wo_id_encoder",
                                    "wo_multiscale_fusion", "wo_detail"}
    m, w = apply_ablation("wo_au", ModelConfig(), LossWeights(au=0.7))
    assert w.au == 0 and w.feedback_au_lambda == 0 and w.feedback > 0 and w.expression > 0
    m, w = apply_ablation("wo_multiscale_fusion", ModelConfig(backbone="resnet18"), LossWeights())
    assert m.backbone == "resnet18" and not m.multiscale_fusion and m.use_detail
    m, w = apply_ablation("wo_detail", ModelConfig(), LossWeights())
    assert not m.use_detail and w.detail_reg == 0
    with pytest.raises(ValueError, match="wo_expr"):
        apply_ablation("wo_everything", ModelConfig(), LossWeights())


def test_eye_pose_regulariser_is_the_squared_norm_of_the_eye_rotations_only():
    torch.manual_seed(0)
    only_eyes = {n: 0.0 for n in ("landmark", "photometric", "content", "style", "expression", "au", "feedback",
                                  "shape_reg", "expr_reg", "detail_reg", "shape_consistency")}
    parts = _task({"use_detail": False}, {**only_eyes, "eye_pose_reg": 0.5}).build(torch.device("cpu"))
    out = parts.model(_batch()["images"])
    pose = out.pose.detach().clone().requires_grad_(True)
    out = dataclasses.replace(out, pose=pose)
    with torch.no_grad():
        pose[:, 9:] += torch.linspace(-0.4, 0.4, pose[:, 9:].numel()).view_as(pose[:, 9:])
    terms = parts.criterion(out, _batch())
    assert set(terms) == {"eye_pose_reg", "total"}
    naive = sum(float(sum(v * v for v in row[9:15].tolist())) for row in pose) / pose.shape[0]
    assert terms["eye_pose_reg"].item() == pytest.approx(0.5 * naive, rel=1e-5)
    terms["total"].backward()
    assert pose.grad[:, :9].abs().max() == 0 and pose.grad[:, 9:].abs().max() > 0


def test_validation_metrics_combine_over_batches_as_over_the_whole_set():
    """Evaluator.accumulate over two halves of a set, added up and finalised, equals the metrics
    of the whole set: each mean over the samples that have it, accuracy and macro-F1 from the
    set's confusion counts (a mean of per-batch F1 scores is not the set's F1), SSIM over the
    rendered face only."""
    from dcnn_flame import metrics as M
    from dcnn_flame.training.loop import _add_sums

    torch.manual_seed(0)
    parts = _task({}, {}).build(torch.device("cpu"))
    model = parts.model.eval()
    batch = _batch(B=2, V=4, seed=3)
    with torch.no_grad():
        out = model(batch["images"])
        halves = []
        for b in (0, 1):
            sub = {k: v[b:b + 1] for k, v in batch.items()}
            halves.append(parts.evaluate.accumulate(model(sub["images"]), sub))
    total: dict = {}
    for h in halves:
        _add_sums(total, h)
    combined = parts.evaluate.finalize(total)
    whole = parts.evaluate(out, batch)
    assert set(combined) == set(whole) and {"accuracy", "macro_f1", "ssim", "nonmetric", "aumr"} <= set(whole)
    for k in whole:
        assert combined[k] == pytest.approx(whole[k], rel=1e-4, abs=1e-6), k
    # against references computed on the whole set directly
    flat = batch["images"].reshape(8, 3, IMG, IMG)
    labels = batch["expression_class"].reshape(-1)
    with torch.no_grad():
        logits = parts.evaluate.expr_net(parts.evaluate._teach(out.image.float())).logits
    assert whole["macro_f1"] == pytest.approx(float(M.macro_f1(logits, labels)), abs=1e-6)
    assert whole["accuracy"] == pytest.approx(float(M.accuracy(logits, labels)), abs=1e-6)
    face = M.ssim(out.image.float(), flat, mask=out.mask)
    assert whole["ssim"] == pytest.approx(float(face.nanmean()), abs=1e-6)
    # the composite's SSIM would count the pasted-back background as a perfect match
    assert float(M.ssim(out.image.float(), flat).mean()) > whole["ssim"]
