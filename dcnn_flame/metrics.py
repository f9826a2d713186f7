"""Evaluation metrics of the paper (Eq. 15-19) plus SSIM, accuracy/F1, AUMR, LPIPS.

Per-sample functions return [B] tensors; aggregate with ``.mean()`` (or ``nanmean`` where
a sample can be undefined, as documented) over the evaluation set.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.constants import NUM_EXPRESSION_CLASSES

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- geometry


def mean_vertex_error(pred: Tensor, gt: Tensor, scale_to_mm: bool = False, vertex_mask: Tensor | None = None) -> Tensor:
    """Eq. 15: mean over vertices of the Euclidean distance between corresponding vertices.

    Args:
        pred, gt: [B, V, 3] vertices in the same frame (no alignment is done here).
        scale_to_mm: multiply by 1000 (FLAME meshes are in metres; the paper reports mm).
        vertex_mask: optional [V] bool/weights restricting the mean (e.g. the face region).
    Returns: [B] per-mesh error.
    """
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be [B, V, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    d = torch.linalg.vector_norm(pred - gt.to(pred.dtype), dim=-1)
    if vertex_mask is None:
        err = d.mean(-1)
    else:
        w = vertex_mask.to(d.dtype)
        err = (d * w).sum(-1) / w.sum().clamp_min(torch.finfo(d.dtype).tiny)
    return err * 1000.0 if scale_to_mm else err


def similarity_align(pred: Tensor, gt: Tensor, weights: Tensor | None = None) -> Tensor:
    """Least-squares similarity transform (scale, rotation, translation) of ``pred`` onto ``gt``
    (Umeyama 1991), applied to ``pred``: the rigid-with-scale alignment of the NoW / REALY
    face-reconstruction benchmarks.

    An orthographic camera cannot tell a larger head seen from further away from a smaller
    one, and the first FLAME shape components are largely a change of size, so Eq. 15 on
    unaligned meshes mixes that unobservable size into the error; the aligned error does not.

    Args:
        pred, gt: [B, V, 3] corresponding vertices.
        weights: optional [V] non-negative weights of the vertices in the fit.
    Returns: [B, V, 3] ``s R pred + t`` minimising sum_v w_v ||s R p_v + t - g_v||^2, R a
    proper rotation (det +1).
    """
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be [B, V, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    p, g = pred.double(), gt.double()
    w = (torch.ones(p.shape[1], dtype=p.dtype, device=p.device) if weights is None
         else weights.to(p.device, p.dtype))
    w = (w / w.sum().clamp_min(torch.finfo(p.dtype).tiny))[None, :, None]  # [1, V, 1]
    mp, mg = (w * p).sum(1, keepdim=True), (w * g).sum(1, keepdim=True)
    pc, gc = p - mp, g - mg
    cov = (w * gc).transpose(1, 2) @ pc  # [B, 3, 3] = sum w g p^T
    u, sv, vh = torch.linalg.svd(cov)
    d = torch.ones_like(sv)
    d[:, 2] = torch.sign(torch.linalg.det(u @ vh))
    rot = u @ torch.diag_embed(d) @ vh
    var_p = (w * pc.square()).sum((1, 2))
    scale = (sv * d).sum(1) / var_p.clamp_min(torch.finfo(p.dtype).tiny)
    out = scale[:, None, None] * pc @ rot.transpose(1, 2) + mg
    return out.to(pred.dtype)


def mean_face_vertex_error(gt_vertices: Tensor, template: Tensor, scale_to_mm: bool = False,
                           vertex_mask: Tensor | None = None) -> Tensor:
    """Baseline: Eq. 15 of the mean face (FLAME template) against every ground truth.

    Args: gt_vertices [B, V, 3]; template [V, 3]. Returns: [B].
    A method is only informative if it beats this number.
    """
    return mean_vertex_error(template.to(gt_vertices.dtype).expand_as(gt_vertices), gt_vertices,
                             scale_to_mm, vertex_mask)


# --------------------------------------------------------------------------- images


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian [size] (the 2-D SSIM window is its outer product)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    mask: Tensor | None = None,
) -> Tensor:
    """Eq. 16 SSIM (Wang et al. 2004) per image.

    Local statistics use an ``window_size`` x ``window_size`` Gaussian window (sigma 1.5)
    over "valid" positions only (no padding, as the reference MATLAB code);
    c1 = (k1 L)^2, c2 = (k2 L)^2 with L = ``data_range``; variances and covariance are
    the window-weighted (population) moments. The SSIM map is averaged over positions,
    then over channels.

    ``mask`` [B, 1, H, W] (bool or 0/1): average only over the positions whose window centre it
    covers, e.g. the rendered face (a render composited over its input is identical to it
    outside the face, which would inflate the score); NaN for an image with no such position.

    Args: pred, target [B, C, H, W] with H, W >= window_size. Returns: [B] (float32 or
        the input dtype if float64).
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred and target must both be [B, C, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(
            f"images {tuple(pred.shape[-2:])} are smaller than the {window_size}x{window_size} SSIM window"
        )
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p, t = pred.to(dtype), target.to(dtype)
    c = p.shape[1]
    g = gaussian_window(window_size, sigma, dtype, p.device)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    wy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def filt(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, wx, groups=c), wy, groups=c)

    mu_p, mu_t = filt(p), filt(t)
    s_pp = filt(p * p) - mu_p**2
    s_tt = filt(t * t) - mu_t**2
    s_pt = filt(p * t) - mu_p * mu_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (s_pp + s_tt + c2))
    if mask is None:
        return smap.mean(dim=(2, 3)).mean(dim=1)
    r = window_size // 2
    h, w = smap.shape[-2:]
    m = (mask[:, :1, r:r + h, r:r + w] > 0.5).to(dtype)  # the centres of the valid windows
    count = m.sum(dim=(2, 3))  # [B, 1]
    per_image = (smap.mean(dim=1, keepdim=True) * m).sum(dim=(2, 3)) / count.clamp_min(1.0)
    return torch.where(count > 0, per_image, torch.full_like(per_image, float("nan")))[:, 0]


