"""ResNet-18/34/50 and VGG-16/19 in plain PyTorch, with torchvision's state_dict layout.

torchvision is not a dependency, so the classic backbones are written here from their
papers (He et al. 2016, ResNet v1.5 with the stride in the 3x3 conv of the bottleneck;
Simonyan & Zisserman 2015, configurations D and E) with module names chosen so that
``state_dict()`` keys and shapes are exactly torchvision's (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight`` ... ``layer4.2.bn3.*``, ``fc.*``; VGG ``features.0.weight`` ...
``features.34.*``, ``classifier.0/3/6.*``). A torchvision ``.pth`` file therefore loads with
:func:`load_weights` unchanged.

Inputs are images in [0, 1] (NCHW). ImageNet normalisation lives inside each network as
:class:`Normalize`, whose buffers are *non-persistent*: they never appear in a state_dict,
so files stay torchvision-compatible and data code never normalises. Pass
``normalize_input=False`` to feed already-normalised tensors.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with non-persistent buffers (not in state_dict).

    Args:
        mean, std: per-channel statistics of the [0, 1] input (ImageNet by default).
    Shapes: x [B, C, H, W] -> [B, C, H, W], same dtype as x.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need the same length")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _maybe_normalize(enabled: bool) -> nn.Module:
    return Normalize() if enabled else nn.Identity()


# --------------------------------------------------------------------------- ResNet


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    # Keys downsample.0 (conv) / downsample.1 (bn) as in torchvision.
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity/projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(cin, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 bottleneck (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet with torchvision state_dict keys and multi-scale outputs.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: size of the ``fc`` head (ignored when ``include_fc`` is False).
        include_fc: build the ``fc`` classifier; without it ``forward`` returns the pooled
            vector and the state_dict has no ``fc.*`` keys.
        normalize_input: inputs are [0, 1] images normalised inside with ImageNet stats.
        zero_init_residual: zero the last BN gamma of each block (a training trick).

    Attributes:
        feature_channels: channels of C2..C5 (``forward_features`` outputs).
        out_dim: channels of C5 = size of the pooled vector.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        include_fc: bool = True,
        normalize_input: bool = True,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stages, got layers={tuple(layers)}")
        self.normalize = _maybe_normalize(normalize_input)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_channels: tuple[int, ...] = tuple(p * block.expansion for p in (64, 128, 256, 512))
        self.out_dim: int = cin
        self.fc = nn.Linear(cin, num_classes) if include_fc else None
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Multi-scale feature maps for fusion.

        Args: x [B, 3, H, W] image in [0, 1] (or normalised if ``normalize_input`` False).
        Returns: [C2, C3, C4, C5] with shapes [B, c_i, H/4, W/4], [B, ., H/8, .],
            [B, ., H/16, .], [B, ., H/32, .] (c_i = ``feature_channels``; sizes rounded up).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def pool(self, c5: Tensor) -> Tensor:
        """Global average pool: [B, C, h, w] -> [B, C]."""
        return torch.flatten(self.avgpool(c5), 1)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] -> logits [B, num_classes] with ``fc``, else pooled [B, out_dim]."""
        v = self.pool(self.forward_features(x)[-1])
        return v if self.fc is None else self.fc(v)


def resnet18(num_classes: int = 1000, include_fc: bool = True, normalize_input: bool = True) -> ResNet:
    """ResNet-18 (11,689,512 parameters with the 1000-class head, as torchvision)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, include_fc, normalize_input)


def resnet34(num_classes: int = 1000, include_fc: bool = True, normalize_input: bool = True) -> ResNet:
    """ResNet-34 (21,797,672 parameters with the 1000-class head)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, include_fc, normalize_input)


