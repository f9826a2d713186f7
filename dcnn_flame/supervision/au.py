"""AU detector of paper Section 3.4: 5 conv layers + dual-branch attention fusion + 2 FC.

Architecture (our reading of the paper, which gives no layer sizes):

1. :class:`~dcnn_flame.supervision.blocks.InputAdapter` resizes the [0, 1] face crop to
   ``input_size`` (224, or 112 for speed) and normalises it.
2. Five conv-BN-ReLU layers (strides ``(2, 2, 2, 2, 1)``: 112 -> 7x7, 224 -> 14x14 map).
3. Dual-branch attention fusion:
   - local branch: R region attention maps. Each map is a spatial softmax over learned
     logits (1x1 conv) plus ``log`` of a soft box prior for one facial region of an
     aligned crop (brows, eyes, nose, cheeks, mouth, chin; the prior is 1 inside the box
     and ``prior_floor`` outside, so ``prior_floor=1`` gives purely learned attention).
     Each map pools the feature map into a region descriptor; the R descriptors are
     concatenated and projected to ``local_dim``.
   - global branch: global average pooling with squeeze-excitation channel attention,
     projected to ``global_dim``.
   - fusion: a softmax gate over the two branches (from both vectors) weights them,
     and the weighted vectors are concatenated.
4. FC1 (-> ``hidden_dim``, ReLU) gives f_AU, the feature of the feedback loss (Eq. 14);
   FC2 gives 17 logits, in the order of :data:`dcnn_flame.constants.AU_IDS`; the
   sigmoid gives AU activations in [0, 1] (OpenFace 0-5 intensities divided by 5).

Train with :func:`dcnn_flame.losses.au.au_bce_loss` (weighted BCE, NaN = missing), then
use it frozen through :class:`~dcnn_flame.supervision.teacher.FrozenTeacher`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.constants import NUM_AUS
from dcnn_flame.supervision.blocks import ConvTrunk, InputAdapter

#: Facial regions of an aligned face crop, (x0, y0, x1, y1) in [0, 1], y down, image
#: left = subject's right. Comments name the AUs each region mostly carries.
DEFAULT_REGION_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.12, 0.10, 0.88, 0.38),  # brows: AU1, AU2, AU4
    (0.10, 0.26, 0.50, 0.50),  # image-left eye: AU5, AU6, AU7, AU45
    (0.50, 0.26, 0.90, 0.50),  # image-right eye
    (0.30, 0.34, 0.70, 0.68),  # nose: AU9, AU10
    (0.04, 0.44, 0.40, 0.80),  # image-left cheek: AU6, AU12, AU14
    (0.60, 0.44, 0.96, 0.80),  # image-right cheek
    (0.20, 0.58, 0.80, 0.88),  # mouth: AU10, AU12, AU15, AU20, AU23, AU25
    (0.24, 0.76, 0.76, 1.00),  # chin and jaw: AU17, AU26
)


@dataclass
class AUDetectorConfig:
    """Sizes of the AU detector."""

    input_size: int = 112
    """Side of the square crop the network sees (224 as the paper, 112 for speed)."""
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    """Output channels of the five conv-BN-ReLU layers."""
    strides: tuple[int, ...] = (2, 2, 2, 2, 1)
    """Stride of each conv layer (total 16: 112 -> 7x7 feature map)."""
    region_boxes: list[list[float]] = field(default_factory=lambda: [list(b) for b in DEFAULT_REGION_BOXES])
    """One local attention map per box [x0, y0, x1, y1] in [0, 1] (a list for Hydra/OmegaConf)."""
    prior_floor: float = 0.05
    """Prior weight outside a region's box, in (0, 1]; 1 = purely learned attention."""
    local_dim: int = 256
    """Size of the local (region) branch vector."""
    global_dim: int = 256
    """Size of the global branch vector."""
    se_reduction: int = 8
    """Channel reduction of the global branch's squeeze-excitation attention."""
    hidden_dim: int = 256
    """Size of FC1 = size of the feature f_AU used by the feedback loss."""
    num_aus: int = NUM_AUS
    """Number of AU outputs (17, order of constants.AU_IDS)."""
    dropout: float = 0.1
    """Dropout before FC2 (training only)."""


@dataclass
class AUDetectorOutput:
    """AU detector outputs.

    Attributes:
        probs: [B, K] sigmoid activations in [0, 1].
        logits: [B, K] pre-sigmoid (use these for the BCE loss).
        features: [B, hidden_dim] f_AU, FC1 output (Eq. 14).
        region_attention: [B, R, h, w] spatial attention maps (each sums to 1).
        branch_weights: [B, 2] fusion gate (local, global), sums to 1.
    """

    probs: Tensor
    logits: Tensor
    features: Tensor
    region_attention: Tensor
    branch_weights: Tensor


