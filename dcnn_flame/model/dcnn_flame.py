"""DCNN-FLAME: images of one identity -> FLAME shape/expression/pose, camera, light, albedo,
detail displacement, and differentiable renders (paper Sections 3.2-3.3).

Everything that touches trainable parameters happens in ``forward`` (so DDP sees it);
losses live in :mod:`dcnn_flame.model.criterion`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dcnn_flame.flame.data import FlameModelData
from dcnn_flame.flame.layer import FlameLayer
from dcnn_flame.flame.unpickler import FlameAssetError
from dcnn_flame.model.albedo import AlbedoModel, load_albedo_npz
from dcnn_flame.model.config import ModelConfig
from dcnn_flame.model.detail import DetailDecoder, DetailEncoder
from dcnn_flame.model.encoders import CoarseHead, IdentityBranch, MultiScaleFusion, make_backbone
from dcnn_flame.model.outputs import ReconOutput
from dcnn_flame.render.camera import OrthographicCamera
from dcnn_flame.render.renderer import Renderer, RendererConfig


def _framing_scale(template: Tensor, margin: float = 0.9) -> float:
    """Orthographic scale that fits the template's x/y extent into ``margin`` of NDC."""
    extent = (template[:, :2].max(0).values - template[:, :2].min(0).values).max().item()
    return 2.0 * margin / max(extent, 1e-6)


class DCNNFlame(nn.Module):
    """The reconstruction network.

    Args:
        cfg: architecture switches (every ablation of the paper is one).
        flame: the head model arrays (real FLAME or procedural).
        n_shape, n_expr: FLAME components used.
    """

    def __init__(self, cfg: ModelConfig, flame: FlameModelData, n_shape: int = 100, n_expr: int = 50):
        super().__init__()
        if flame.uv_coords is None or flame.uv_faces is None:
            raise FlameAssetError(f"{flame.source}: the head model has no UV layout (vt/ft), and DCNN-FLAME "
                                  f"renders UV albedo: set flame.uv_path to FLAME_texture.npz (or the FLAME "
                                  f"template .obj), or use a model file with UVs, or the procedural head")
        if flame.landmarks is None:
            raise FlameAssetError(f"{flame.source}: the head model has no 68-landmark embedding, which the "
                                  f"landmark loss and the projected landmarks need: set flame.landmark_path to "
                                  f"DECA's landmark_embedding.npy or RingNet's flame_static_embedding.pkl (with "
                                  f"flame.dynamic_landmark_path=flame_dynamic_embedding.npy)")
        self.cfg = cfg
        self.n_shape, self.n_expr = n_shape, n_expr
        self.flame = FlameLayer(flame, n_shape=n_shape, n_expr=n_expr, dynamic_contour=True)
        if cfg.albedo_path:
            mean, basis = load_albedo_npz(cfg.albedo_path)
        else:
            mean, basis = flame.extras.get("albedo_mean"), flame.extras.get("albedo_basis")
            if mean is None or basis is None:
                raise ValueError(f"{flame.source}: no albedo model; set model.albedo_path to "
                                 f"FLAME_albedo_from_BFM.npz or FLAME_texture.npz")
        self.albedo_model = AlbedoModel(mean, basis, cfg.albedo_components, cfg.albedo_size)
        self.renderer = Renderer(torch.as_tensor(flame.faces), torch.as_tensor(flame.uv_coords),
                                 torch.as_tensor(flame.uv_faces),
                                 RendererConfig(image_size=cfg.image_size, backend=cfg.render_backend))

        self.backbone = make_backbone(cfg.backbone)
        ch = self.backbone.feature_channels
        self.fusion = MultiScaleFusion(ch, cfg.fusion_dim, enabled=cfg.multiscale_fusion)
        # The feature-mapping layer between feature extraction and the heads (paper 3.4,
        # stage 2): starts as the identity; the MMD loss aligns its outputs across domains.
        self.feature_map = nn.Linear(self.fusion.out_dim, self.fusion.out_dim)
        nn.init.eye_(self.feature_map.weight)
        nn.init.zeros_(self.feature_map.bias)
        self.identity = (IdentityBranch(ch[-1], cfg.identity_dim, cfg.mapping_hidden, n_shape)
                         if cfg.use_identity_encoder else None)
        template = self.flame.v_template
        self.coarse = CoarseHead(self.fusion.out_dim, n_expr, self.albedo_model.num_components,
                                 n_shape=0 if cfg.use_identity_encoder else n_shape,
                                 camera_scale=_framing_scale(template))
        if cfg.use_detail:
            self.detail_encoder = DetailEncoder(cfg.detail_dim)
            self.detail_decoder = DetailDecoder(cfg.detail_dim, n_expr, cfg.uv_size, cfg.displacement_scale)
        else:
            self.detail_encoder = self.detail_decoder = None

    def forward(self, images: Tensor, render: bool = True) -> ReconOutput:
        """Reconstruct.

        Args:
            images: [B, V, 3, H, W] in [0, 1] (V views of one identity per sample), or
                [N, 3, H, W] for single views (V = 1).
            render: also render (training, previews); False skips the renderer (export).
        Returns:
            :class:`ReconOutput` with N = B * V rows per view.
        """
        if images.dim() == 4:
            images = images[:, None]
        B, V = images.shape[:2]
        flat = images.reshape(B * V, *images.shape[2:])
        feats = self.backbone.forward_features(flat)
        fused = self.feature_map(self.fusion(feats))
        coarse = self.coarse(fused)
        shape_per_view = None
        if self.identity is not None:
            c5 = self.backbone.pool(feats[-1])
            shape, _ = self.identity(c5, V)
            if V > 1:
                shape_per_view = self.identity.mapping(self.identity.project(c5)).view(B, V, -1)
        else:
            shape_per_view = coarse.shape_per_view.view(B, V, -1)
            shape = shape_per_view.mean(dim=1)
        shape_n = shape.repeat_interleave(V, dim=0)
        flame_out = self.flame(shape=shape_n, expression=coarse.expression, pose=coarse.pose)
        cam = OrthographicCamera(coarse.camera)
        lmk2d = cam.project(flame_out.landmarks)[..., :2]
        albedo = self.albedo_model(coarse.albedo_code)
        detail_code = displacement = image_detail = None
        if self.detail_encoder is not None:
            detail_code = self.detail_encoder(flat)
            displacement = self.detail_decoder(detail_code, coarse.expression, coarse.pose[:, 6:9])
        image = mask = torch.zeros(0, device=flat.device)
        if render:
            out = self.renderer(flame_out.vertices, cam, albedo, coarse.light, background=flat)
            image, mask = out.image, out.mask
            if displacement is not None:
                image_detail = self.renderer(flame_out.vertices, cam, albedo, coarse.light,
                                             displacement_map=displacement, background=flat).image
        return ReconOutput(
            num_views=V, shape=shape, expression=coarse.expression, pose=coarse.pose,
            camera=coarse.camera, light=coarse.light, albedo_code=coarse.albedo_code, albedo=albedo,
            vertices=flame_out.vertices, landmarks3d=flame_out.landmarks, landmarks2d=lmk2d,
            image=image, mask=mask, detail_code=detail_code, displacement=displacement,
            image_detail=image_detail, shape_per_view=shape_per_view, features=fused)
