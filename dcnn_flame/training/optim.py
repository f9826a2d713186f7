"""Optimizer and learning-rate schedule from :class:`dcnn_flame.config.OptimConfig`."""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch

from dcnn_flame.config import OptimConfig

SCHEDULES = ("constant", "step", "exponential", "cosine")


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of ``cfg.lr`` for the update at ``step`` (0-based count of updates done).

    Linear warm-up over ``warmup_steps``, then the decay of ``cfg.schedule``, floored at
    ``min_lr / lr``.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule {cfg.schedule!r} is not one of {SCHEDULES}")
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "step":
        f = cfg.decay_rate ** (t // max(cfg.decay_steps, 1))
    elif cfg.schedule == "exponential":
        f = cfg.decay_rate ** (t / max(cfg.decay_steps, 1))
    else:  # cosine to min_lr at max_steps
        span = max(max_steps - cfg.warmup_steps, 1)
        floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
    return max(f, cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0)


def build_optimizer(params: Union[Iterable[torch.nn.Parameter], list[dict]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` (parameters or param-group dicts; groups may set their own lr)."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **kwargs)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    raise ValueError(f"optim.optimizer {cfg.optimizer!r} is not 'adam' or 'adamw'")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    """A LambdaLR following :func:`lr_factor`, stepped once per training step.

    The lambda is a plain function, so ``state_dict()`` holds only numbers (weights_only-safe).
    """
    def factor(step: int) -> float:
        return lr_factor(step, cfg, max_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
