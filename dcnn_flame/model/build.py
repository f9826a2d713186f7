"""Assemble DCNN-FLAME for training, evaluation and inference from typed configs.

:class:`DCNNFlameTask` is the picklable description sent to Ray Train workers
(``training.task.TrainingTask``); ``build(device)`` makes the model (DDP-wrapped by the
loop), the criterion with its frozen teachers, and the evaluator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from dcnn_flame.config import FlameConfig
from dcnn_flame.flame.data import FlameModelData
from dcnn_flame.losses.combine import LossWeights
from dcnn_flame.model.config import ModelConfig, SupervisionConfig


def au_map_for(data: FlameModelData, sup: SupervisionConfig, n_expr: int
               ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """AU -> (expression [17, n_expr], jaw [17, 3]) for this head model, or (None, None)."""
    if sup.au_map_path:
        from dcnn_flame.model.criterion import load_au_map

        to_expr, to_jaw = load_au_map(sup.au_map_path)
    elif "au_to_expr" in data.extras and "au_to_jaw" in data.extras:
        to_expr, to_jaw = data.extras["au_to_expr"], data.extras["au_to_jaw"]
    else:
        return None, None
    to_expr = np.asarray(to_expr, dtype=np.float32)
    if to_expr.shape[1] < n_expr:
        to_expr = np.pad(to_expr, ((0, 0), (0, n_expr - to_expr.shape[1])))
    return to_expr[:, :n_expr], np.asarray(to_jaw, dtype=np.float32)


def build_model(flame: FlameConfig, model: ModelConfig, data: Optional[FlameModelData] = None):
    """A :class:`~dcnn_flame.model.dcnn_flame.DCNNFlame` on the CPU (move it yourself)."""
    from dcnn_flame.flame.factory import load_flame_data
    from dcnn_flame.model.dcnn_flame import DCNNFlame

    data = data if data is not None else load_flame_data(flame)
    return DCNNFlame(model, data, n_shape=flame.n_shape, n_expr=flame.n_expr)


@dataclass
class DCNNFlameTask:
    """Everything a worker needs to build model, criterion and evaluator (plain configs)."""

    flame: FlameConfig = field(default_factory=FlameConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)

    def build(self, device: torch.device, data: Optional[FlameModelData] = None):
        """-> TaskParts(model, criterion, evaluate) on ``device``.

        Args:
            device: where the parts live.
            data: the head model arrays when the caller already has them (must be what
                ``self.flame`` loads; saves rebuilding the procedural head). None = load.
        """
        from dcnn_flame.flame.factory import load_flame_data
        from dcnn_flame.flame.layer import FlameLayer
        from dcnn_flame.model.criterion import Criterion, build_teachers
        from dcnn_flame.model.evaluation import Evaluator
        from dcnn_flame.training.task import TaskParts

        data = data if data is not None else load_flame_data(self.flame)
        model = build_model(self.flame, self.model, data).to(device)
        to_expr, to_jaw = au_map_for(data, self.supervision, self.flame.n_expr)
        criterion = Criterion(self.loss, self.supervision, to_expr, to_jaw).to(device)
        au_net, expr_net = criterion.au_net, criterion.expr_net
        if au_net is None:
            _, au_net, expr_net = build_teachers(self.supervision, need_vgg=False, need_expr_au=True)
            au_net, expr_net = au_net.to(device), expr_net.to(device)
        flame_full = FlameLayer(data, n_shape=data.num_shape, n_expr=data.num_expression).to(device)
        evaluator = Evaluator(flame_full, au_net, expr_net, self.supervision.teacher_image_size)
        return TaskParts(model=model, criterion=criterion, evaluate=evaluator)