# --------------------------------------------------------------------------- expression


def cosine_distance(f_pred: Tensor, f_gt: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 17 L_nonmetric: 1 - cos(f_pred, f_gt) in the expression embedding space.

    Args: [B, D], [B, D]. Returns: [B] in [0, 2].
    """
    return 1.0 - F.cosine_similarity(f_pred.flatten(1), f_gt.flatten(1).to(f_pred.dtype), dim=1, eps=eps)


def aumr(pred: Tensor, gt: Tensor, eps: float = 0.1) -> Tensor:
    """Eq. 18 AU matching rate: fraction of AUs with |a_pred - a_gt| < eps.

    Args:
        pred, gt: [B, K] AU activations on the same scale; NaN (in either) = missing,
            excluded from the fraction.
        eps: matching threshold; the default 0.1 is for activations in [0, 1] (use
            0.5 for OpenFace 0-5 intensities).
    Returns: [B]; NaN for a sample with no valid AU (aggregate with ``nanmean``).
    """
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must both be [B, K], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    valid = ~(torch.isnan(pred) | torch.isnan(gt))
    hit = ((pred - gt).abs() < eps) & valid
    n = valid.sum(1)
    rate = hit.sum(1).to(torch.float32) / n.clamp_min(1).to(torch.float32)
    return torch.where(n > 0, rate, torch.full_like(rate, float("nan")))


def eval_score(l_metric: Tensor | float, l_nonmetric: Tensor | float, lambda1: float = 0.6,
               lambda2: float = 0.4) -> Tensor | float:
    """Eq. 19: L_eval = lambda1 * L_metric + lambda2 * L_nonmetric (paper: 0.6 / 0.4).

    The paper does not say in which unit L_metric enters; pass it in mm to mix with the
    [0, 2] cosine distance as the paper's tables suggest.
    """
    return lambda1 * l_metric + lambda2 * l_nonmetric


def _labels(pred: Tensor) -> Tensor:
    return pred.argmax(-1) if pred.ndim == 2 else pred


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int = NUM_EXPRESSION_CLASSES,
                     ignore_index: int = -1) -> Tensor:
    """[K, K] int64 counts, rows = target class, columns = predicted class.

    Args: pred [N] labels or [N, K] logits; target [N] labels (``ignore_index`` skipped).
    """
    p, t = _labels(pred).long(), target.long()
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    if ((t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)).any():
        raise ValueError(f"labels must be in [0, {num_classes}) (or {ignore_index} for missing targets)")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def accuracy(pred: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """Fraction of correct predictions over targets != ``ignore_index`` (NaN if none).

    Args: pred [N] labels or [N, K] logits; target [N]. Returns: scalar float32.
    """
    p, t = _labels(pred).long(), target.long()
    keep = t != ignore_index
    n = keep.sum()
    if n == 0:
        return torch.tensor(float("nan"))
    return (p[keep] == t[keep]).sum().to(torch.float32) / n.to(torch.float32)


def macro_f1(pred: Tensor, target: Tensor, num_classes: int = NUM_EXPRESSION_CLASSES,
             ignore_index: int = -1) -> Tensor:
    """Macro-averaged F1 over classes.

    Per class F1 = 2 TP / (2 TP + FP + FN). Classes absent from both predictions and
    targets (TP + FP + FN = 0) are left out of the average instead of counting as 0 or 1,
    so a small evaluation split without e.g. "contempt" is not penalised or rewarded.
    Returns: scalar float32 (NaN if no valid target).
    """
    return macro_f1_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


def macro_f1_from_confusion(cm: Tensor) -> Tensor:
    """:func:`macro_f1` of a [K, K] confusion matrix (rows = target): the way to combine
    batches, which a mean of per-batch F1 scores is not. Returns: scalar float32 (NaN if empty)."""
    cm = cm.to(torch.float64)
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return torch.tensor(float("nan"))
    return (2 * tp[present] / denom[present]).mean().to(torch.float32)


# --------------------------------------------------------------------------- LPIPS

#: VGG-16 layers (post-ReLU) used by LPIPS v0.1 and their channel counts.
LPIPS_LAYERS: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
#: LPIPS's input scaling layer on [-1, 1] images. For [0, 1] inputs it equals ImageNet
#: normalisation exactly: mean = (1 + shift) / 2, std = scale / 2.
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018, "lin" variant) on VGG-16 features.

    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (n_l(x) - n_l(y))^2_{c,h,w}, with n_l the
    channel-wise unit-normalised post-ReLU features of layer l and w_l >= 0 the learned
    linear weights.

    Args:
        features: a VGG-16 :class:`~dcnn_flame.supervision.vgg.VGGFeatures` with
            ``LPIPS_LAYERS`` and LPIPS's input scaling (see :func:`load_lpips`).
        lin_weights: five [1, C_l, 1, 1] tensors (official keys ``lin{l}.model.1.weight``).
    forward: x, y [B, 3, H, W] in [0, 1] -> [B].
    """

    def __init__(self, features: nn.Module, lin_weights: Sequence[Tensor], eps: float = 1e-10):
        super().__init__()
        if len(lin_weights) != len(LPIPS_LAYERS):
            raise ValueError(f"need {len(LPIPS_LAYERS)} LPIPS linear weights, got {len(lin_weights)}")
        self.features = features
        self.eps = eps
        for i, (w, ch) in enumerate(zip(lin_weights, LPIPS_CHANNELS)):
            if tuple(w.shape) != (1, ch, 1, 1):
                raise ValueError(f"LPIPS lin{i} weight must be [1, {ch}, 1, 1], got {tuple(w.shape)}")
            self.register_buffer(f"lin{i}", w.detach().clone().float())
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def _unit(self, f: Tensor) -> Tensor:
        return f / (f.square().sum(1, keepdim=True).sqrt() + self.eps)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, fy = self.features(x), self.features(y)
        total = x.new_zeros(x.shape[0])
        for i, name in enumerate(LPIPS_LAYERS):
            d = (self._unit(fx[name]) - self._unit(fy[name])).square()
            w = getattr(self, f"lin{i}").to(d.dtype)
            total = total + (d * w).sum(1).mean(dim=(1, 2))
        return total


def read_lpips_lin_weights(path: str | Path) -> list[Tensor]:
    """The five linear-layer weights from an official-layout LPIPS file (e.g. ``vgg.pth``
    of LPIPS v0.1, keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``)."""
    from dcnn_flame.model.backbones import read_state_dict

    sd: Mapping[str, Tensor] = read_state_dict(path)
    keys = [f"lin{i}.model.1.weight" for i in range(len(LPIPS_LAYERS))]
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not an LPIPS linear-weights file: missing {missing} (has {list(sd)[:8]}); "
            "use the VGG file of LPIPS v0.1 (keys lin0.model.1.weight ... lin4.model.1.weight)"
        )
    return [sd[k] for k in keys]


