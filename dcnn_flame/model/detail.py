"""Detail reconstruction (paper Eq. 9-11): a ResNet-18 detail encoder gives the detail code
sigma; the detail decoder F_detail(sigma, psi, theta_jaw) gives a UV displacement map U that
is applied along the UV normals (M'_UV = M_UV + U * N_UV) and rendered with detail normals.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.model.backbones import resnet18


class DetailEncoder(nn.Module):
    """ResNet-18 -> detail code sigma.

    Args:
        code_dim: size of sigma.
    """

    def __init__(self, code_dim: int = 128):
        super().__init__()
        self.backbone = resnet18(include_fc=False)
        self.head = nn.Linear(self.backbone.out_dim, code_dim)

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [0, 1] -> sigma [N, code_dim]."""
        return self.head(self.backbone(images))


class DetailDecoder(nn.Module):
    """F_detail(sigma, psi, theta_jaw) -> UV displacement map (Eq. 9).

    A linear layer to a 4x4 grid, then upsample+conv blocks to ``uv_size``; the output is
    tanh-bounded to +-``max_displacement`` metres. The last conv starts at zero so an
    untrained decoder adds no detail.

    Args:
        code_dim: size of sigma; n_expr: size of psi; uv_size: output resolution (power of 2).
        max_displacement: bound of |U| in metres.
    """

    def __init__(self, code_dim: int, n_expr: int, uv_size: int = 64, max_displacement: float = 0.002,
                 width: int = 128):
        super().__init__()
        if uv_size < 8 or uv_size & (uv_size - 1):
            raise ValueError(f"uv_size must be a power of two >= 8, got {uv_size}")
        self.max_displacement = max_displacement
        self.width = width
        self.fc = nn.Linear(code_dim + n_expr + 3, width * 16)
        blocks = []
        size, ch = 4, width
        while size < uv_size:
            out = max(ch // 2, 16)
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch, size = out, size * 2
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, sigma: Tensor, expression: Tensor, jaw_pose: Tensor) -> Tensor:
        """sigma [N, D], expression [N, E], jaw_pose [N, 3] -> U [N, 1, uv, uv] (metres)."""
        x = self.fc(torch.cat([sigma, expression, jaw_pose], dim=1))
        x = F.leaky_relu(x, 0.2).view(-1, self.width, 4, 4)
        if x.is_cuda:
            # PyTorch's CUDA bilinear upsampling of NCHW tensors runs one thread per output
            # pixel looping over N x C: with many maps (the generation actor decodes B x (K + 1)
            # at once) the upsamplings took 0.74 ms of an H200's time per character, 95 ms per
            # batch for a few hundred MB of activations. Its channels-last kernel runs one thread
            # per output element (same formula), and cuDNN takes channels-last convs.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.max_displacement * torch.tanh(self.out(self.blocks(x)))