def resnet50(num_classes: int = 1000, include_fc: bool = True, normalize_input: bool = True) -> ResNet:
    """ResNet-50 v1.5 (25,557,032 parameters with the 1000-class head, as torchvision)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, include_fc, normalize_input)


# --------------------------------------------------------------------------- VGG

#: Conv widths per layer, "M" = 2x2 max-pool. D = VGG-16, E = VGG-19.
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def vgg_layer_indices(arch: str) -> dict[str, int]:
    """Names ``conv{block}_{i}`` (1-based, as in Gatys et al.) -> index in ``features``.

    The ReLU following conv at index ``k`` sits at ``k + 1``; e.g. vgg19 conv4_2 -> 21,
    conv5_1 -> 28, conv5_4 -> 34.
    """
    cfg = _vgg_cfg(arch)
    names: dict[str, int] = {}
    idx, block, i = 0, 1, 1
    for v in cfg:
        if v == "M":
            idx += 1
            block, i = block + 1, 1
        else:
            names[f"conv{block}_{i}"] = idx
            idx += 2
            i += 1
    return names


def _vgg_cfg(arch: str) -> tuple[int | str, ...]:
    try:
        return VGG_CFGS[arch]
    except KeyError:
        raise ValueError(f"unknown VGG arch {arch!r}; choose one of {sorted(VGG_CFGS)}") from None


def make_vgg_features(arch: str, upto: int | None = None, relu_inplace: bool = True) -> nn.Sequential:
    """The ``features`` stack of a VGG, optionally cut after index ``upto`` (inclusive).

    Cutting keeps the indices, so the state_dict keys are a prefix of torchvision's.
    """
    layers: list[nn.Module] = []
    cin = 3
    for v in _vgg_cfg(arch):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=relu_inplace)]
            cin = int(v)
    if upto is not None:
        if not 0 <= upto < len(layers):
            raise ValueError(f"upto={upto} outside the {len(layers)} layers of {arch}")
        layers = layers[: upto + 1]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-16/19 with torchvision state_dict keys.

    Args:
        arch: "vgg16" or "vgg19".
        num_classes: output size of ``classifier.6``.
        include_fc: build ``avgpool`` + ``classifier``; without it ``forward`` returns the
            last pooled feature map [B, 512, H/32, W/32].
        normalize_input: inputs are [0, 1] images normalised inside with ImageNet stats.
    """

    def __init__(self, arch: str = "vgg19", num_classes: int = 1000, include_fc: bool = True,
                 normalize_input: bool = True, dropout: float = 0.5):
        super().__init__()
        self.normalize = _maybe_normalize(normalize_input)
        self.features = make_vgg_features(arch)
        if include_fc:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
        else:
            self.avgpool = None
            self.classifier = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] -> logits [B, num_classes] (or features [B, 512, H/32, W/32])."""
        y = self.features(self.normalize(x))
        if self.classifier is None:
            return y
        return self.classifier(torch.flatten(self.avgpool(y), 1))


def vgg16(num_classes: int = 1000, include_fc: bool = True, normalize_input: bool = True) -> VGG:
    """VGG-16 (138,357,544 parameters with the 1000-class head, as torchvision)."""
    return VGG("vgg16", num_classes, include_fc, normalize_input)


def vgg19(num_classes: int = 1000, include_fc: bool = True, normalize_input: bool = True) -> VGG:
    """VGG-19 (143,667,240 parameters with the 1000-class head, as torchvision)."""
    return VGG("vgg19", num_classes, include_fc, normalize_input)


# --------------------------------------------------------------------------- loading

#: Keys under which checkpoints commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "net", "params")
#: Prefixes added by DDP / torch.compile, stripped when every key carries them.
_STRIP_PREFIXES = ("module.", "_orig_mod.")


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the module (missing/unexpected keys, shapes)."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path: the file read.
        loaded: keys copied into the module.
        missing: module keys absent from the file (left as initialised).
        unexpected: file keys the module does not have.
        mismatched: (key, file shape, module shape) of keys with different shapes.
        skipped: file keys dropped by ``skip_prefixes``.
    """

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    skipped: tuple[str, ...]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local file with ``torch.load(weights_only=True)``.

    Accepts a raw state dict or one nested under a common wrapper key
    (``state_dict``, ``model_state_dict``, ``model``, ...) and strips ``module.`` /
    ``_orig_mod.`` prefixes present on every key.

    Returns: ``{key: tensor}`` on CPU.
    Raises: FileNotFoundError, ValueError with what was found and what to do.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist; pass the path of a local .pth/.pt file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and a remedy
        raise ValueError(
            f"could not read {str(p)!r} as tensors with torch.load(weights_only=True): {err}. "
            "Save weights as a plain state dict: torch.save(model.state_dict(), path)."
        ) from err
    sd = _unwrap(obj, str(p))
    for prefix in _STRIP_PREFIXES:
        while sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _unwrap(obj: object, path: str) -> dict[str, Tensor]:
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{path!r} holds no state dict of tensors (found {found}); expected a mapping "
        f"name -> tensor, possibly under one of {list(_WRAPPER_KEYS)}"
    )


