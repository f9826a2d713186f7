"""Frozen teachers (VGG features, AU detector, expression classifier) and FrozenTeacher."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcnn_flame.constants import NUM_AUS, NUM_EXPRESSION_CLASSES
from dcnn_flame.losses.au import au_bce_loss
from dcnn_flame.losses.expression import expression_ce_loss
from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig, region_prior
from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig
from dcnn_flame.supervision.teacher import FrozenTeacher, freeze
from dcnn_flame.supervision.vgg import CONTENT_LAYER, STYLE_LAYERS, VGGFeatures

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VGG19_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """A torchvision-layout vgg19 file: all 16 convs plus (dummy) classifier entries."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, ci, co in zip(VGG19_CONVS, [3] + VGG19_WIDTHS[:-1], VGG19_WIDTHS):
        sd[f"features.{i}.weight"] = torch.randn(co, ci, 3, 3, generator=g) * (2.0 / (9 * ci)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(co, generator=g) * 0.1
    for i in (0, 3, 6):  # skipped by the loader; shapes irrelevant
        sd[f"classifier.{i}.weight"] = torch.zeros(2, 2)
        sd[f"classifier.{i}.bias"] = torch.zeros(2)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(sd, path)
    return path, sd


def test_vgg_features_shapes_and_truncation():
    v = VGGFeatures()
    out = v(torch.rand(2, 3, 32, 32))
    assert list(out) == list(STYLE_LAYERS) + [CONTENT_LAYER]
    expect = {"conv1_1": (64, 32), "conv2_1": (128, 16), "conv3_1": (256, 8), "conv4_1": (512, 4),
              "conv4_2": (512, 4), "conv5_1": (512, 2)}
    for name, (c, s) in expect.items():
        assert tuple(out[name].shape) == (2, c, s, s), name
        assert (out[name] >= 0).all(), name  # post-ReLU
    assert len(v.features) == 30  # up to relu5_1 (index 29), nothing deeper
    assert len(VGGFeatures(layers=("conv3_1",)).features) == 12
    assert not any("normalize" in k for k in v.state_dict())
    with pytest.raises(ValueError, match="conv6_1"):
        VGGFeatures(layers=("conv6_1",))


def test_vgg_features_match_manual_conv_stack(vgg19_file):
    path, sd = vgg19_file
    v = VGGFeatures(layers=("conv1_1", "conv2_1", "conv2_2"), weights_path=path)
    assert v.pretrained and len(v.features) == 9
    x = torch.rand(1, 3, 16, 16)
    out = v(x)

    def conv(h, i):
        return F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)

    h = (x - IMAGENET_MEAN) / IMAGENET_STD
    c11 = conv(h, 0).relu()
    c21 = conv(F.max_pool2d(conv(c11, 2).relu(), 2), 5).relu()
    c22_raw = conv(c21, 7)
    torch.testing.assert_close(out["conv1_1"], c11)
    torch.testing.assert_close(out["conv2_1"], c21)
    torch.testing.assert_close(out["conv2_2"], c22_raw.relu())
    raw = VGGFeatures(layers=("conv2_2",), weights_path=path, post_relu=False)(x)["conv2_2"]
    torch.testing.assert_close(raw, c22_raw)
    assert (raw < 0).any()


def test_vgg_is_frozen_in_parent_train_and_passes_input_grads():
    parent = nn.ModuleDict({"head": nn.Linear(4, 4), "vgg": VGGFeatures(layers=("conv1_1", "conv2_1"))})
    parent.train()
    assert parent["head"].training and not any(m.training for m in parent["vgg"].modules())
    assert all(not p.requires_grad for p in parent["vgg"].parameters())
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    sum(f.mean() for f in parent["vgg"](x).values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in parent["vgg"].parameters())


