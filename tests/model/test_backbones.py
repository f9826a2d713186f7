"""Backbones: torchvision key layout, parameter counts, weight loading and its errors."""
from __future__ import annotations

import pickle

import pytest
import torch

from dcnn_flame.model.backbones import (
    Normalize,
    WeightsMismatchError,
    load_weights,
    read_state_dict,
    resnet18,
    resnet50,
    vgg16,
    vgg19,
    vgg_layer_indices,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_keys(bottleneck: bool, layers: tuple[int, ...], fc: bool = True) -> list[str]:
    """torchvision ResNet state_dict keys, written from its naming scheme."""
    expansion, n_conv = (4, 3) if bottleneck else (1, 2)
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in BN]
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for j in range(blocks):
            p = f"layer{stage}.{j}."
            for c in range(1, n_conv + 1):
                keys += [p + f"conv{c}.weight"] + [p + f"bn{c}.{s}" for s in BN]
            if j == 0 and (stage > 1 or cin != planes * expansion):
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{s}" for s in BN]
            cin = planes * expansion
    if fc:
        keys += ["fc.weight", "fc.bias"]
    return keys


def torchvision_vgg_keys(conv_indices: list[int]) -> list[str]:
    keys = []
    for i in conv_indices:
        keys += [f"features.{i}.weight", f"features.{i}.bias"]
    for i in (0, 3, 6):
        keys += [f"classifier.{i}.weight", f"classifier.{i}.bias"]
    return keys


# torchvision's conv indices in ``features`` (conv, relu, ..., pool): listed by hand.
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _meta(fn, **kw):
    with torch.device("meta"):
        return fn(**kw)


def test_resnet_keys_match_torchvision_layout():
    r18 = _meta(resnet18).state_dict()
    r50 = _meta(resnet50).state_dict()
    assert list(r18) == torchvision_resnet_keys(False, (2, 2, 2, 2))
    assert list(r50) == torchvision_resnet_keys(True, (3, 4, 6, 3))
    # Known torchvision counts: r18 = 6 (stem) + 8 blocks * 12 + 3 downsamples * 6 + 2 (fc).
    assert len(r18) == 122 and len(r50) == 320
    assert "layer4.2.bn3.running_var" in r50 and "layer1.0.downsample.1.num_batches_tracked" in r50
    assert "layer1.0.downsample.0.weight" not in r18
    assert tuple(r50["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(r50["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert tuple(r18["fc.weight"].shape) == (1000, 512) and tuple(r50["fc.weight"].shape) == (1000, 2048)
    no_fc = _meta(resnet50, include_fc=False).state_dict()
    assert list(no_fc) == torchvision_resnet_keys(True, (3, 4, 6, 3), fc=False)


def test_vgg_keys_and_layer_names():
    v19 = _meta(vgg19).state_dict()
    v16 = _meta(vgg16).state_dict()
    assert list(v19) == torchvision_vgg_keys(VGG19_CONVS) and len(v19) == 38
    assert list(v16) == torchvision_vgg_keys(VGG16_CONVS) and len(v16) == 32
    assert tuple(v19["features.34.weight"].shape) == (512, 512, 3, 3)
    assert tuple(v19["classifier.0.weight"].shape) == (4096, 25088)
    idx = vgg_layer_indices("vgg19")
    assert [idx[n] for n in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1")] == [0, 5, 10, 19, 21, 28]
    assert sorted(idx.values()) == VGG19_CONVS
    assert sorted(vgg_layer_indices("vgg16").values()) == VGG16_CONVS


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_torchvision():
    # torchvision's published counts; VGG-19 and ResNet-18 are re-derived below.
    assert _count(_meta(resnet18)) == 11_689_512
    assert _count(_meta(resnet50)) == 25_557_032
    assert _count(_meta(vgg19)) == 143_667_240
    assert _count(_meta(vgg16)) == 138_357_544
    widths = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    convs = sum(ci * co * 9 + co for ci, co in zip([3] + widths[:-1], widths))
    fcs = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert convs + fcs == 143_667_240

    def basic(ci, co, down):
        n = ci * co * 9 + co * co * 9 + 4 * co
        return n + (ci * co + 2 * co if down else 0)

    r18 = 3 * 64 * 49 + 128 + sum(
        basic(ci, co, d) for ci, co, d in [(64, 64, 0), (64, 64, 0), (64, 128, 1), (128, 128, 0),
                                          (128, 256, 1), (256, 256, 0), (256, 512, 1), (512, 512, 0)]
    ) + 512 * 1000 + 1000
    assert r18 == 11_689_512


def test_resnet_multiscale_features_and_outputs():
    m = resnet18().eval()
    x = torch.rand(2, 3, 64, 64)
    feats = m.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert m.feature_channels == (64, 128, 256, 512) and m.out_dim == 512
    assert m(x).shape == (2, 1000)
    pooled = resnet18(include_fc=False).eval()
    pooled.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("fc.")})
    torch.testing.assert_close(pooled(x), feats[-1].mean(dim=(2, 3)))
    r50 = resnet50(num_classes=7).eval()
    assert r50(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    assert [f.shape[1] for f in r50.forward_features(torch.rand(1, 3, 32, 32))] == [256, 512, 1024, 2048]


def test_normalisation_is_inside_and_not_persistent():
    m = resnet18()
    assert not any(k.startswith("normalize") for k in m.state_dict())
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    x = torch.rand(1, 3, 32, 32)
    raw = resnet18(normalize_input=False).eval()
    raw.load_state_dict(m.state_dict())
    m.eval()
    torch.testing.assert_close(m(x), raw(Normalize()(x)))


def test_every_parameter_gets_a_gradient():
    m = resnet18(num_classes=5).train()
    m(torch.rand(2, 3, 32, 32)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _torchvision_file(path, keys, ref_state):
    """A file holding exactly ``keys`` with random values of the reference shapes."""
    sd = {}
    for k in keys:
        ref = ref_state[k]
        sd[k] = torch.randint(0, 5, ref.shape) if ref.dtype == torch.long else torch.randn(ref.shape)
    torch.save(sd, path)
    return sd


def test_load_torchvision_file_and_outputs(tmp_path):
    src = resnet18()
    keys = torchvision_resnet_keys(False, (2, 2, 2, 2))
    sd = _torchvision_file(tmp_path / "r18.pth", keys, src.state_dict())
    for k in keys:
        if "running_var" in k:
            sd[k] = sd[k].abs() + 0.5
    torch.save(sd, tmp_path / "r18.pth")
    m = resnet18()
    report = load_weights(m, tmp_path / "r18.pth")
    assert len(report.loaded) == 122 and not report.missing and not report.unexpected
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, sd[k].to(v.dtype), msg=k)
    src.load_state_dict(sd)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(m.eval()(x), src.eval()(x))


def test_load_wrapped_prefixed_and_old_files(tmp_path):
    ref = resnet18().state_dict()
    sd = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in ref.items()}
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    m = resnet18()
    load_weights(m, tmp_path / "ddp.pth")
    torch.testing.assert_close(m.conv1.weight, sd["conv1.weight"])
    # Old torchvision files have no num_batches_tracked entries.
    torch.save({k: v for k, v in sd.items() if "num_batches_tracked" not in k}, tmp_path / "old.pth")
    report = load_weights(resnet18(), tmp_path / "old.pth")
    assert not report.missing and len(report.loaded) == 122 - 20
    # Prefix renaming.
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "bb.pth")
    m2 = resnet18()
    load_weights(m2, tmp_path / "bb.pth", prefix_map={"backbone.": ""})
    torch.testing.assert_close(m2.layer4[1].bn2.running_mean, sd["layer4.1.bn2.running_mean"])


