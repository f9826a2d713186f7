"""Typed configuration of the DCNN-FLAME model (every ablation of the paper is a switch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelConfig:
    """Architecture of DCNN-FLAME (paper Sections 3.2-3.3; defaults = the full model)."""

    backbone: str = "resnet50"
    """Image encoder shared by the identity and coarse branches: "resnet50" (paper) or "resnet18"."""
    backbone_weights: Optional[str] = None
    """Local torchvision-format state dict for the backbone (ImageNet or face recognition)."""
    use_identity_encoder: bool = True
    """Identity branch: pooled features -> 512-d identity code -> mapping network (Table 2) ->
    FLAME shape, one code per sample shared by its views. False = the "w/o ID encoder" ablation:
    shape is regressed per view by the coarse head and averaged over views."""
    identity_dim: int = 512
    """Width of the identity code fed to the mapping network (Table 2: 512)."""
    mapping_hidden: int = 300
    """Hidden width of the 4-layer mapping network (Table 2: 300)."""
    multiscale_fusion: bool = True
    """Fuse pooled C3/C4/C5 backbone features for the coarse head (False = only C5; the paper's
    largest ablation)."""
    fusion_dim: int = 512
    """Width each scale is projected to before fusion."""
    use_detail: bool = True
    """Detail branch: ResNet-18 detail encoder -> code sigma -> UV displacement (Eq. 9-11)."""
    detail_dim: int = 128
    """Size of the detail code sigma."""
    uv_size: int = 64
    """Resolution of the UV displacement map predicted by the detail decoder."""
    displacement_scale: float = 0.002
    """Largest displacement along the normal, metres (tanh-bounded)."""
    albedo_components: int = 10
    """Albedo basis coefficients predicted per view (<= the basis size)."""
    albedo_path: Optional[str] = None
    """User albedo model: FLAME_albedo_from_BFM.npz (MU/PC) or FLAME_texture.npz (mean/tex_dir).
    None = the procedural head's UV albedo basis."""
    albedo_size: int = 256
    """UV albedo map resolution used for rendering (maps are resized to this)."""
    image_size: int = 224
    """Input and render resolution (the paper: 224)."""
    render_backend: str = "torch"
    """Rasterizer backend: "torch" (built in) or "pytorch3d" (when installed)."""


@dataclass
class SupervisionConfig:
    """Frozen teacher networks used by the losses and metrics."""

    teachers_path: Optional[str] = None
    """Trained AU detector + expression classifier (written by jobs/train_supervision.py).
    None = randomly initialised teachers (the expression/AU/feedback terms then carry no
    meaning; a warning says so)."""
    vgg_weights: Optional[str] = None
    """torchvision-format VGG-19 state dict (ImageNet) for the content/style losses. None =
    random VGG-19 features (a weaker but still texture-sensitive signal; a warning says so)."""
    style_mode: str = "gram"
    """Style statistic: "gram" (Eq. 2) or "prototype" (the paper's K-means K=8 covariance)."""
    au_map_path: Optional[str] = None
    """AU -> FLAME expression/jaw map (.npz with au_to_expr [17, E], au_to_jaw [17, 3]) for
    real FLAME models; the procedural head carries its own."""
    teacher_image_size: int = 112
    """Resolution the AU/expression teachers see (renders are resized to it)."""


#: The paper's ablations (Figure 9, plus the detail branch) as config overrides:
#: name -> (ModelConfig fields, LossWeights fields). "w/o Style" removes the whole style
#: transfer loss of Eq. 3 (content and style); "w/o Expr"/"w/o AU" also drop that branch's
#: part of the feedback loss (Eq. 14), so no signal of the removed teacher remains.
ABLATIONS: dict[str, tuple[dict, dict]] = {
    "full": ({}, {}),
    "wo_expr": ({}, {"expression": 0.0, "feedback_expr_lambda": 0.0}),
    "wo_au": ({}, {"au": 0.0, "feedback_au_lambda": 0.0}),
    "wo_expr_wo_au": ({}, {"expression": 0.0, "au": 0.0, "feedback": 0.0}),
    "wo_style": ({}, {"content": 0.0, "style": 0.0}),
    "wo_id_encoder": ({"use_identity_encoder": False}, {}),
    "wo_multiscale_fusion": ({"multiscale_fusion": False}, {}),
    "wo_detail": ({"use_detail": False}, {"detail_reg": 0.0}),
}


def apply_ablation(name: str, model: ModelConfig, loss):
    """(ModelConfig, LossWeights) of the ablation ``name`` (a key of :data:`ABLATIONS`)
    applied on top of ``model`` and ``loss``; the inputs are not modified."""
    import dataclasses

    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    model_kw, loss_kw = ABLATIONS[name]
    return dataclasses.replace(model, **model_kw), dataclasses.replace(loss, **loss_kw)
