"""The model contract shared by training, evaluation, tuning and batch inference.

Training never looks inside the model:

    outputs = model(batch["images"])              # the DDP-wrapped trainable module
    terms = criterion(outputs, batch)              # frozen teachers + LossWeights (not in DDP)
    terms["total"].backward()
    metrics = evaluate_batch(outputs, batch)       # Eq. 15-19 (no grad)

All model computation that touches trainable parameters (encoders, FLAME, rendering, the
detail decoder) happens in ``forward`` so DDP sees every parameter; the criterion only uses
``ReconOutput`` tensors, frozen teachers and the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch


@dataclass
class ReconOutput:
    """Everything one forward pass predicts. ``N = B * num_views`` rows per-view.

    Attributes:
        num_views: views per sample (4 in four-view mode).
        shape: [B, S] identity shape code, one per sample (shared by its views).
        expression: [N, E] FLAME expression parameters.
        pose: [N, 15] FLAME pose (global, neck, jaw, left eye, right eye; axis-angle).
        camera: [N, 3] orthographic camera (scale, tx, ty).
        light: [N, 9, 3] spherical-harmonics lighting.
        albedo_code: [N, K] albedo basis coefficients.
        albedo: [N, 3, Ht, Wt] UV albedo map in [0, 1].
        vertices: [N, V, 3] posed FLAME vertices (metres).
        landmarks3d: [N, 68, 3] 3D landmarks.
        landmarks2d: [N, 68, 2] projected landmarks in NDC ([-1, 1], x right, y up).
        image: [N, 3, H, W] coarse render in [0, 1] (composited over the input background).
        mask: [N, 1, H, W] render coverage.
        detail_code: optional [N, D] detail code sigma.
        displacement: optional [N, 1, Ht, Wt] UV displacement map (Eq. 9).
        image_detail: optional [N, 3, H, W] render with detail normals (Eq. 11).
        shape_per_view: optional [B, V, S] shape decoded from each view alone (four-view
            consistency; the shared ``shape`` is decoded from the view-averaged code).
        features: optional [N, F] domain features after the feature-mapping layer (MMD).
    """

    num_views: int
    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    light: torch.Tensor
    albedo_code: torch.Tensor
    albedo: torch.Tensor
    vertices: torch.Tensor
    landmarks3d: torch.Tensor
    landmarks2d: torch.Tensor
    image: torch.Tensor
    mask: torch.Tensor
    detail_code: Optional[torch.Tensor] = None
    displacement: Optional[torch.Tensor] = None
    image_detail: Optional[torch.Tensor] = None
    shape_per_view: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None

    def detach(self) -> "ReconOutput":
        """A copy with every tensor detached (for logging/metrics)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.detach() if isinstance(v, torch.Tensor) else v
        return ReconOutput(**kw)