def test_skip_prefixes_for_headless_model(tmp_path):
    ref = resnet50().state_dict()
    torch.save(ref, tmp_path / "r50.pth")
    m = resnet50(include_fc=False)
    with pytest.raises(WeightsMismatchError, match="fc.weight"):
        load_weights(m, tmp_path / "r50.pth")
    report = load_weights(m, tmp_path / "r50.pth", skip_prefixes=("fc.",))
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(m.layer4[2].conv3.weight, ref["layer4.2.conv3.weight"])


def test_mismatch_error_lists_missing_unexpected_and_shapes(tmp_path):
    sd = resnet18(num_classes=10).state_dict()
    del sd["layer4.1.conv2.weight"]
    sd["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    m = resnet18()
    before = m.conv1.weight.clone()
    with pytest.raises(WeightsMismatchError) as exc:
        load_weights(m, path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "1 missing, 1 unexpected, 2 with another shape" in msg
    assert "layer4.1.conv2.weight" in msg and "extra.head.weight" in msg
    assert "fc.weight: file (10, 512) vs model (1000, 512)" in msg
    assert "prefix_map" in msg and "skip_prefixes" in msg
    torch.testing.assert_close(m.conv1.weight, before)  # nothing loaded on error
    report = load_weights(m, path, strict=False)
    assert report.missing == ("layer4.1.conv2.weight",) and report.unexpected == ("extra.head.weight",)
    assert {k for k, _, _ in report.mismatched} == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(m.conv1.weight, sd["conv1.weight"])


def test_error_lists_only_first_n(tmp_path):
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsMismatchError) as exc:
        load_weights(resnet50(), tmp_path / "r18.pth", max_listed=3)
    assert "more)" in str(exc.value)


class _NotWeights:
    pass


def test_unreadable_files_give_actionable_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_state_dict(tmp_path / "nothere.pth")
    with open(tmp_path / "obj.pth", "wb") as fh:
        pickle.dump(_NotWeights(), fh, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(tmp_path / "obj.pth")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="no state dict"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "tiny.pth")
    with pytest.raises(WeightsMismatchError, match="0 of 122"):
        load_weights(resnet18(), tmp_path / "tiny.pth", strict=False)
