"""Validation metrics of DCNN-FLAME on a batch (paper Eq. 15-19, accuracy, macro-F1).

Geometry is compared in the *canonical* frame: FLAME(shape, expression, jaw, eyes) with the
global and neck rotations zeroed, so the vertex error measures identity + expression and
not head pose (which the orthographic camera makes ambiguous up to scale). The FLAME
mean-face baseline (the template with the ground-truth pose applied the same way, i.e. the
plain template) is reported next to it. Both are also reported after a least-squares
similarity alignment to the ground truth (``*_aligned_mm``, the NoW/REALY protocol): an
orthographic image does not determine the absolute size of a head, and the first shape
components of FLAME are largely a change of size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcnn_flame import metrics as M
from dcnn_flame.flame.layer import FlameLayer
from dcnn_flame.model.outputs import ReconOutput


def canonical_pose(pose: Tensor) -> Tensor:
    """[N, 15] -> the same with global and neck rotations zeroed."""
    out = pose.clone()
    out[:, :6] = 0
    return out


def _pad(x: Tensor, n: int) -> Tensor:
    return F.pad(x, (0, n - x.shape[1])) if x.shape[1] < n else x[:, :n]


class Evaluator:
    """Computes validation metrics (no grad).

    Args:
        flame_full: a FlameLayer with *all* components of the head model, so ground truth made
            with more components than the model predicts is reproduced exactly.
        au_net, expr_net: frozen teachers (or None to skip the semantic metrics).
        teacher_size: resolution the teachers see.
        aumr_eps: AUMR threshold (AUs in [0, 1]).
    """

    def __init__(self, flame_full: FlameLayer, au_net=None, expr_net=None, teacher_size: int = 112,
                 aumr_eps: float = 0.1):
        self.flame = flame_full
        self.au_net, self.expr_net = au_net, expr_net
        self.teacher_size = teacher_size
        self.aumr_eps = aumr_eps

    def _teach(self, x: Tensor) -> Tensor:
        s = self.teacher_size
        return x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                                                        antialias=True)

    def canonical_vertices(self, shape: Tensor, expression: Tensor, pose: Tensor) -> Tensor:
        """Canonical-frame vertices [N, V, 3] from (possibly truncated) parameters."""
        fl = self.flame
        return fl(shape=_pad(shape, fl.n_shape), expression=_pad(expression, fl.n_expr),
                  pose=canonical_pose(pose)).vertices

    @torch.no_grad()
    def __call__(self, outputs: ReconOutput, batch: dict) -> dict[str, float]:
        """The metrics of one batch (:meth:`finalize` of :meth:`accumulate`)."""
        return self.finalize(self.accumulate(outputs, batch))

    @torch.no_grad()
    def accumulate(self, outputs: ReconOutput, batch: dict) -> dict:
        """One batch's metrics as sums to add up over a validation set: ``{metric: (sum, count)}``,
        each over the samples that have it (views with ground truth, landmarks, labels, AUs or a
        rendered face), and ``"confusion"``: the [8, 8] expression confusion counts of the
        labelled views (macro-F1 and accuracy come from the whole set's, :meth:`finalize`)."""
        images = batch["images"]
        B, V = images.shape[:2]
        N = B * V
        flat = images.reshape(N, *images.shape[2:]).float()
        out: dict = {}

        def add(name: str, values: Tensor) -> None:
            v = values.detach().reshape(-1).double()
            v = v[torch.isfinite(v)]
            if v.numel():
                out[name] = (float(v.sum()), float(v.numel()))

        dev = outputs.vertices.device
        if "gt_shape" in batch and "gt_expression" in batch and "gt_pose" in batch:
            gs = batch["gt_shape"].reshape(N, -1).to(dev).float()
            ge = batch["gt_expression"].reshape(N, -1).to(dev).float()
            gp = batch["gt_pose"].reshape(N, -1).to(dev).float()
            gt_v = self.canonical_vertices(gs, ge, gp)
            shape_n = outputs.shape.float().repeat_interleave(outputs.num_views, 0)
            pred_v = self.canonical_vertices(shape_n, outputs.expression.float(), outputs.pose.float())
            template = self.flame.v_template.to(dev)
            add("vertex_error_mm", M.mean_vertex_error(pred_v, gt_v, scale_to_mm=True))
            add("mean_face_error_mm", M.mean_face_vertex_error(gt_v, template, scale_to_mm=True))
            # the same after a similarity alignment (size is unobservable with an orthographic camera)
            add("vertex_error_aligned_mm", M.mean_vertex_error(M.similarity_align(pred_v, gt_v), gt_v,
                                                               scale_to_mm=True))
            mean_face = template.to(gt_v.dtype).expand_as(gt_v)
            add("mean_face_error_aligned_mm", M.mean_vertex_error(M.similarity_align(mean_face, gt_v), gt_v,
                                                                  scale_to_mm=True))
        lmk = batch.get("landmarks")
        if lmk is not None and outputs.landmarks2d is not None:
            from dcnn_flame.render.camera import to_pixels

            H, W = flat.shape[-2:]
            tgt = lmk.reshape(N, -1, 2).to(dev).float()
            ok = torch.isfinite(tgt).all(-1)
            if ok.any():
                err = (to_pixels(outputs.landmarks2d.float(), H, W) - torch.nan_to_num(tgt)).norm(dim=-1)
                add("landmark_error_px", err[ok])
        if outputs.image.numel():
            render = outputs.image.float()
            # Over the rendered face only: outside it the render is the input pasted back.
            mask = outputs.mask if outputs.mask is not None and outputs.mask.numel() else None
            add("ssim", M.ssim(render, flat, mask=mask))
            if self.expr_net is not None:
                ex_r, ex_i = self.expr_net(self._teach(render)), self.expr_net(self._teach(flat))
                add("nonmetric", M.cosine_distance(ex_r.embedding, ex_i.embedding))
                labels = batch.get("expression_class")
                if labels is not None:
                    labels = labels.reshape(-1).to(dev)
                    if (labels >= 0).any():
                        out["confusion"] = M.confusion_matrix(ex_r.logits, labels).cpu()
            if self.au_net is not None and "au" in batch:
                au_gt = batch["au"].reshape(N, -1).to(dev).float()
                if torch.isfinite(au_gt).any():
                    add("aumr", M.aumr(self.au_net(self._teach(render)).probs, au_gt, eps=self.aumr_eps))
        return out

    @staticmethod
    def finalize(sums: dict) -> dict[str, float]:
        """Means from :meth:`accumulate`'s sums (added up over batches and ranks), with accuracy and
        macro-F1 from the summed confusion counts and L_eval (Eq. 19) from the means."""
        out: dict[str, float] = {k: s / n for k, v in sums.items() if k != "confusion" for s, n in [v] if n > 0}
        cm = sums.get("confusion")
        if cm is not None and int(torch.as_tensor(cm).sum()) > 0:
            cm = torch.as_tensor(cm)
            out["accuracy"] = float(cm.diagonal().sum()) / float(cm.sum())
            out["macro_f1"] = float(M.macro_f1_from_confusion(cm))
        if "vertex_error_mm" in out and "nonmetric" in out:
            out["l_eval"] = float(M.eval_score(out["vertex_error_mm"], out["nonmetric"]))
        return out
