"""A tiny TrainingTask for the training-infrastructure tests (fast on CPU).

The model regresses, per view, the centre of the bright square that tests/training/train_shards.py
draws (the mean of the 68 landmarks). ``vertex_error`` compares the predicted centre, mapped to
metres like the shard's ground-truth vertices, with the ground truth; ``mean_face_error`` is the
same error for the constant "mean face" prediction (image centre), a baseline to beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from dcnn_flame.training.task import TaskParts

IMG = 224.0


class ToyNet(nn.Module):
    """[B, V, 3, H, W] -> [B, V, 2] normalised centre in [-1, 1] (x, y)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.pool = nn.AvgPool2d(8)
        self.conv = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 1))
        self.head = nn.Linear(2 * 28 * 28, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = self.conv(self.pool(images.flatten(0, 1)))
        return self.head(x.flatten(1)).view(b, v, 2)


def _target(batch: dict) -> torch.Tensor:
    """[B, V, 2] normalised landmark centre."""
    return (batch["landmarks"].mean(dim=2) / IMG) * 2.0 - 1.0


@dataclass
class ToyTask:
    """Picklable toy task. ``nan_calls``: criterion call indices (1-based, per process) whose loss
    is NaN; ``nan_rank``: only on that rank (None = every rank)."""

    width: int = 8
    nan_calls: tuple[int, ...] = ()
    nan_rank: Optional[int] = None

    def build(self, device: torch.device) -> TaskParts:
        model = ToyNet(self.width).to(device)
        calls = {"n": 0}
        nan_calls, nan_rank = set(self.nan_calls), self.nan_rank

        def criterion(outputs: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
            calls["n"] += 1
            landmark = (outputs.float() - _target(batch)).pow(2).mean()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if calls["n"] in nan_calls and (nan_rank is None or nan_rank == rank):
                landmark = landmark * float("nan")
            # domain_mean is logged only (not in total): the share of target-domain rows per batch.
            return {"landmark": landmark, "total": landmark,
                    "domain_mean": batch["domain"].float().mean().detach()}

        def evaluate(outputs: torch.Tensor, batch: dict) -> dict[str, float]:
            pred_m = (outputs.float() + 1.0) / 2.0 * IMG
            pred_m = (pred_m - IMG / 2) / 1000.0  # metres, as train_shards writes gt_vertices
            gt = batch["gt_vertices"][..., :2].mean(dim=2)
            return {"vertex_error": float((pred_m - gt).norm(dim=-1).mean()),
                    "mean_face_error": float(gt.norm(dim=-1).mean())}

        return TaskParts(model=model, criterion=criterion, evaluate=evaluate)
