"""Frozen "teacher" networks: fixed supervision that never trains and never leaves eval mode.

A teacher (VGG-19 features, expression classifier, AU detector, a frozen identity net)
has ``requires_grad=False`` on every parameter and stays in eval mode even when a parent
module calls ``.train()``: BatchNorm running statistics and dropout stay fixed. Gradients
still flow *through* a teacher to its input (e.g. a rendered image), which is what the
perceptual, feedback and expression losses need.

Distributed training: only the trainable model is wrapped by DDP
(``ray.train.torch.prepare_model``); keep teachers as separate modules moved to the
device on their own (the timm ``DistillationTeacher`` pattern). A teacher placed inside
the DDP-wrapped module would be ignored by gradient sync (no grad) but its weights would
bloat checkpoints and its buffers would be broadcast every step.
"""
from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """Turn off gradients of every parameter of ``module``, set eval mode, return it.

    Note: this alone does not stop a later ``parent.train()`` from switching the module
    back to training mode; wrap it in :class:`FrozenTeacher` for that.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return module


class FrozenTeacher(nn.Module):
    """Wraps ``module`` as a frozen teacher: no parameter gradients, eval mode forever.

    ``forward`` passes all arguments to the wrapped module; gradients w.r.t. the inputs
    are kept (do not wrap the call in ``torch.no_grad`` when the loss must reach the input).

    Attributes:
        module: the wrapped network (its state_dict keys are prefixed ``module.``).
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = freeze(module)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # A parent's .train() recurses into children through this method: ignore it.
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)