def load_lpips(lin_weights_path: str | Path | None, vgg16_weights_path: str | Path | None) -> LPIPS | None:
    """Build LPIPS from user-supplied files, or return None when they are not given.

    Both files are needed for a real LPIPS number: the official linear weights
    (``lin_weights_path``) and torchvision-format VGG-16 ImageNet weights
    (``vgg16_weights_path``; the ``features.*`` entries suffice). Without them this
    returns None and logs why: callers must then report LPIPS as unavailable, never
    substitute a number.

    Raises: FileNotFoundError / ValueError for a given path that is missing or wrong.
    """
    if lin_weights_path is None or vgg16_weights_path is None:
        log.warning(
            "LPIPS not computed: it needs the LPIPS v0.1 linear weights and VGG-16 ImageNet weights "
            "(lin_weights_path=%s, vgg16_weights_path=%s); pass both local files to enable it",
            lin_weights_path, vgg16_weights_path,
        )
        return None
    from dcnn_flame.supervision.vgg import VGGFeatures

    lin = read_lpips_lin_weights(lin_weights_path)
    mean = tuple((1.0 + s) / 2.0 for s in LPIPS_SHIFT)
    std = tuple(s / 2.0 for s in LPIPS_SCALE)
    feats = VGGFeatures(LPIPS_LAYERS, weights_path=vgg16_weights_path, arch="vgg16", mean=mean, std=std)
    return LPIPS(feats, lin)