def test_frozen_teacher_keeps_bn_stats_and_has_no_grads():
    au = AUDetector(AUDetectorConfig(input_size=32))
    teacher = FrozenTeacher(au)
    parent = nn.ModuleDict({"student": nn.Conv2d(3, 3, 1), "teacher": teacher})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for m in teacher.modules())
    bn = [m for m in au.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bn]
    x = torch.rand(4, 3, 32, 32)
    out = teacher(parent["student"](x))
    out.probs.sum().backward()
    for m, (rm, rv, nb) in zip(bn, before):
        assert torch.equal(m.running_mean, rm) and torch.equal(m.running_var, rv) and torch.equal(m.num_batches_tracked, nb)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert parent["student"].weight.grad is not None  # gradient went through the teacher
    trainable = [p for p in parent.parameters() if p.requires_grad]
    assert len(trainable) == 2  # only the student's weight and bias
    # Dropout is off: two calls agree exactly.
    torch.testing.assert_close(teacher(x).probs, teacher(x).probs)


def test_freeze_alone_does_not_survive_parent_train():
    net = freeze(nn.Sequential(nn.BatchNorm1d(3)))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    nn.ModuleList([net]).train()
    assert net.training  # which is why teachers are wrapped in FrozenTeacher


def test_region_prior_matches_naive():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.6, 1.0, 1.0]])
    h, w, floor = 5, 4, 0.1
    got = region_prior(boxes, h, w, floor)
    for r in range(2):
        x0, y0, x1, y1 = boxes[r].tolist()
        for i in range(h):
            for j in range(w):
                cx, cy = (j + 0.5) / w, (i + 0.5) / h
                inside = x0 <= cx <= x1 and y0 <= cy <= y1
                assert got[r, i, j].item() == pytest.approx(1.0 if inside else floor)


def test_au_detector_outputs_and_attention():
    cfg = AUDetectorConfig(input_size=64)
    net = AUDetector(cfg).eval()
    out = net(torch.rand(3, 3, 128, 128))  # resized inside to 64
    assert out.probs.shape == (3, NUM_AUS) and out.logits.shape == (3, NUM_AUS)
    assert ((out.probs > 0) & (out.probs < 1)).all()
    torch.testing.assert_close(out.probs, torch.sigmoid(out.logits))
    assert out.features.shape == (3, cfg.hidden_dim) == (3, net.feature_dim)
    r = len(cfg.region_boxes)
    assert out.region_attention.shape == (3, r, 4, 4)
    torch.testing.assert_close(out.region_attention.sum(dim=(2, 3)), torch.ones(3, r))
    torch.testing.assert_close(out.branch_weights.sum(1), torch.ones(3))
    # At initialisation the box prior dominates: most attention mass inside each box.
    prior = region_prior(torch.tensor(cfg.region_boxes), 4, 4, cfg.prior_floor)
    inside = (out.region_attention * (prior == 1)).sum(dim=(2, 3))
    assert (inside > 0.5).all()
    with pytest.raises(ValueError, match="5 conv layers"):
        AUDetector(AUDetectorConfig(channels=(8, 8), strides=(2, 2)))


def test_au_detector_trains_with_masked_bce():
    torch.manual_seed(0)
    net = AUDetector(AUDetectorConfig(input_size=32, channels=(8, 8, 16, 16, 16), local_dim=16,
                                      global_dim=16, hidden_dim=16))
    x = torch.rand(4, 3, 32, 32)
    y = torch.rand(4, NUM_AUS).round()
    y[0, :5] = float("nan")
    out = net(x)
    loss = au_bce_loss(out.logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss = au_bce_loss(net(x).logits, y)
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_expression_classifier_outputs_and_training():
    torch.manual_seed(0)
    cfg = ExpressionClassifierConfig(input_size=32, channels=(8, 8, 16, 16, 16), embedding_dim=12)
    net = ExpressionClassifier(cfg)
    x = torch.rand(6, 3, 48, 48)
    labels = torch.tensor([0, 1, 2, -1, 7, 3])
    out = net(x)
    assert out.logits.shape == (6, NUM_EXPRESSION_CLASSES) and out.embedding.shape == (6, 12)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(6))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = expression_ce_loss(net(x).logits, labels)
        loss.backward()
        first = loss.item() if first is None else first
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
    assert loss.item() < first
