"""Expression classifier over the AffectNet-8 classes (order of constants.EXPRESSION_CLASSES).

The same five conv-BN-ReLU design as the AU detector, then global average pooling, an
embedding layer (FC1 + ReLU) giving f_exp (Eq. 14, Eq. 17) and a linear classifier.
Train with :func:`dcnn_flame.losses.expression.expression_ce_loss` (label -1 = missing),
then use it frozen through :class:`~dcnn_flame.supervision.teacher.FrozenTeacher`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.constants import NUM_EXPRESSION_CLASSES
from dcnn_flame.supervision.blocks import ConvTrunk, InputAdapter


@dataclass
class ExpressionClassifierConfig:
    """Sizes of the expression classifier."""

    input_size: int = 112
    """Side of the square crop the network sees (224 or 112)."""
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    """Output channels of the conv-BN-ReLU layers."""
    strides: tuple[int, ...] = (2, 2, 2, 2, 1)
    """Stride of each conv layer."""
    embedding_dim: int = 128
    """Size of the expression embedding f_exp."""
    num_classes: int = NUM_EXPRESSION_CLASSES
    """Number of classes (AffectNet-8)."""
    dropout: float = 0.2
    """Dropout before the classifier (training only)."""


@dataclass
class ExpressionOutput:
    """Expression classifier outputs.

    Attributes:
        logits: [B, num_classes].
        embedding: [B, embedding_dim] f_exp (post-ReLU FC1 output).
    """

    logits: Tensor
    embedding: Tensor

    @property
    def probs(self) -> Tensor:
        """[B, num_classes] softmax probabilities."""
        return torch.softmax(self.logits, dim=-1)


class ExpressionClassifier(nn.Module):
    """forward: [B, 3, H, W] image in [0, 1] -> :class:`ExpressionOutput`."""

    def __init__(self, cfg: ExpressionClassifierConfig | None = None):
        super().__init__()
        cfg = cfg or ExpressionClassifierConfig()
        self.cfg = cfg
        self.adapter = InputAdapter(cfg.input_size)
        self.trunk = ConvTrunk(cfg.channels, cfg.strides)
        self.fc1 = nn.Linear(self.trunk.out_channels, cfg.embedding_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.embedding_dim, cfg.num_classes)

    @property
    def embedding_dim(self) -> int:
        """Size of f_exp."""
        return self.cfg.embedding_dim

    def forward(self, x: Tensor) -> ExpressionOutput:
        pooled = self.trunk(self.adapter(x)).mean(dim=(2, 3))
        emb = F.relu(self.fc1(pooled))
        return ExpressionOutput(self.fc2(self.dropout(emb)), emb)
