"""What the training loop trains: a small task interface, so the loop never knows the model.

A task is plain, picklable configuration (it travels to every worker in ``train_loop_config``)
with one method, ``build(device)``, called once per worker after the dataset shards are taken::

    parts = task.build(device)
    outputs = parts.model(batch["images"])           # [B, V, 3, H, W] -> ReconOutput (or anything)
    terms = parts.criterion(outputs, batch)          # {"total": scalar, "<term>": scalar, ...}
    metrics = parts.evaluate(outputs, batch)         # {"<metric>": float}, no grad (validation)

- ``model`` holds every trainable parameter and is the only module wrapped by DDP.
- ``criterion`` holds frozen teachers (VGG-19, expression, AU nets) and the loss weights; it
  is never wrapped by DDP, and its terms are already weighted ("total" is what is minimised;
  the other entries are logged).
- ``evaluate`` returns per-batch means; the loop averages them over the validation shard
  (weighted by batch size) and across workers.
- ``param_groups`` optionally gives optimizer groups (``[{"params": [...], "lr": ...}, ...]``,
  parameters of ``model``); None = one group with every trainable parameter.

The real task is ``dcnn_flame.model.build.DCNNFlameTask``; tests use a toy one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TaskParts:
    """The pieces one worker trains with (see the module docstring)."""

    model: nn.Module
    criterion: Callable[[Any, dict], dict[str, torch.Tensor]]
    evaluate: Callable[[Any, dict], dict[str, float]]
    param_groups: Optional[list[dict]] = None


@runtime_checkable
class TrainingTask(Protocol):
    """Picklable description of a model + losses + metrics; ``build`` makes them on a device."""

    def build(self, device: torch.device) -> TaskParts:
        ...


def check_parts(parts: TaskParts) -> None:
    """Raise a TypeError naming what is wrong with a task's ``build`` result."""
    if not isinstance(parts, TaskParts):
        raise TypeError(f"TrainingTask.build must return TaskParts, got {type(parts).__name__}")
    if not isinstance(parts.model, nn.Module):
        raise TypeError(f"TaskParts.model must be an nn.Module, got {type(parts.model).__name__}")
    if not any(p.requires_grad for p in parts.model.parameters()):
        raise TypeError("TaskParts.model has no trainable parameter: nothing to train")
    if not callable(parts.criterion) or not callable(parts.evaluate):
        raise TypeError("TaskParts.criterion and TaskParts.evaluate must be callables")