def _listing(items: Sequence[str], n: int) -> str:
    shown = ", ".join(items[:n])
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return shown + more


def load_weights(
    module: nn.Module,
    path: str | Path,
    strict: bool = True,
    prefix_map: Mapping[str, str] | None = None,
    skip_prefixes: Sequence[str] = (),
    max_listed: int = 10,
) -> LoadReport:
    """Load a weights file into ``module`` with a clear report or error.

    Args:
        module: the target network.
        path: local file readable by :func:`read_state_dict`.
        strict: raise :class:`WeightsMismatchError` on any missing, unexpected or
            shape-mismatched key. Otherwise load what matches (at least one key) and
            report the rest.
        prefix_map: rename file keys, ``{"old.prefix.": "new.prefix."}`` (longest match
            wins; ``""`` removes a prefix), applied before comparing.
        skip_prefixes: drop file keys starting with any of these (after renaming),
            e.g. ``("fc.",)`` to load an ImageNet file into ``include_fc=False``.
        max_listed: how many keys of each kind the error message names.

    BatchNorm ``num_batches_tracked`` entries missing from older files are not an error:
    the module keeps its own counters.

    Returns: :class:`LoadReport`.
    """
    sd = read_state_dict(path)
    if prefix_map:
        ordered = sorted(prefix_map.items(), key=lambda kv: -len(kv[0]))
        renamed = {}
        for k, v in sd.items():
            for old, new in ordered:
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            renamed[k] = v
        sd = renamed
    skipped = tuple(k for k in sd if any(k.startswith(p) for p in skip_prefixes))
    skipped_set = set(skipped)
    sd = {k: v for k, v in sd.items() if k not in skipped_set}

    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    bad = {m[0] for m in mismatched}
    usable = {k: v for k, v in sd.items() if k in own and k not in bad}
    problems = bool(missing or unexpected or mismatched)
    if (strict and problems) or not usable:
        lines = [
            f"weights file {str(path)!r} does not match {type(module).__name__}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} with another shape "
            f"({len(usable)} of {len(own)} module entries match)."
        ]
        if missing:
            lines.append(f"  missing (in the model, not in the file): {_listing(missing, max_listed)}")
        if unexpected:
            lines.append(f"  unexpected (in the file, not in the model): {_listing(unexpected, max_listed)}")
        if mismatched:
            shown = [f"{k}: file {fs} vs model {ms}" for k, fs, ms in mismatched]
            lines.append(f"  shape mismatch: {_listing(shown, max_listed)}")
        lines.append(
            "Check that the file was saved for this architecture and head size "
            "(e.g. resnet50 vs resnet18, num_classes). If its keys carry a prefix pass "
            "prefix_map={'backbone.': ''}; to ignore extra entries such as a classifier pass "
            "skip_prefixes=('fc.',); strict=False loads only what matches."
        )
        raise WeightsMismatchError("\n".join(lines))
    loaded = tuple(usable)
    for k in own:  # older files lack BN counters; keep the module's own
        if k.endswith("num_batches_tracked") and k not in usable:
            usable[k] = own[k]
    module.load_state_dict(usable, strict=False)
    return LoadReport(
        path=str(path),
        loaded=loaded,
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        skipped=skipped,
    )
