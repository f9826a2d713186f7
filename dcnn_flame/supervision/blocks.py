"""Building blocks shared by the AU detector and the expression classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.model.backbones import Normalize


class InputAdapter(nn.Module):
    """Resize a [0, 1] image to ``size`` x ``size`` and normalise (ImageNet stats).

    Downscaling uses antialiased bilinear interpolation so a 224 input and its 112
    crop see the same content. Shapes: [B, 3, H, W] -> [B, 3, size, size].
    """

    def __init__(self, size: int):
        super().__init__()
        if size < 16:
            raise ValueError(f"input size {size} is too small; use >= 16 (e.g. 112 or 224)")
        self.size = size
        self.normalize = Normalize()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=bool(x.shape[-1] > self.size or x.shape[-2] > self.size))
        return self.normalize(x)


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvTrunk(nn.Module):
    """A plain stack of conv-BN-ReLU layers (5 in the paper's AU detector).

    Args:
        channels: output channels per layer.
        strides: stride per layer (same length); 2 halves the resolution.
    Shapes: [B, 3, H, W] -> [B, channels[-1], H / prod(strides), W / prod(strides)] (rounded up).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], in_channels: int = 3):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} need equal, non-zero length")
        layers = []
        cin = in_channels
        for c, s in zip(channels, strides):
            layers.append(conv_bn_relu(cin, int(c), int(s)))
            cin = int(c)
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
