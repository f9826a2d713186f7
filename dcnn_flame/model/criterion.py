"""The training objective of DCNN-FLAME (paper Eq. 1-3, 6-8, 12-14, stage-2 MMD).

``Criterion(outputs, batch)`` returns already-weighted terms and their sum "total"
(``losses.combine``). The frozen teachers (VGG-19, expression classifier, AU detector) live
here, outside DDP; a zero weight means the term is not computed and its teacher not built.

Batch keys used (see ``dcnn_flame.data.loader``): images [B, V, 3, H, W], landmarks
[B, V, 68, 2] pixels (NaN = missing), landmarks5 [B, V, 5, 2], au [B, V, 17] (NaN = missing),
expression_class [B, V] (-1 = missing), domain [B] (0 = faces, 1 = characters).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.losses import combine as comb
from dcnn_flame.losses.domain import mmd_loss
from dcnn_flame.losses.expression import au_expression_loss, expression_ce_loss, expression_kl_loss
from dcnn_flame.losses.feedback import feedback_loss
from dcnn_flame.losses.landmarks import landmark_loss
from dcnn_flame.losses.photometric import photometric_loss
from dcnn_flame.losses.regularizers import code_l2, displacement_l1, shape_consistency_loss
from dcnn_flame.losses.style import content_loss, style_consistency_loss, style_loss
from dcnn_flame.model.config import SupervisionConfig
from dcnn_flame.model.outputs import ReconOutput
from dcnn_flame.render.camera import from_pixels
from dcnn_flame.supervision.teacher import FrozenTeacher

log = logging.getLogger(__name__)

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER = "conv4_2"
#: columns of the eye rotations (right, left) in the [N, 15] FLAME pose vector
EYE_POSE = slice(9, 15)


def landmarks5_from_68(lmk: Tensor) -> Tensor:
    """[..., 68, 2] -> [..., 5, 2] (eye centres R/L, nose tip, mouth corners R/L)."""
    return torch.stack([lmk[..., 36:42, :].mean(-2), lmk[..., 42:48, :].mean(-2),
                        lmk[..., 30, :], lmk[..., 48, :], lmk[..., 54, :]], dim=-2)


def load_au_map(path: str, storage_options=None) -> tuple[np.ndarray, np.ndarray]:
    """Read an AU -> FLAME map file (.npz with au_to_expr [17, E] and au_to_jaw [17, 3]; a local
    path or a URI such as s3://..., read with ``storage_options``)."""
    import io

    from dcnn_flame.io import storage

    data = storage.read_bytes(storage.resolve(path), storage_options)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        missing = {"au_to_expr", "au_to_jaw"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: AU map needs arrays {sorted(missing)}; found {z.files}")
        return np.asarray(z["au_to_expr"]), np.asarray(z["au_to_jaw"])


def build_teachers(cfg: SupervisionConfig, need_vgg: bool, need_expr_au: bool):
    """(vgg or None, au detector or None, expression classifier or None), frozen."""
    vgg = au = expr = None
    if need_vgg:
        from dcnn_flame.supervision.vgg import VGGFeatures

        if cfg.vgg_weights is None:
            log.warning("content/style losses use a randomly initialised VGG-19 (no "
                        "supervision.vgg_weights given): pass an ImageNet VGG-19 state dict for the "
                        "paper's perceptual features")
        vgg = FrozenTeacher(VGGFeatures(STYLE_LAYERS + (CONTENT_LAYER,), weights_path=cfg.vgg_weights))
    if need_expr_au:
        if cfg.teachers_path:
            from dcnn_flame.supervision.bundle import load_teachers

            au_net, expr_net, _ = load_teachers(cfg.teachers_path)
        else:
            from dcnn_flame.supervision.au import AUDetector
            from dcnn_flame.supervision.expression import ExpressionClassifier

            log.warning("expression/AU teachers are untrained (no supervision.teachers_path): train them "
                        "with `python jobs/train_supervision.py` for meaningful E_expr/E_au/L_fb terms")
            au_net, expr_net = AUDetector(), ExpressionClassifier()
        au, expr = FrozenTeacher(au_net), FrozenTeacher(expr_net)
    return vgg, au, expr


class Criterion(nn.Module):
    """Weighted loss terms of DCNN-FLAME.

    Args:
        weights: :class:`~dcnn_flame.losses.combine.LossWeights`.
        supervision: teacher settings.
        au_to_expr: [17, E_model] AU -> expression map (columns = the model's expression
            components); au_to_jaw: [17, 3].
    """

    def __init__(self, weights: comb.LossWeights, supervision: SupervisionConfig,
                 au_to_expr: Optional[np.ndarray], au_to_jaw: Optional[np.ndarray]):
        super().__init__()
        self.weights = weights
        self.sup = supervision
        active = set(comb.active_terms(weights))
        self.active = active
        need_vgg = bool(active & {"content", "style", "style_consistency"})
        need_expr_au = bool(active & {"expression", "au", "feedback"})
        self.vgg, self.au_net, self.expr_net = build_teachers(supervision, need_vgg, need_expr_au)
        if "au" in active:
            if au_to_expr is None:
                raise ValueError("loss.au > 0 needs an AU -> expression map: the procedural head has one; "
                                 "for a real FLAME model set supervision.au_map_path or loss.au=0")
            amap = np.concatenate([au_to_expr, au_to_jaw], axis=1).astype(np.float32)
            self.register_buffer("au_map", torch.from_numpy(amap), persistent=False)
        else:
            self.au_map = None

    # --------------------------------------------------------------- teachers
    def _teacher_input(self, x: Tensor) -> Tensor:
        s = self.sup.teacher_image_size
        return x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="bilinear",
                                                        align_corners=False, antialias=True)

    def forward(self, outputs: ReconOutput, batch: dict) -> dict[str, Tensor]:
        """-> {"total": scalar, term: weighted scalar, ...}."""
        images = batch["images"]
        B, V = images.shape[:2]
        flat = images.reshape(B * V, *images.shape[2:]).to(outputs.image.dtype)
        H, W = flat.shape[-2:]
        render = outputs.image
        render_hf = outputs.image_detail if outputs.image_detail is not None else render
        terms: dict[str, Tensor] = {}
        a = self.active

        if "landmark" in a:
            terms["landmark"] = self._landmark_term(outputs, batch, H, W)
        if "photometric" in a:
            terms["photometric"] = photometric_loss(render_hf, flat, outputs.mask)
        if a & {"content", "style"}:
            fr = self.vgg(render_hf)
            with torch.no_grad():
                fi = self.vgg(flat)
            if "content" in a:
                terms["content"] = content_loss(fr[CONTENT_LAYER], fi[CONTENT_LAYER])
            if "style" in a:
                terms["style"] = style_loss([fr[k] for k in STYLE_LAYERS], [fi[k] for k in STYLE_LAYERS],
                                            mode=self.sup.style_mode)
        if a & {"expression", "au", "feedback"}:
            r_in = self._teacher_input(render_hf)
            with torch.no_grad():
                i_in = self._teacher_input(flat)
                ex_i, au_i = self.expr_net(i_in), self.au_net(i_in)
            ex_r = self.expr_net(r_in)
            if "expression" in a:
                labels = batch["expression_class"].reshape(-1).to(render.device)
                if (labels >= 0).any():
                    terms["expression"] = expression_ce_loss(ex_r.logits, labels)
                else:
                    terms["expression"] = expression_kl_loss(ex_r.logits, ex_i.logits)
            if "au" in a:
                au = batch["au"].reshape(B * V, -1).to(render.device, render.dtype)
                au = torch.where(torch.isfinite(au), au, au_i.probs.to(au.dtype))
                pred = torch.cat([outputs.expression, outputs.pose[:, 6:9]], dim=1)
                terms["au"] = au_expression_loss(pred, au, self.au_map)
            if "feedback" in a:
                w = self.weights
                # the AU detector runs on the render only when its part of Eq. 14 counts
                au_r = self.au_net(r_in).features if w.feedback_au_lambda else au_i.features
                terms["feedback"] = feedback_loss(ex_i.embedding, ex_r.embedding, au_i.features, au_r,
                                                  au_lambda=w.feedback_au_lambda,
                                                  expr_lambda=w.feedback_expr_lambda)
        if "mmd" in a:
            terms["mmd"] = self._mmd_term(outputs, batch)
        if "shape_reg" in a:
            terms["shape_reg"] = code_l2(outputs.shape)
        if "expr_reg" in a:
            terms["expr_reg"] = code_l2(outputs.expression)
        if "eye_pose_reg" in a:
            terms["eye_pose_reg"] = code_l2(outputs.pose[:, EYE_POSE])
        if "detail_reg" in a and outputs.displacement is not None:
            terms["detail_reg"] = displacement_l1(outputs.displacement)
        elif "detail_reg" in a:
            terms["detail_reg"] = render.new_zeros(())
        if "shape_consistency" in a:
            terms["shape_consistency"] = (shape_consistency_loss(outputs.shape_per_view)
                                          if outputs.shape_per_view is not None else render.new_zeros(()))
        if "style_consistency" in a:
            terms["style_consistency"] = self._style_consistency_term(render_hf, flat, outputs.mask, batch, V)
        return comb.combine(terms, self.weights)

    def _landmark_term(self, outputs: ReconOutput, batch: dict, H: int, W: int) -> Tensor:
        pred = outputs.landmarks2d
        lmk = batch["landmarks"].reshape(pred.shape[0], -1, 2).to(pred.device, pred.dtype)
        ok68 = torch.isfinite(lmk).all(-1)
        target = from_pixels(torch.nan_to_num(lmk), H, W)
        loss = landmark_loss(pred, target, confidence=ok68.to(pred.dtype))
        if "landmarks5" in batch:
            has68 = ok68.any(-1)
            l5 = batch["landmarks5"].reshape(pred.shape[0], 5, 2).to(pred.device, pred.dtype)
            ok5 = torch.isfinite(l5).all(-1) & ~has68[:, None]
            if ok5.any():
                t5 = from_pixels(torch.nan_to_num(l5), H, W)
                loss = loss + landmark_loss(landmarks5_from_68(pred), t5, confidence=ok5.to(pred.dtype))
        return loss

    def _domain_rows(self, batch: dict, V: int, device) -> Tensor:
        dom = batch.get("domain")
        if dom is None:
            return torch.zeros(0, dtype=torch.long, device=device)
        return dom.to(device).repeat_interleave(V)

    def _mmd_term(self, outputs: ReconOutput, batch: dict) -> Tensor:
        dom = self._domain_rows(batch, outputs.num_views, outputs.features.device)
        f = outputs.features
        if dom.numel() != f.shape[0]:
            return f.new_zeros(())
        src, tgt = f[dom == 0], f[dom == 1]
        if src.shape[0] < 2 or tgt.shape[0] < 2:
            return f.new_zeros(())
        return mmd_loss(src, tgt)

    def _style_consistency_term(self, render: Tensor, flat: Tensor, mask: Tensor, batch: dict, V: int) -> Tensor:
        dom = self._domain_rows(batch, V, render.device)
        sel = dom == 1
        if not sel.any():
            return render.new_zeros(())
        fr = self.vgg(render[sel])
        with torch.no_grad():
            fi = self.vgg(flat[sel])
        return style_consistency_loss([fr[k] for k in STYLE_LAYERS], [fi[k] for k in STYLE_LAYERS],
                                      image_x=render[sel], image_y=flat[sel], mask=mask[sel])