def region_prior(boxes: Tensor, h: int, w: int, floor: float) -> Tensor:
    """Soft box masks on an h x w grid of cell centres.

    Args: boxes [R, 4] (x0, y0, x1, y1) in [0, 1].
    Returns: [R, h, w], 1 inside a box and ``floor`` outside.
    """
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    in_x = (xs[None, None, :] >= x0) & (xs[None, None, :] <= x1)
    in_y = (ys[None, :, None] >= y0) & (ys[None, :, None] <= y1)
    inside = in_x & in_y
    one = torch.ones((), dtype=boxes.dtype, device=boxes.device)
    return torch.where(inside, one, one * floor)


class DualBranchAttentionFusion(nn.Module):
    """Local region attention + global channel attention, fused by a learned gate.

    Shapes: feature map [B, C, h, w] -> (fused [B, local_dim + global_dim],
    attention [B, R, h, w], gate [B, 2]).
    """

    def __init__(self, channels: int, boxes: Sequence[Sequence[float]], prior_floor: float,
                 local_dim: int, global_dim: int, se_reduction: int):
        super().__init__()
        if not boxes or any(len(b) != 4 for b in boxes):
            raise ValueError(f"region_boxes must be a non-empty list of [x0, y0, x1, y1], got {boxes!r}")
        if not 0.0 < prior_floor <= 1.0:
            raise ValueError(f"prior_floor must be in (0, 1], got {prior_floor}")
        self.prior_floor = prior_floor
        self.register_buffer("boxes", torch.tensor([list(map(float, b)) for b in boxes]), persistent=False)
        r = len(boxes)
        self.region_logits = nn.Conv2d(channels, r, kernel_size=1)
        self.local_proj = nn.Sequential(nn.Linear(r * channels, local_dim), nn.ReLU(inplace=True))
        hidden = max(channels // se_reduction, 1)
        self.channel_gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, channels), nn.Sigmoid())
        self.global_proj = nn.Sequential(nn.Linear(channels, global_dim), nn.ReLU(inplace=True))
        self.branch_gate = nn.Linear(local_dim + global_dim, 2)

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, c, h, w = fmap.shape
        prior = region_prior(self.boxes.to(fmap.dtype), h, w, self.prior_floor)  # [R, h, w]
        logits = self.region_logits(fmap) + torch.log(prior)[None]
        attn = torch.softmax(logits.flatten(2), dim=-1)  # [B, R, hw]
        regions = torch.bmm(attn, fmap.flatten(2).transpose(1, 2))  # [B, R, C]
        local = self.local_proj(regions.flatten(1))
        pooled = fmap.mean(dim=(2, 3))
        glob = self.global_proj(pooled * self.channel_gate(pooled))
        gate = torch.softmax(self.branch_gate(torch.cat([local, glob], dim=1)), dim=1)
        fused = torch.cat([gate[:, :1] * local, gate[:, 1:] * glob], dim=1)
        return fused, attn.view(b, -1, h, w), gate


class AUDetector(nn.Module):
    """The paper's AU detector. forward: [B, 3, H, W] image in [0, 1] -> :class:`AUDetectorOutput`."""

    def __init__(self, cfg: AUDetectorConfig | None = None):
        super().__init__()
        cfg = cfg or AUDetectorConfig()
        if len(cfg.channels) != 5:
            raise ValueError(f"the paper's AU detector has 5 conv layers, got channels={cfg.channels}")
        self.cfg = cfg
        self.adapter = InputAdapter(cfg.input_size)
        self.trunk = ConvTrunk(cfg.channels, cfg.strides)
        self.fusion = DualBranchAttentionFusion(self.trunk.out_channels, cfg.region_boxes, cfg.prior_floor,
                                                cfg.local_dim, cfg.global_dim, cfg.se_reduction)
        self.fc1 = nn.Linear(cfg.local_dim + cfg.global_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.num_aus)
        # Start from a low AU activation prior (most AUs are off most of the time).
        nn.init.constant_(self.fc2.bias, -math.log(9.0))

    @property
    def feature_dim(self) -> int:
        """Size of f_AU."""
        return self.cfg.hidden_dim

    def forward(self, x: Tensor) -> AUDetectorOutput:
        fused, attn, gate = self.fusion(self.trunk(self.adapter(x)))
        feats = F.relu(self.fc1(fused))
        logits = self.fc2(self.dropout(feats))
        return AUDetectorOutput(torch.sigmoid(logits), logits, feats, attn, gate)
