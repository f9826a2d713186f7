"""Coarse reconstruction networks: shared image encoder, identity branch with the mapping
network of Table 2, and the coarse parameter head (paper Section 3.2, Eq. 5-8).

Shapes use N = B * V images (V views per sample) and B samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dcnn_flame.constants import POSE_DIM, SH_COEFFS
from dcnn_flame.model.backbones import ResNet, resnet18, resnet50


def make_backbone(name: str) -> ResNet:
    """Headless ResNet whose ``forward_features`` gives C2..C5 (inputs in [0, 1])."""
    if name == "resnet50":
        return resnet50(include_fc=False)
    if name == "resnet18":
        return resnet18(include_fc=False)
    raise ValueError(f"unknown backbone {name!r}: use 'resnet50' (paper) or 'resnet18'")


class MappingNetwork(nn.Module):
    """Table 2: four linear layers 512 -> 300 -> 300 -> 300 -> out.

    The paper lists only the linear layers; a non-linearity between them (LeakyReLU) keeps
    the stack from collapsing into one linear map. The last layer is initialised small so
    an untrained network predicts the mean face (Eq. 5: C(Z) = B Z + A with Z ~ 0).

    Args:
        in_dim: identity code width (512).
        hidden: hidden width (300).
        out_dim: FLAME shape components.
    """

    def __init__(self, in_dim: int = 512, hidden: int = 300, out_dim: int = 300):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, out_dim),
        )
        nn.init.normal_(self.layers[-1].weight, std=1e-3)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, z: Tensor) -> Tensor:
        """z [B, in_dim] -> shape code [B, out_dim]."""
        return self.layers(z)


class MultiScaleFusion(nn.Module):
    """Pooled C3/C4/C5 features, each projected to ``dim`` and concatenated (or C5 only).

    Args:
        channels: backbone channels of C2..C5.
        dim: projection width per scale.
        enabled: fuse three scales; False = the paper's "w/o multi-scale fusion" ablation.
    """

    def __init__(self, channels: tuple[int, ...], dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        used = channels[1:] if enabled else channels[-1:]
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(c, dim), nn.LeakyReLU(0.2)) for c in used)
        self.out_dim = dim * len(used)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats: [C2, C3, C4, C5] maps -> fused vector [N, out_dim]."""
        used = feats[1:] if self.enabled else feats[-1:]
        pooled = [p(f.mean(dim=(2, 3))) for p, f in zip(self.proj, used)]
        return torch.cat(pooled, dim=1)


@dataclass
class CoarseParams:
    """Per-view coarse predictions (N = B * V rows).

    Attributes:
        expression: [N, E]; pose: [N, 15]; camera: [N, 3] (scale, tx, ty);
        light: [N, 9, 3]; albedo_code: [N, K]; shape_per_view: [N, S] or None (only without
        the identity encoder).
    """

    expression: Tensor
    pose: Tensor
    camera: Tensor
    light: Tensor
    albedo_code: Tensor
    shape_per_view: Tensor | None


class CoarseHead(nn.Module):
    """Regresses expression, pose, camera, SH light and albedo (and shape without the ID
    encoder) from fused features. Outputs start near a neutral, frontal, well-framed face.

    Args:
        in_dim: fused feature width.
        n_expr, n_albedo: output sizes.
        n_shape: >0 to also predict shape per view (the "w/o ID encoder" ablation).
        camera_scale: orthographic scale of an untrained prediction (frames the template).
        light_dc: initial value of the constant SH band (ambient light level).
    """

    def __init__(self, in_dim: int, n_expr: int, n_albedo: int, n_shape: int = 0,
                 camera_scale: float = 8.0, light_dc: float = 1.0, hidden: int = 512):
        super().__init__()
        self.sizes = {"expression": n_expr, "pose": POSE_DIM, "camera": 3,
                      "light": SH_COEFFS, "albedo_code": n_albedo}
        if n_shape > 0:
            self.sizes["shape_per_view"] = n_shape
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2))
        self.out = nn.Linear(hidden, sum(self.sizes.values()))
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("camera_scale", torch.tensor(float(camera_scale)), persistent=False)
        self.register_buffer("light_dc", torch.tensor(float(light_dc)), persistent=False)

    def forward(self, x: Tensor) -> CoarseParams:
        """x [N, in_dim] -> :class:`CoarseParams`."""
        parts = dict(zip(self.sizes, torch.split(self.out(self.trunk(x)), list(self.sizes.values()), 1)))
        cam = parts["camera"]
        # log-parameterised scale keeps it positive; translation in template units.
        camera = torch.cat([self.camera_scale * torch.exp(cam[:, :1]), cam[:, 1:]], dim=1)
        light = parts["light"].view(-1, 9, 3)
        light = torch.cat([light[:, :1] + self.light_dc, light[:, 1:]], dim=1)
        return CoarseParams(expression=parts["expression"], pose=parts["pose"], camera=camera,
                            light=light, albedo_code=parts["albedo_code"],
                            shape_per_view=parts.get("shape_per_view"))


class IdentityBranch(nn.Module):
    """Pooled C5 -> identity code (512) -> view average -> mapping network -> shape.

    The four-view mode shares one identity code per sample: codes of its V views are
    averaged before the mapping network (Eq. 5-8).
    """

    def __init__(self, c5_channels: int, identity_dim: int, hidden: int, n_shape: int):
        super().__init__()
        self.project = nn.Linear(c5_channels, identity_dim)
        self.mapping = MappingNetwork(identity_dim, hidden, n_shape)

    def forward(self, c5_pooled: Tensor, num_views: int) -> tuple[Tensor, Tensor]:
        """c5_pooled [B*V, C] -> (shape [B, S], identity code [B, identity_dim])."""
        code = self.project(c5_pooled)
        code = code.view(-1, num_views, code.shape[-1]).mean(dim=1)
        return self.mapping(code), code
